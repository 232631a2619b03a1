/**
 * txonce/fastify on Fastify 5: the shared HTTP suite (test/support/http-suite.ts) over real HTTP
 * on a real PostgreSQL, plus what is specific to Fastify: the plugin and its `idempotent`
 * decorator (typed through TxonceFastifyTypes), prefixes, per-route opt-in, Fastify's error
 * handling for handler errors.
 */
import formbody from "@fastify/formbody";
import Fastify, { type FastifyInstance } from "fastify";
import qs from "qs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import txonceFastify, { fastifyIdempotency } from "../src/http/fastify.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { httpSuite, newKey, type StartServer, type Tx } from "./support/http-suite.js";

declare module "../src/http/fastify.js" {
  interface TxonceFastifyTypes {
    tx: Tx;
  }
}

async function listen(app: FastifyInstance) {
  const address = await app.listen({ port: 0, host: "127.0.0.1" });
  return { url: address, close: () => app.close() };
}

/** Renders errors as `{ code, message }` with their `statusCode`, like a typical API error handler. */
function withErrorHandler(app: FastifyInstance): FastifyInstance {
  return app.setErrorHandler((error: { statusCode?: number; code?: string; message: string }, _request, reply) =>
    reply.code(error.statusCode ?? 500).send({ code: error.code, message: error.message }),
  );
}

// The suite's routes through fastifyIdempotency (no plugin): `tx` is inferred from the txonce instance.
const startServer: StartServer = async ({ txonce, defaults, routes }) => {
  const app = withErrorHandler(Fastify());
  await app.register(formbody); // Fastify's own form parser (fast-querystring's objects, whose prototype has no prototype)
  const idempotent = fastifyIdempotency(txonce, defaults);
  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.path,
      handler: idempotent<{ Body: unknown; Params: Record<string, string> }>(
        (request, tx) =>
          route.handler(
            { body: request.body, params: request.params, header: (name) => request.headers[name] as string | undefined },
            tx,
          ),
        route.options,
      ),
    });
  }
  return listen(app);
};

httpSuite("fastify", startServer);

describe("fastify plugin", () => {
  let db: TestDatabase;
  let server: Awaited<ReturnType<typeof listen>>;
  let plainCalls = 0;

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 1000 } });
    const app = Fastify();
    // @fastify/formbody with qs for nested forms (Stripe-style `metadata[order]=42`): null-prototype objects.
    await app.register(formbody, { parser: (body) => qs.parse(body, { plainObjects: true }) });
    await app.register(txonceFastify, { txonce: txonce(db.prisma), scope: (request) => request.headers["x-account"] as string });
    await app.register(
      async (api) => {
        api.post<{ Body: { amount: string }; Params: { id: string } }>(
          "/accounts/:id/charges",
          api.idempotent<{ Body: { amount: string }; Params: { id: string } }>(async (request, tx) => {
            // Typed: tx is the Prisma transaction client (declared in TxonceFastifyTypes above).
            const charge = await tx.charge.create({ data: { accountId: request.params.id, amount: request.body.amount } });
            return { status: 201, headers: { location: `/v1/charges/${charge.id}` }, body: { id: charge.id } };
          }),
        );
        api.post(
          "/boom",
          api.idempotent(async () => {
            throw Object.assign(new Error("card network down"), { statusCode: 502 });
          }),
        );
        api.post(
          "/echo",
          api.idempotent(async (request) => ({ status: 201, body: { received: request.body } })),
        );
        // Not wrapped: no Idempotency-Key needed, nothing stored.
        api.post("/plain", async () => ({ n: ++plainCalls }));
      },
      { prefix: "/v1" },
    );
    server = await listen(app);
  });
  afterAll(async () => {
    await server?.close();
    await db?.drop();
  });

  const post = (path: string, headers: Record<string, string>, body: unknown = {}) =>
    fetch(server.url + path, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });

  test("the decorator is visible in encapsulated contexts (fastify-plugin); the prefix is part of the route", async () => {
    const key = newKey();
    const first = await post("/v1/accounts/acc/charges", { "idempotency-key": `"${key}"`, "x-account": "acc" }, { amount: "2.50" });
    const second = await post("/v1/accounts/acc/charges", { "idempotency-key": `"${key}"`, "x-account": "acc" }, { amount: "2.50" });
    expect(first.status).toBe(201);
    expect(second.status).toBe(201);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.headers.get("location")).toBe(first.headers.get("location"));
    expect(await second.text()).toBe(await first.text());
    const { rows } = await db.pool.query("SELECT scope FROM txonce_idempotency_keys WHERE key = $1", [key]);
    expect(rows).toEqual([{ scope: "POST /v1/accounts/:id/charges @acc" }]);
  });

  test("a nested form parsed by @fastify/formbody with qs (null prototypes): fingerprinted, stored and replayed", async () => {
    const form = (body: string, key: string) =>
      fetch(`${server.url}/v1/echo`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "idempotency-key": `"${key}"`, "x-account": "acc" },
        body,
      });
    const key = newKey();
    const first = await form("amount=2.00&metadata[order]=42&items[0]=a&items[1]=b", key);
    const firstText = await first.text();
    expect(first.status, firstText).toBe(201);
    expect(JSON.parse(firstText)).toEqual({ received: { amount: "2.00", metadata: { order: "42" }, items: ["a", "b"] } });
    const replay = await form("metadata[order]=42&amount=2.00&items[0]=a&items[1]=b", key);
    expect(replay.headers.get("idempotent-replayed")).toBe("true");
    expect(await replay.text()).toBe(firstText);
    expect((await form("amount=2.00&metadata[order]=43&items[0]=a&items[1]=b", key)).status).toBe(422);
  });

  test("per-route opt-in: a route without the wrapper needs no key", async () => {
    const first = await post("/v1/plain", {});
    const second = await post("/v1/plain", { "idempotency-key": '"same"' });
    expect(await first.json()).toEqual({ n: 1 });
    expect(await second.json()).toEqual({ n: 2 });
  });

  test("a handler's error goes to Fastify's error handling, with its statusCode", async () => {
    const response = await post("/v1/boom", { "idempotency-key": '"b"' });
    expect(response.status).toBe(502);
    expect(await response.json()).toMatchObject({ message: "card network down" });
  });

  test("the plugin refuses a missing txonce instance at registration", async () => {
    const app = Fastify();
    await expect(app.register(txonceFastify, {} as never).ready()).rejects.toThrow(/txonce\(prisma\)/);
  });
});
