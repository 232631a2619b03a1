/**
 * The HTTP semantics every framework adapter must have, as one suite: real HTTP requests (fetch)
 * against a server listening on port 0, on a real PostgreSQL database of the test file's own.
 * Each test/http-<framework>.test.ts runs it with its framework's server (Express, Fastify, Nest on
 * Express, Nest on Fastify, Hono, Koa): the routes are written once here, framework-free, and each
 * file mounts them its own way. A new framework is a new caller of {@link httpSuite}.
 */
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { PrismaPg } from "@prisma/adapter-pg";
import type { HttpIdempotencyOptions, IdempotentResponse } from "../../src/http/core.js";
import { txonce } from "../../src/adapters/prisma.js";
import { PrismaClient } from "../../generated/prisma/client.js";
import { createTestDatabase, type TestDatabase } from "./database.js";
import { startFaultProxy, type FaultProxy } from "./fault-proxy.js";

export type Prisma = TestDatabase["prisma"];
export type Tx = Parameters<Parameters<Prisma["$transaction"]>[0]>[0];

/** What a framework-free route handler sees of the request. */
export interface RouteContext {
  readonly body: any;
  readonly params: Record<string, string>;
  header(name: string): string | undefined;
}

export interface TestRoute {
  readonly method: "POST" | "PUT";
  /** With `:name` parameters, in the syntax both Express and Fastify accept. */
  readonly path: string;
  readonly handler: (ctx: RouteContext, tx: Tx) => Promise<IdempotentResponse>;
  readonly options?: HttpIdempotencyOptions<any, any>;
}

/** Starts a server with these routes; rejected handler errors answer `err.statusCode ?? 500` with `{ code, message }`. */
export type StartServer = (input: {
  txonce: ReturnType<typeof txonce<Prisma>>;
  defaults: HttpIdempotencyOptions<any, any>;
  routes: readonly TestRoute[];
}) => Promise<{ url: string; close(): Promise<void> }>;

let keySeq = 0;
export const newKey = (label = "k") => `${label}-${++keySeq}-${Math.random().toString(36).slice(2)}`;

/** How a framework differs where the semantics allow it. */
export interface SuiteTraits {
  /**
   * Errors raised after the framework rendered the response (a body over `maxResponseBytes`, a
   * failed commit) are answered by txonce with the framework's default 500 body, because the app's
   * error handling already ran (Nest renders after its interceptors). (Default: `undefined`: the
   * app's error handler renders them)
   */
  readonly lateErrorBody?: unknown;
}

export function httpSuite(framework: string, startServer: StartServer, traits: SuiteTraits = {}): void {
  let db: TestDatabase;
  let server: { url: string; close(): Promise<void> };
  const calls = new Map<string, number>();
  const count = (name: string) => calls.set(name, (calls.get(name) ?? 0) + 1);
  /** Remaining injected failures of the /flaky route, by key. */
  const failuresLeft = new Map<string, number>();
  /** Holds /slow requests until released. */
  let releaseSlow: () => void = () => {};
  let slowStarted: () => void = () => {};

  async function charge(tx: Tx, accountId: string, amount: string | number) {
    const account = await tx.account.update({ where: { id: accountId }, data: { balance: { decrement: amount } } });
    const created = await tx.charge.create({ data: { accountId, amount } });
    return { id: created.id, accountId, amount: created.amount.toFixed(2), balanceAfter: account.balance.toFixed(2) };
  }

  const routes: TestRoute[] = [
    {
      // The authenticated account comes from a header (as an auth middleware would set it).
      method: "POST",
      path: "/charges",
      handler: async ({ body, header }, tx) => {
        count("charges");
        const accountId = header("x-account")!;
        const account = await tx.account.findUniqueOrThrow({ where: { id: accountId } });
        if (account.balance.lessThan(body.amount)) {
          return {
            status: 402,
            headers: { "content-type": "application/problem+json" },
            body: { type: "https://example.com/insufficient-funds", title: "Insufficient funds", status: 402 },
          };
        }
        const created = await charge(tx, accountId, body.amount);
        return {
          status: 201,
          headers: { location: `/charges/${created.id}`, "x-charge-id": created.id, "set-cookie": ["a=1", "b=2"] },
          body: created,
        };
      },
    },
    {
      method: "POST",
      path: "/accounts/:id/charges",
      handler: async ({ body, params }, tx) => ({ status: 201, body: await charge(tx, params.id!, body.amount) }),
    },
    {
      method: "POST",
      path: "/flaky",
      handler: async ({ header }, tx) => {
        count("flaky");
        const created = await charge(tx, "acc_a", "1.00");
        const key = header("idempotency-key")!;
        const left = failuresLeft.get(key) ?? 0;
        if (left > 0) {
          failuresLeft.set(key, left - 1);
          throw new Error("injected failure after the writes");
        }
        return { status: 201, body: created };
      },
    },
    {
      method: "POST",
      path: "/unavailable",
      handler: async (_ctx, tx) => {
        count("unavailable");
        await charge(tx, "acc_a", "1.00");
        return { status: 503, headers: { "retry-after": "5" }, body: { error: "try again" } };
      },
    },
    {
      method: "POST",
      path: "/declined-not-stored",
      options: { storeClientErrors: false },
      handler: async () => {
        count("declined-not-stored");
        return { status: 409, body: { error: "declined" } };
      },
    },
    {
      method: "POST",
      path: "/big",
      options: { maxResponseBytes: 1000 },
      handler: async ({ body }, tx) => {
        count("big");
        await charge(tx, "acc_a", "1.00");
        return { body: "x".repeat(body.size) };
      },
    },
    {
      method: "POST",
      path: "/circular",
      handler: async (_ctx, tx) => {
        await charge(tx, "acc_a", "1.00");
        const body: Record<string, unknown> = { id: 1 };
        body.self = body;
        return { status: 201, body };
      },
    },
    {
      method: "POST",
      path: "/stream",
      handler: async (_ctx, tx) => {
        await charge(tx, "acc_a", "1.00");
        return { body: Readable.from(["a", "b"]) };
      },
    },
    {
      method: "POST",
      path: "/bytes",
      handler: async () => ({ headers: { "Content-Type": "image/png" }, body: Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 255]) }),
    },
    {
      method: "POST",
      path: "/no-content",
      handler: async () => {
        count("no-content");
        return { status: 204 };
      },
    },
    {
      method: "POST",
      path: "/slow",
      options: { lockTimeout: "300ms" },
      handler: async () => {
        count("slow");
        slowStarted();
        await new Promise<void>((resolve) => (releaseSlow = resolve));
        return { status: 201, body: { done: true } };
      },
    },
    {
      method: "POST",
      path: "/optional",
      options: { required: false },
      handler: async () => {
        count("optional");
        return { body: { n: calls.get("optional") } };
      },
    },
    {
      method: "PUT",
      path: "/anyone/:id",
      options: { scope: () => undefined, fingerprint: false },
      handler: async ({ params }) => {
        count("anyone");
        return { body: { id: params.id, n: calls.get("anyone") } };
      },
    },
  ];

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 8 });
    await db.prisma.account.createMany({
      data: [
        { id: "acc_a", balance: 100_000 },
        { id: "acc_b", balance: 100_000 },
        { id: "acc_poor", balance: 5 },
      ],
    });
    server = await startServer({
      // No replay cache: a test below expires a record by changing expires_at in the database,
      // which a process that kept the record in memory would not see (its copy expires by the clock).
      txonce: txonce(db.prisma, { lockTimeout: "4s", transaction: { maxWait: 10_000, timeout: 10_000 }, replayCache: false }),
      // The authenticated account (here simply a header) owns the keys.
      defaults: { scope: (req: { headers: Record<string, unknown> }) => req.headers["x-account"] as string | undefined },
      routes,
    });
  });
  afterAll(async () => {
    await server?.close();
    await db?.drop();
  });

  /** Sends `body` as JSON, or `form` as `application/x-www-form-urlencoded` (parsed by the framework's form parser). */
  async function post(path: string, { key, body = {}, form, account = "acc_a", method = "POST", headers = {}, to = server }: {
    key?: string;
    body?: unknown;
    form?: string;
    account?: string;
    method?: string;
    headers?: Record<string, string>;
    /** The server to send it to. (Default: the suite's) */
    to?: { url: string };
  } = {}) {
    const response = await fetch(to.url + path, {
      method,
      headers: {
        "content-type": form === undefined ? "application/json" : "application/x-www-form-urlencoded",
        "x-account": account,
        ...(key === undefined ? {} : { "idempotency-key": key }),
        ...headers,
      },
      body: form ?? JSON.stringify(body),
    });
    const bytes = Buffer.from(await response.arrayBuffer());
    const text = bytes.toString("utf8");
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: response.status, headers: response.headers, bytes, text, json };
  }
  const quoted = (key: string) => `"${key}"`;
  const chargeRows = async (where = "TRUE", params: unknown[] = []) =>
    (await db.pool.query(`SELECT id, account_id, amount FROM charges WHERE ${where} ORDER BY id`, params)).rows;
  const keyRow = async (key: string) =>
    (await db.pool.query("SELECT scope, key, fingerprint, result FROM txonce_idempotency_keys WHERE key = $1", [key])).rows;
  /** The headers a replay must repeat: all but those of the connection and the replay marker. */
  const storedHeaders = (headers: Headers) =>
    Object.fromEntries([...headers].filter(([name]) => !["date", "connection", "keep-alive", "idempotent-replayed"].includes(name)));

  describe(`${framework}: first request and replay`, () => {
    test("201 and the handler's headers and body; the replay repeats them byte for byte with Idempotent-Replayed: true", async () => {
      const key = newKey();
      const before = await chargeRows();
      const first = await post("/charges", { key: quoted(key), body: { amount: "12.34" } });
      expect(first.status).toBe(201);
      expect(first.headers.get("idempotent-replayed")).toBeNull();
      // txonce's default for JSON bodies; Hono's c.json() sends it without the charset.
      expect(first.headers.get("content-type")).toMatch(/^application\/json(; charset=utf-8)?$/);
      expect(first.headers.get("location")).toBe(`/charges/${first.json.id}`);
      expect(first.headers.get("x-charge-id")).toBe(String(first.json.id));
      expect(first.headers.getSetCookie()).toEqual(["a=1", "b=2"]);
      expect(first.json).toMatchObject({ accountId: "acc_a", amount: "12.34" });

      const second = await post("/charges", { key: quoted(key), body: { amount: "12.34" } });
      const third = await post("/charges", { key: quoted(key), body: { amount: "12.34" } });
      for (const replay of [second, third]) {
        expect(replay.status).toBe(201);
        expect(replay.headers.get("idempotent-replayed")).toBe("true");
        expect(replay.bytes.equals(first.bytes)).toBe(true);
        expect(storedHeaders(replay.headers)).toEqual(storedHeaders(first.headers));
        expect(replay.headers.getSetCookie()).toEqual(["a=1", "b=2"]);
      }
      expect((await chargeRows()).length).toBe(before.length + 1);
      const [row] = await keyRow(key);
      expect(row.scope).toBe("POST /charges @acc_a");
      expect(row.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    });

    test("a bare key (Stripe-style) and its quoted form are the same key", async () => {
      const key = newKey();
      const first = await post("/charges", { key, body: { amount: "1.00" } });
      const second = await post("/charges", { key: quoted(key), body: { amount: "1.00" } });
      expect(first.status).toBe(201);
      expect(second.headers.get("idempotent-replayed")).toBe("true");
      expect(second.json.id).toBe(first.json.id);
    });

    test("a binary body is sent and replayed byte for byte with its content type", async () => {
      const key = newKey();
      const first = await post("/bytes", { key: quoted(key) });
      const second = await post("/bytes", { key: quoted(key) });
      expect([...first.bytes]).toEqual([0x89, 0x50, 0x4e, 0x47, 0, 255]);
      expect(first.headers.get("content-type")).toBe("image/png");
      expect(second.bytes.equals(first.bytes)).toBe(true);
      expect(second.headers.get("content-type")).toBe("image/png");
      expect(second.headers.get("idempotent-replayed")).toBe("true");
    });

    test("204 without a body is stored and replayed", async () => {
      const key = newKey();
      const callsBefore = calls.get("no-content") ?? 0;
      const first = await post("/no-content", { key: quoted(key) });
      const second = await post("/no-content", { key: quoted(key) });
      expect([first.status, second.status]).toEqual([204, 204]);
      expect(second.bytes.length).toBe(0);
      expect(second.headers.get("idempotent-replayed")).toBe("true");
      expect(calls.get("no-content")! - callsBefore).toBe(1);
    });
  });

  describe(`${framework}: 400 for a missing or malformed key`, () => {
    test("no Idempotency-Key: 400 problem+json, the handler does not run", async () => {
      const before = calls.get("charges") ?? 0;
      const response = await post("/charges", { body: { amount: "1.00" } });
      expect(response.status).toBe(400);
      expect(response.headers.get("content-type")).toBe("application/problem+json");
      expect(response.json).toMatchObject({
        type: "https://txonce.dev/problems/idempotency-key-missing",
        title: "Idempotency-Key header missing",
        status: 400,
        detail: expect.stringContaining("POST /charges requires an Idempotency-Key header"),
      });
      expect(calls.get("charges") ?? 0).toBe(before);
    });

    test.each([
      ['"unterminated', "no closing quote"],
      ['"bad\\escape"', "escapes"],
      ['""', "empty"],
      ["two words", "quoted string"],
      ['"a", "b"', "unexpected"],
      [`"${"x".repeat(256)}"`, "256 characters long, the limit is 255"],
    ])("Idempotency-Key: %s is a 400 (%s)", async (header, detail) => {
      const before = calls.get("charges") ?? 0;
      const response = await post("/charges", { key: header, body: { amount: "1.00" } });
      expect(response.status).toBe(400);
      expect(response.headers.get("content-type")).toBe("application/problem+json");
      expect(response.json.type).toBe("https://txonce.dev/problems/idempotency-key-malformed");
      expect(response.json.detail).toContain(detail);
      expect(calls.get("charges") ?? 0).toBe(before);
    });

    test("with required: false a request without a key runs every time and stores nothing", async () => {
      const keyRows = async () =>
        (await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE scope LIKE '%/optional%'")).rows[0].n;
      const rowsBefore = await keyRows();
      const first = await post("/optional");
      const second = await post("/optional");
      expect(await keyRows()).toBe(rowsBefore);
      expect(first.status).toBe(200);
      expect(second.json.n).toBe(first.json.n + 1);
      expect(second.headers.get("idempotent-replayed")).toBeNull();
      const keyed = newKey();
      const third = await post("/optional", { key: quoted(keyed) });
      const fourth = await post("/optional", { key: quoted(keyed) });
      expect(fourth.headers.get("idempotent-replayed")).toBe("true");
      expect(fourth.json.n).toBe(third.json.n);
    });
  });

  describe(`${framework}: 422 for a key reused with a different request`, () => {
    test("a different body, or the same body on another URL, is a 422 problem; nothing runs", async () => {
      const key = newKey();
      const first = await post("/charges", { key: quoted(key), body: { amount: "2.00" } });
      expect(first.status).toBe(201);
      const before = calls.get("charges");
      const reused = await post("/charges", { key: quoted(key), body: { amount: "3.00" } });
      expect(reused.status).toBe(422);
      expect(reused.headers.get("content-type")).toBe("application/problem+json");
      expect(reused.json).toMatchObject({
        type: "https://txonce.dev/problems/idempotency-key-reused",
        status: 422,
        firstSeenAt: expect.any(String),
      });
      expect(calls.get("charges")).toBe(before);
      // Object key order does not matter: the same request in another order replays.
      const sameKey = newKey();
      await post("/charges", { key: quoted(sameKey), body: { amount: "2.00", note: "x" } });
      const reordered = await post("/charges", { key: quoted(sameKey), body: { note: "x", amount: "2.00" } });
      expect(reordered.headers.get("idempotent-replayed")).toBe("true");
    });

    test("a form-encoded body, as the framework's form parser gives it: stored and replayed; another form is a 422", async () => {
      const key = newKey();
      const first = await post("/charges", { key: quoted(key), form: "amount=4.56&note=first+order&tag=a&tag=b" });
      expect(first.status, first.text).toBe(201);
      expect(first.json).toMatchObject({ amount: "4.56" });
      const replay = await post("/charges", { key: quoted(key), form: "tag=a&tag=b&note=first+order&amount=4.56" });
      expect(replay.headers.get("idempotent-replayed")).toBe("true");
      expect(replay.bytes.equals(first.bytes)).toBe(true);
      const other = await post("/charges", { key: quoted(key), form: "amount=4.57&note=first+order&tag=a&tag=b" });
      expect(other.status).toBe(422);
    });

    test("the fingerprint covers the URL, not just the route pattern: another account id is a 422", async () => {
      const key = newKey();
      const first = await post("/accounts/acc_a/charges", { key: quoted(key), body: { amount: "1.00" } });
      const other = await post("/accounts/acc_b/charges", { key: quoted(key), body: { amount: "1.00" } });
      expect(first.status).toBe(201);
      expect(other.status).toBe(422);
      expect(await chargeRows("account_id = 'acc_b'")).toEqual([]);
    });
  });

  describe(`${framework}: concurrency`, () => {
    test("20 concurrent requests with one key: one charge, twenty identical answers, nineteen replays", async () => {
      const key = newKey();
      const before = (await chargeRows("account_id = 'acc_b'")).length;
      const responses = await Promise.all(
        Array.from({ length: 20 }, () => post("/charges", { key: quoted(key), account: "acc_b", body: { amount: "7.77" } })),
      );
      expect(responses.map((r) => r.status)).toEqual(Array(20).fill(201));
      expect(new Set(responses.map((r) => r.text)).size).toBe(1);
      expect(responses.filter((r) => r.headers.get("idempotent-replayed") === "true").length).toBe(19);
      const rows = await chargeRows("account_id = 'acc_b' AND amount = 7.77");
      expect(rows.length).toBe(1);
      expect((await chargeRows("account_id = 'acc_b'")).length).toBe(before + 1);
      expect(rows[0].id).toBe(responses[0]!.json.id);
    });

    test("a request while the first with its key is still running: 409 problem with Retry-After after lockTimeout", async () => {
      const key = newKey();
      const started = new Promise<void>((resolve) => (slowStarted = resolve));
      const first = post("/slow", { key: quoted(key) });
      await started;
      const t0 = Date.now();
      const second = await post("/slow", { key: quoted(key) });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
      expect(second.status).toBe(409);
      expect(second.headers.get("content-type")).toBe("application/problem+json");
      expect(second.headers.get("retry-after")).toBe("1");
      expect(second.json).toMatchObject({ type: "https://txonce.dev/problems/idempotency-key-in-use", status: 409 });
      releaseSlow();
      expect((await first).status).toBe(201);
      const third = await post("/slow", { key: quoted(key) });
      expect(third.status).toBe(201);
      expect(third.headers.get("idempotent-replayed")).toBe("true");
      expect(calls.get("slow")).toBe(1);
    });
  });

  describe(`${framework}: scope`, () => {
    test("two accounts with the same key get their own charges and never each other's response", async () => {
      const key = newKey();
      const a = await post("/charges", { key: quoted(key), account: "acc_a", body: { amount: "5.00" } });
      const b = await post("/charges", { key: quoted(key), account: "acc_b", body: { amount: "5.00" } });
      expect([a.status, b.status]).toEqual([201, 201]);
      expect(b.headers.get("idempotent-replayed")).toBeNull();
      expect(a.json.accountId).toBe("acc_a");
      expect(b.json.accountId).toBe("acc_b");
      expect(a.json.id).not.toBe(b.json.id);
      const aAgain = await post("/charges", { key: quoted(key), account: "acc_a", body: { amount: "5.00" } });
      expect(aAgain.bytes.equals(a.bytes)).toBe(true);
      expect((await keyRow(key)).map((r) => r.scope).sort()).toEqual(["POST /charges @acc_a", "POST /charges @acc_b"]);
    });

    test("the same key on two routes is two records; the scope option can be overridden per route", async () => {
      const key = newKey();
      const charged = await post("/charges", { key: quoted(key), body: { amount: "1.00" } });
      const put = await post("/anyone/1", { key: quoted(key), method: "PUT", account: "acc_a" });
      const putOther = await post("/anyone/2", { key: quoted(key), method: "PUT", account: "acc_b" });
      expect(charged.status).toBe(201);
      expect(put.status).toBe(200);
      // No owner and no fingerprint on this route: the second client replays the first's answer.
      expect(putOther.headers.get("idempotent-replayed")).toBe("true");
      expect(putOther.json).toEqual(put.json);
      expect((await keyRow(key)).map((r) => r.scope).sort()).toEqual(["POST /charges @acc_a", "PUT /anyone/:id"]);
    });
  });

  describe(`${framework}: what is stored`, () => {
    test("a handler that throws: 500 from the framework, writes and key rolled back, the retry runs again", async () => {
      const key = newKey();
      failuresLeft.set(quoted(key), 2); // by the raw header value
      const before = (await chargeRows()).length;
      const callsBefore = calls.get("flaky") ?? 0;
      const first = await post("/flaky", { key: quoted(key) });
      const second = await post("/flaky", { key: quoted(key) });
      expect([first.status, second.status]).toEqual([500, 500]);
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
      const third = await post("/flaky", { key: quoted(key) });
      const fourth = await post("/flaky", { key: quoted(key) });
      expect(third.status).toBe(201);
      expect(fourth.headers.get("idempotent-replayed")).toBe("true");
      expect(fourth.bytes.equals(third.bytes)).toBe(true);
      expect(calls.get("flaky")! - callsBefore).toBe(3);
      expect((await chargeRows()).length).toBe(before + 1);
    });

    test("a 5xx returned by the handler is sent, rolled back and not stored: the retry runs again", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const callsBefore = calls.get("unavailable") ?? 0;
      const first = await post("/unavailable", { key: quoted(key) });
      const second = await post("/unavailable", { key: quoted(key) });
      for (const response of [first, second]) {
        expect(response.status).toBe(503);
        expect(response.headers.get("retry-after")).toBe("5");
        expect(response.json).toEqual({ error: "try again" });
        expect(response.headers.get("idempotent-replayed")).toBeNull();
      }
      expect(calls.get("unavailable")! - callsBefore).toBe(2);
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
    });

    test("a 4xx returned by the handler is stored and replayed", async () => {
      const key = newKey();
      const callsBefore = calls.get("charges") ?? 0;
      const first = await post("/charges", { key: quoted(key), account: "acc_poor", body: { amount: "10.00" } });
      await db.prisma.account.update({ where: { id: "acc_poor" }, data: { balance: 1000 } });
      try {
        const second = await post("/charges", { key: quoted(key), account: "acc_poor", body: { amount: "10.00" } });
        expect(first.status).toBe(402);
        // Nest on either platform adds the charset when it sends the string.
        expect(first.headers.get("content-type")).toMatch(/^application\/problem\+json(; charset=utf-8)?$/);
        expect(second.status).toBe(402);
        expect(second.headers.get("idempotent-replayed")).toBe("true");
        expect(second.bytes.equals(first.bytes)).toBe(true);
        expect(calls.get("charges")! - callsBefore).toBe(1);
        expect(await chargeRows("account_id = 'acc_poor'")).toEqual([]);
      } finally {
        await db.prisma.account.update({ where: { id: "acc_poor" }, data: { balance: 5 } });
      }
    });

    test("with storeClientErrors: false a 4xx is not stored", async () => {
      const key = newKey();
      const callsBefore = calls.get("declined-not-stored") ?? 0;
      const first = await post("/declined-not-stored", { key: quoted(key) });
      const second = await post("/declined-not-stored", { key: quoted(key) });
      expect([first.status, second.status]).toEqual([409, 409]);
      expect(second.headers.get("idempotent-replayed")).toBeNull();
      expect(calls.get("declined-not-stored")! - callsBefore).toBe(2);
      expect(await keyRow(key)).toEqual([]);
    });

    test("a response over maxResponseBytes is a clear 500 error: nothing stored, rolled back; a smaller one is stored", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const tooBig = await post("/big", { key: quoted(key), body: { size: 1001 } });
      expect(tooBig.status).toBe(500);
      if (traits.lateErrorBody === undefined) {
        expect(tooBig.json).toMatchObject({
          code: "TXONCE_RESPONSE_NOT_STORABLE",
          message: expect.stringContaining("1001 bytes, more than maxResponseBytes (1000)"),
        });
      } else {
        expect(tooBig.json).toEqual(traits.lateErrorBody);
      }
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
      const key2 = newKey();
      const fits = await post("/big", { key: quoted(key2), body: { size: 1000 } });
      expect(fits.status).toBe(200);
      expect(fits.bytes.length).toBe(1000);
      expect((await post("/big", { key: quoted(key2), body: { size: 1000 } })).headers.get("idempotent-replayed")).toBe("true");
    });

    test("a stream is refused with a clear error and nothing is stored", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const response = await post("/stream", { key: quoted(key) });
      expect(response.status).toBe(500);
      expect(response.json).toMatchObject({ code: "TXONCE_RESPONSE_NOT_STORABLE", message: expect.stringContaining("stream") });
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
    });

    test("a circular body is refused with a clear error, like a circular result: nothing stored, rolled back", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const response = await post("/circular", { key: quoted(key) });
      expect(response.status).toBe(500);
      expect(response.json).toMatchObject({ code: "TXONCE_RESPONSE_NOT_STORABLE", message: expect.stringMatching(/circular/) });
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
    });

    test("the stored record expires with the retention: afterwards the key runs again", async () => {
      const key = newKey();
      const first = await post("/charges", { key: quoted(key), body: { amount: "1.00" } });
      await db.pool.query("UPDATE txonce_idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", [key]);
      await sleep(5);
      const second = await post("/charges", { key: quoted(key), body: { amount: "1.00" } });
      expect(second.status).toBe(201);
      expect(second.headers.get("idempotent-replayed")).toBeNull();
      expect(second.json.id).not.toBe(first.json.id);
    });
  });

  describe(`${framework}: 503 when the database fails under txonce's own statements`, () => {
    // A second server whose txonce reaches the database through a proxy that cuts the connection
    // at COMMIT (test/support/fault-proxy.ts); one connection, so that a cut one is not replaced
    // by an idle one already open.
    let proxy: FaultProxy;
    let faulty: { url: string; close(): Promise<void> };
    let client: PrismaClient;
    beforeAll(async () => {
      proxy = await startFaultProxy(db.url);
      const ignore = () => {};
      client = new PrismaClient({ adapter: new PrismaPg({ connectionString: proxy.url, max: 1 }, { onPoolError: ignore, onConnectionError: ignore }) });
      faulty = await startServer({
        txonce: txonce(client, { lockTimeout: "1s", replayCache: false }),
        defaults: { scope: (req: { headers: Record<string, unknown> }) => req.headers["x-account"] as string | undefined },
        routes,
      });
    });
    afterAll(async () => {
      await faulty?.close();
      await client?.$disconnect();
      await proxy?.close();
    });

    test("COMMIT cut before it reached the server: 503 database-unavailable with Retry-After, nothing stored; the retry runs", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const cut = proxy.arm("COMMIT", "cut-before");
      const response = await post("/charges", { key: quoted(key), body: { amount: "1.00" }, to: faulty });
      await cut;
      expect(response.status).toBe(503);
      expect(response.headers.get("content-type")).toBe("application/problem+json");
      expect(response.headers.get("retry-after")).toBe("1");
      expect(response.json).toMatchObject({ type: "https://txonce.dev/problems/database-unavailable", status: 503 });
      expect(await keyRow(key)).toEqual([]);
      expect((await chargeRows()).length).toBe(before);
      const retry = await post("/charges", { key: quoted(key), body: { amount: "1.00" }, to: faulty });
      expect(retry.status).toBe(201);
      expect(retry.headers.get("idempotent-replayed")).toBeNull();
      expect((await chargeRows()).length).toBe(before + 1);
    });

    test("COMMIT ran but its answer was lost and the outcome cannot be looked up: 503 outcome-unknown; the retry replays", async () => {
      const key = newKey();
      const before = (await chargeRows()).length;
      const cut = proxy.arm("COMMIT", "cut-after-answer");
      void cut.then(() => proxy.refuseConnections(true));
      const response = await post("/charges", { key: quoted(key), body: { amount: "1.00" }, to: faulty });
      proxy.refuseConnections(false);
      expect(response.status).toBe(503);
      expect(response.headers.get("content-type")).toBe("application/problem+json");
      expect(response.headers.get("retry-after")).toBe("1");
      expect(response.json).toMatchObject({ type: "https://txonce.dev/problems/outcome-unknown", status: 503 });
      expect(response.json.detail).toMatch(/same Idempotency-Key is safe/);
      // It had committed: the retry returns the stored response and charges nothing more.
      expect((await chargeRows()).length).toBe(before + 1);
      const retry = await post("/charges", { key: quoted(key), body: { amount: "1.00" }, to: faulty });
      expect(retry.status).toBe(201);
      expect(retry.headers.get("idempotent-replayed")).toBe("true");
      expect((await chargeRows()).length).toBe(before + 1);
    });
  });
}
