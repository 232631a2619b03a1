/**
 * txonce/koa on Koa 3 (also run on Koa 2.16) with @koa/router and @koa/bodyparser: the shared HTTP suite
 * (test/support/http-suite.ts) over real HTTP on a real PostgreSQL, plus what is specific to Koa:
 * the forms of `ctx.body` (string, HTML string, Buffer, JSON value, none), `ctx.state.tx`, router
 * prefixes, and thrown errors (`ctx.throw()`), which roll back and reach the app's error handling.
 */
import type { AddressInfo } from "node:net";
import { bodyParser } from "@koa/bodyparser";
import Router from "@koa/router";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { idempotency } from "../src/http/koa.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { httpSuite, newKey, type StartServer } from "./support/http-suite.js";

/** Renders errors as `{ code, message }` with their status, like a typical API error middleware. */
function errorHandler(): Koa.Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } catch (error: any) {
      ctx.status = error.statusCode ?? error.status ?? 500;
      ctx.body = { code: error.code, message: error.message };
    }
  };
}

async function listen(app: Koa) {
  const server = app.listen(0, "127.0.0.1");
  await new Promise<void>((resolve, reject) => server.once("listening", resolve).once("error", reject));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The suite's routes on Koa: the handler's `{ status, headers, body }` becomes `ctx.status`, `ctx.set()`, `ctx.body`. */
const startServer: StartServer = async ({ txonce: instance, defaults, routes }) => {
  const app = new Koa();
  app.use(errorHandler());
  app.use(bodyParser());
  const router = new Router();
  const idempotent = idempotency(instance, defaults);
  for (const route of routes) {
    const method = route.method === "POST" ? router.post.bind(router) : router.put.bind(router);
    method(route.path, idempotent(route.options), async (ctx) => {
      const reply = await route.handler(
        { body: ctx.request.body, params: ctx.params, header: (name) => ctx.get(name) || undefined },
        ctx.state.tx,
      );
      ctx.status = reply.status ?? 200;
      // The body first: Koa 2 sets the type of a JSON body over one set before it.
      ctx.body = reply.body ?? null;
      for (const [name, value] of Object.entries(reply.headers ?? {})) {
        if (value !== undefined) ctx.set(name, Array.isArray(value) ? [...value] : String(value));
      }
    });
  }
  app.use(router.routes());
  return listen(app);
};

httpSuite("koa", startServer);

describe("koa specifics", () => {
  let db: TestDatabase;
  let server: Awaited<ReturnType<typeof listen>>;
  let thrown = 0;

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 1000 } });
    const idempotent = idempotency(txonce(db.prisma), { scope: (ctx) => ctx.get("x-account") || undefined });
    const router = new Router({ prefix: "/v1" });
    router.post("/accounts/:id/charges", idempotent(), async (ctx) => {
      // Typed: ctx.state.tx is the Prisma transaction client.
      const { amount } = ctx.request.body as { amount: string };
      const charge = await ctx.state.tx.charge.create({ data: { accountId: ctx.params.id!, amount } });
      ctx.status = 201;
      ctx.set("location", `/v1/charges/${charge.id}`);
      ctx.body = { id: charge.id, amount: charge.amount.toFixed(2) };
    });
    router.post("/text", idempotent(), (ctx) => {
      ctx.body = `text ${Math.random()}`;
    });
    router.post("/html", idempotent(), (ctx) => {
      ctx.body = `<p>${Math.random()}</p>`;
    });
    router.post("/buffer", idempotent(), (ctx) => {
      ctx.body = Buffer.from([1, 2, 3, 255]);
    });
    router.post("/created", idempotent(), (ctx) => {
      ctx.status = 201;
    });
    router.post("/thrown", idempotent(), async (ctx) => {
      thrown++;
      await ctx.state.tx.charge.create({ data: { accountId: "acc", amount: "0.01" } });
      ctx.throw(402, "card declined");
    });
    const app = new Koa();
    app.use(errorHandler());
    app.use(bodyParser());
    app.use(router.routes());
    server = await listen(app);
  });
  afterAll(async () => {
    await server?.close();
    await db?.drop();
  });

  const post = async (path: string, key: string, body: unknown = {}) => {
    const response = await fetch(server.url + path, {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": `"${key}"`, "x-account": "acc" },
      body: JSON.stringify(body),
    });
    return { status: response.status, headers: response.headers, bytes: Buffer.from(await response.arrayBuffer()) };
  };
  const keyRows = async (key: string) => (await db.pool.query("SELECT scope FROM txonce_idempotency_keys WHERE key = $1", [key])).rows;
  const chargeCount = async () => (await db.pool.query("SELECT count(*)::int AS n FROM charges")).rows[0].n as number;

  test("a JSON ctx.body with ctx.set() and ctx.status: stored and replayed; the router prefix is part of the scope", async () => {
    const key = newKey();
    const first = await post("/v1/accounts/acc/charges", key, { amount: "2.50" });
    const second = await post("/v1/accounts/acc/charges", key, { amount: "2.50" });
    expect(first.status).toBe(201);
    expect(first.headers.get("content-type")).toBe("application/json; charset=utf-8");
    expect(second.status).toBe(201);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.headers.get("location")).toBe(first.headers.get("location"));
    expect(second.headers.get("content-type")).toBe(first.headers.get("content-type"));
    expect(second.bytes.equals(first.bytes)).toBe(true);
    expect(await keyRows(key)).toEqual([{ scope: "POST /v1/accounts/:id/charges @acc" }]);
  });

  test.each([
    ["/v1/text", "text/plain; charset=utf-8"],
    ["/v1/html", "text/html; charset=utf-8"],
    ["/v1/buffer", "application/octet-stream"],
  ])("ctx.body at %s is replayed byte for byte with the type Koa gave it (%s)", async (path, type) => {
    const key = newKey();
    const first = await post(path, key);
    const second = await post(path, key);
    expect(first.status).toBe(200);
    expect(first.headers.get("content-type")).toBe(type);
    expect(second.headers.get("content-type")).toBe(type);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.bytes.equals(first.bytes)).toBe(true);
  });

  test("no ctx.body: Koa's status message is sent and stored", async () => {
    const key = newKey();
    const first = await post("/v1/created", key);
    const second = await post("/v1/created", key);
    expect([first.status, second.status]).toEqual([201, 201]);
    expect(first.bytes.toString()).toBe("Created");
    expect(second.bytes.toString()).toBe("Created");
    expect(second.headers.get("idempotent-replayed")).toBe("true");
  });

  test("ctx.throw(402) rolls back, is not stored, and reaches the app's error middleware; the retry runs again", async () => {
    const key = newKey();
    const before = await chargeCount();
    const first = await post("/v1/thrown", key);
    const second = await post("/v1/thrown", key);
    for (const response of [first, second]) {
      expect(response.status).toBe(402);
      expect(JSON.parse(response.bytes.toString())).toMatchObject({ message: "card declined" });
      expect(response.headers.get("idempotent-replayed")).toBeNull();
    }
    expect(thrown).toBe(2);
    expect(await chargeCount()).toBe(before);
    expect(await keyRows(key)).toEqual([]);
  });

  test("bad options are refused when the middleware is made", () => {
    const instance = txonce(db.prisma);
    expect(() => idempotency({} as never)).toThrow(/txonce\(prisma\)/);
    expect(() => idempotency(instance, { maxResponseBytes: -1 })).toThrow(/maxResponseBytes/);
    expect(() => idempotency(instance)({ retryAfterSeconds: 1.5 })).toThrow(/retryAfterSeconds/);
  });
});
