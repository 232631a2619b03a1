/**
 * txonce/express on Express 5: the shared HTTP suite (test/support/http-suite.ts) over real HTTP
 * on a real PostgreSQL, plus what is specific to Express: routers with mount paths, `next(error)`
 * for handler errors, and the typed wrapper.
 */
import type { AddressInfo } from "node:net";
import express, { type ErrorRequestHandler } from "express";
import qs from "qs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { InvalidArgumentError } from "../src/errors.js";
import { idempotency } from "../src/http/express.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { httpSuite, newKey, type StartServer } from "./support/http-suite.js";

/** Renders errors as `{ code, message }` with their `statusCode`, like a typical API error handler. */
const errorHandler: ErrorRequestHandler = (error, _req, res, _next) => {
  res.status(error.statusCode ?? 500).json({ code: error.code, message: error.message });
};

async function listen(app: express.Express) {
  const server = app.listen(0);
  await new Promise<void>((resolve, reject) => server.once("listening", resolve).once("error", reject));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const startServer: StartServer = async ({ txonce, defaults, routes }) => {
  const app = express();
  app.use(express.json());
  app.use(express.urlencoded()); // Express's own form parser
  const idempotent = idempotency(txonce, defaults);
  for (const route of routes) {
    const handler = idempotent(
      (req, tx) => route.handler({ body: req.body, params: req.params, header: (name) => req.get(name) }, tx),
      route.options,
    );
    if (route.method === "POST") app.post(route.path, handler);
    else app.put(route.path, handler);
  }
  app.use(errorHandler);
  return listen(app);
};

httpSuite("express", startServer);

describe("express specifics", () => {
  let db: TestDatabase;
  let server: Awaited<ReturnType<typeof listen>>;
  const errors: unknown[] = [];

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 1000 } });
    const idempotent = idempotency(txonce(db.prisma));
    const router = express.Router();
    router.post(
      "/accounts/:id/charges",
      idempotent<{ id: string }, { amount: string }>(async (req, tx) => {
        // Typed: req.params.id is a string, req.body.amount a string, tx the Prisma transaction client.
        const charge = await tx.charge.create({ data: { accountId: req.params.id, amount: req.body.amount } });
        return { status: 201, body: { id: charge.id } };
      }),
    );
    router.post(
      "/echo",
      // A nested form parsed with qs into null-prototype objects, as some apps do.
      express.text({ type: "application/x-www-form-urlencoded" }),
      (req, _res, next) => {
        req.body = qs.parse(req.body as string, { plainObjects: true });
        next();
      },
      idempotent(async (req) => ({ status: 201, body: { received: req.body } })),
    );
    router.post(
      "/boom",
      idempotent(async () => {
        throw new Error("boom");
      }),
    );
    const app = express();
    app.use(express.json());
    app.use("/v1", router);
    app.use(((error, _req, res, _next) => {
      errors.push(error);
      res.status(500).json({ message: error.message });
    }) satisfies ErrorRequestHandler);
    server = await listen(app);
  });
  afterAll(async () => {
    await server?.close();
    await db?.drop();
  });

  test("a router's mount path is part of the route in the scope", async () => {
    const key = newKey();
    const response = await fetch(`${server.url}/v1/accounts/acc/charges`, {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": `"${key}"` },
      body: JSON.stringify({ amount: "3.00" }),
    });
    expect(response.status).toBe(201);
    const { rows } = await db.pool.query("SELECT scope FROM txonce_idempotency_keys WHERE key = $1", [key]);
    expect(rows).toEqual([{ scope: "POST /v1/accounts/:id/charges" }]);
  });

  test("a nested form parsed with qs (null prototypes): fingerprinted, stored and replayed", async () => {
    const form = (body: string, key: string) =>
      fetch(`${server.url}/v1/echo`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "idempotency-key": `"${key}"` },
        body,
      });
    const key = newKey();
    const first = await form("amount=2.00&metadata[order]=42", key);
    const firstText = await first.text();
    expect(first.status, firstText).toBe(201);
    expect(JSON.parse(firstText)).toEqual({ received: { amount: "2.00", metadata: { order: "42" } } });
    const replay = await form("metadata[order]=42&amount=2.00", key);
    expect(replay.headers.get("idempotent-replayed")).toBe("true");
    expect(await replay.text()).toBe(firstText);
    expect((await form("amount=2.00&metadata[order]=43", key)).status).toBe(422);
  });

  test("the handler's error reaches the app's error handler via next(error), unchanged", async () => {
    const response = await fetch(`${server.url}/v1/boom`, { method: "POST", headers: { "idempotency-key": '"x"' } });
    expect(response.status).toBe(500);
    expect(errors.at(-1)).toBeInstanceOf(Error);
    expect((errors.at(-1) as Error).message).toBe("boom");
  });

  test("bad options are refused when the middleware is made", () => {
    const instance = txonce(db.prisma);
    expect(() => idempotency(instance, { maxResponseBytes: -1 })).toThrow(InvalidArgumentError);
    expect(() => idempotency(instance, { scope: "acc" as never })).toThrow(/scope/);
    expect(() => idempotency(instance)(async () => ({}), { retryAfterSeconds: 1.5 })).toThrow(/retryAfterSeconds/);
  });
});
