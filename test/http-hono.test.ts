/**
 * txonce/hono on Hono 4 with @hono/node-server: the shared HTTP suite (test/support/http-suite.ts)
 * over real HTTP on a real PostgreSQL, plus what is specific to Hono: `c.json()` / `c.text()`
 * responses and `c.var.tx`, the request body still readable by the handler, streaming responses
 * refused, `onError` for thrown errors, and a thrown 4xx HTTPException stored like a returned 4xx.
 */
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { serve, type ServerType } from "@hono/node-server";
import { Hono, type Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { stream, streamSSE } from "hono/streaming";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { idempotency } from "../src/http/hono.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { httpSuite, newKey, type StartServer } from "./support/http-suite.js";

/** Renders errors as `{ code, message }` with their `statusCode`, like a typical API error handler. */
function withErrorHandler<T extends Hono<any>>(app: T): T {
  app.onError((error: any, c) => {
    if (error instanceof HTTPException) return error.getResponse();
    return c.json({ code: error.code, message: error.message }, error.statusCode ?? 500);
  });
  return app;
}

async function listen(app: Hono<any>) {
  const server: ServerType = await new Promise((resolve) => {
    const started = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" }, () => resolve(started));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The suite's routes on Hono: the handler's `{ status, headers, body }` becomes `c.json()`, `c.text()` or `c.body()`. */
const startServer: StartServer = async ({ txonce: instance, defaults, routes }) => {
  const app = withErrorHandler(new Hono());
  // The suite's scope reads `req.headers`; a Hono route has the Context.
  const scope = defaults.scope;
  const idempotent = idempotency(instance, {
    ...defaults,
    scope: scope && ((c: Context) => scope({ headers: Object.fromEntries(c.req.raw.headers) })),
  });
  for (const route of routes) {
    app.on(route.method, route.path, idempotent(route.options), async (c) => {
      const type = c.req.header("content-type") ?? "";
      const body = type.includes("json")
        ? await c.req.json()
        : type.includes("form")
          ? await c.req.parseBody({ all: true }) // the fields of a form, repeated ones as arrays
          : undefined;
      const reply = await route.handler({ body, params: c.req.param(), header: (name) => c.req.header(name) }, c.var.tx);
      const status = (reply.status ?? 200) as 200;
      const headers = new Headers();
      for (const [name, value] of Object.entries(reply.headers ?? {})) {
        if (value === undefined) continue;
        for (const one of Array.isArray(value) ? value : [String(value)]) headers.append(name, one);
      }
      if (reply.body === undefined) return c.body(null, status, Object.fromEntries(headers));
      if (reply.body instanceof Readable) return c.body(Readable.toWeb(reply.body) as ReadableStream, status);
      if (reply.body instanceof Uint8Array) return c.body(new Uint8Array(reply.body), status, Object.fromEntries(headers));
      if (typeof reply.body === "string") return c.text(reply.body, status, Object.fromEntries(headers));
      const response = c.json(reply.body, status);
      headers.forEach((value, name) => (name === "set-cookie" ? undefined : response.headers.set(name, value)));
      for (const cookie of headers.getSetCookie()) response.headers.append("set-cookie", cookie);
      return response;
    });
  }
  return listen(app);
};

httpSuite("hono", startServer);

describe("hono specifics", () => {
  let db: TestDatabase;
  let server: Awaited<ReturnType<typeof listen>>;
  let declined = 0;

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 1000 } });
    const idempotent = idempotency(txonce(db.prisma), { scope: (c) => c.req.header("x-account") });
    const api = withErrorHandler(new Hono());
    api.post("/accounts/:id/charges", idempotent(), async (c) => {
      // Typed: c.var.tx is the Prisma transaction client; the body is still there for the handler.
      const { amount } = await c.req.json<{ amount: string }>();
      const charge = await c.var.tx.charge.create({ data: { accountId: c.req.param("id"), amount } });
      c.header("location", `/v1/charges/${charge.id}`);
      return c.json({ id: charge.id, amount: charge.amount.toFixed(2) }, 201);
    });
    api.post("/text", idempotent(), (c) => c.text(`hello ${Math.random()}`));
    api.post("/declined", idempotent(), async (c) => {
      declined++;
      await c.var.tx.charge.create({ data: { accountId: "acc", amount: "0.01" } });
      throw new HTTPException(402, { message: "card declined" });
    });
    api.post("/sse", idempotent(), (c) =>
      streamSSE(c, async (sse) => {
        await sse.writeSSE({ data: "one" });
      }),
    );
    api.post("/stream", idempotent(), (c) =>
      stream(c, async (out) => {
        await out.write("chunk");
      }),
    );
    const app = withErrorHandler(new Hono());
    app.route("/v1", api);
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
    return { status: response.status, headers: response.headers, text: await response.text() };
  };
  const keyRows = async (key: string) => (await db.pool.query("SELECT scope FROM txonce_idempotency_keys WHERE key = $1", [key])).rows;
  const chargeCount = async () => (await db.pool.query("SELECT count(*)::int AS n FROM charges")).rows[0].n as number;

  test("c.json() with c.header(): stored and replayed byte for byte; app.route()'s prefix is part of the scope", async () => {
    const key = newKey();
    const first = await post("/v1/accounts/acc/charges", key, { amount: "2.50" });
    const second = await post("/v1/accounts/acc/charges", key, { amount: "2.50" });
    expect(first.status).toBe(201);
    expect(first.headers.get("content-type")).toBe("application/json");
    expect(second.status).toBe(201);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.headers.get("location")).toBe(first.headers.get("location"));
    expect(second.headers.get("content-type")).toBe("application/json");
    expect(second.text).toBe(first.text);
    expect(await keyRows(key)).toEqual([{ scope: "POST /v1/accounts/:id/charges @acc" }]);
  });

  test("c.text() is stored with its content type", async () => {
    const key = newKey();
    const first = await post("/v1/text", key);
    const second = await post("/v1/text", key);
    expect(first.headers.get("content-type")).toBe("text/plain; charset=UTF-8");
    expect(second.text).toBe(first.text);
    expect(second.headers.get("content-type")).toBe("text/plain; charset=UTF-8");
  });

  test("a thrown 4xx HTTPException is stored as onError answered it, with the writes before it", async () => {
    const key = newKey();
    const before = await chargeCount();
    const first = await post("/v1/declined", key);
    const second = await post("/v1/declined", key);
    expect([first.status, second.status]).toEqual([402, 402]);
    expect(first.text).toBe("card declined");
    expect(second.text).toBe(first.text);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(declined).toBe(1);
    expect(await chargeCount()).toBe(before + 1);
  });

  test.each(["/v1/sse", "/v1/stream"])("a streamed response (%s) is refused: 500, nothing stored", async (path) => {
    const key = newKey();
    const response = await post(path, key);
    expect(response.status).toBe(500);
    expect(JSON.parse(response.text)).toMatchObject({ code: "TXONCE_RESPONSE_NOT_STORABLE", message: expect.stringContaining("stream") });
    expect(await keyRows(key)).toEqual([]);
  });

  test("bad options are refused when the middleware is made", () => {
    const instance = txonce(db.prisma);
    expect(() => idempotency({} as never)).toThrow(/txonce\(prisma\)/);
    expect(() => idempotency(instance, { maxResponseBytes: -1 })).toThrow(/maxResponseBytes/);
    expect(() => idempotency(instance)({ retryAfterSeconds: 1.5 })).toThrow(/retryAfterSeconds/);
  });
});
