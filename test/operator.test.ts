/**
 * The operator actions on a real PostgreSQL, through the functions (pg and Prisma) and the real
 * CLI: `keys.inspect`, `keys.forget` (waits for a running first call; evicts the replay cache),
 * `keys.purge` (in batches, one scope), `outbox.listDead`, and their refusals without a scope or
 * filter.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { txonce as txoncePrisma } from "../src/adapters/prisma.js";
import { createTxonce } from "../src/txonce.js";
import { IdempotencyKeyInUseError, InvalidArgumentError } from "../src/errors.js";
import type { Database } from "../src/executor.js";
import { txonceCli } from "./support/cli.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { countKeys, seedKeys } from "./support/seed.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 4 });
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query("TRUNCATE txonce_idempotency_keys, txonce_outbox_messages");
});

/** A deferred: a promise and the function that resolves it. */
function barrier() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

/**
 * A call that runs the key in scope "acme" and holds it until `release()`; resolves once the call
 * holds the key. `running` settles with `value` after the release.
 */
async function holdKey<T>(t: { withIdempotency<R>(key: string, op: () => Promise<R>, options: { scope: string }): Promise<R> }, key: string, value: T) {
  const release = barrier();
  const started = barrier();
  const running = t.withIdempotency(key, async () => {
    started.open();
    await release.opened;
    return value;
  }, { scope: "acme" });
  await started.opened;
  return { running, release: release.open };
}

/** A database on which any statement fails: what runs before the first statement is all that can happen. */
const noDatabase: Database<unknown> = {
  query: () => Promise.reject(new Error("no statement expected")),
  transaction: () => Promise.reject(new Error("no transaction expected")),
  sqlFor: () => ({ query: () => Promise.reject(new Error("no statement expected")) }),
};

describe("keys.inspect", () => {
  test("a completed record: status, dates, fingerprint, the result decoded by the codec", async () => {
    const t = txoncePg(db.pool);
    const at = new Date("2026-01-02T03:04:05.678Z");
    await t.withIdempotency("k1", async () => ({ at, amount: 10n }), { scope: "acme", fingerprint: { amount: 10 } });
    const record = await t.keys.inspect({ scope: "acme", key: "k1" });
    expect(record).toMatchObject({ scope: "acme", key: "k1", status: "completed", result: { at, amount: 10n } });
    expect(record.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(record.expiresAt!.getTime() - record.createdAt!.getTime()).toBe(48 * 3600 * 1000);
    expect(JSON.parse(record.encodedResult!)).toMatchObject({ json: { at: at.toISOString(), amount: "10" } });
  });

  test("expired, absent, and running (a first call holds the key: its row is not visible yet)", async () => {
    const t = txoncePg(db.pool);
    await seedKeys(db.pool, { count: 1, expired: true, scope: "acme", prefix: "old" });
    expect(await t.keys.inspect({ scope: "acme", key: "old-1" })).toMatchObject({ status: "expired", result: null });
    expect(await t.keys.inspect({ scope: "acme", key: "nobody" })).toEqual({
      scope: "acme",
      key: "nobody",
      status: "absent",
      createdAt: null,
      expiresAt: null,
      fingerprint: null,
      result: undefined,
      encodedResult: null,
    });
    const { running, release } = await holdKey(t, "busy", 1); // the call holds the key
    expect((await t.keys.inspect({ scope: "acme", key: "busy" })).status).toBe("running");
    release();
    await running;
    expect((await t.keys.inspect({ scope: "acme", key: "busy" })).status).toBe("completed");
  });
});

describe("keys.forget", () => {
  test("deletes the record, so the next call runs again, even with the record in this process's replay cache", async () => {
    const t = txoncePg(db.pool);
    let runs = 0;
    const call = () => t.withIdempotencyOutcome("k", async () => ++runs, { scope: "acme" });
    await call();
    await db.pool.query("SELECT 1"); // the replay below comes from memory: no statement needed
    expect(await call()).toMatchObject({ value: 1, replayed: true });
    expect(await t.keys.forget({ scope: "acme", key: "k" })).toBe(true);
    expect(await countKeys(db.pool, "scope = 'acme'")).toBe(0);
    expect(await call()).toMatchObject({ value: 2, replayed: false });
    expect(await t.keys.forget({ scope: "acme", key: "nobody" })).toBe(false);
  });

  test("waits for a first call that is running, then deletes what it committed", async () => {
    const t = txoncePg(db.pool);
    const { running, release } = await holdKey(t, "k", "first"); // the call holds the key
    let forgotten: boolean | undefined;
    const forgetting = t.keys.forget({ scope: "acme", key: "k" }).then((deleted) => (forgotten = deleted));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(forgotten).toBeUndefined(); // waiting for the call's lock
    release();
    expect(await running).toBe("first");
    expect(await forgetting).toBe(true);
    expect(await countKeys(db.pool, "scope = 'acme'")).toBe(0);
    expect(await t.withIdempotency("k", async () => "second", { scope: "acme" })).toBe("second");
  });

  test("past lockTimeout: IdempotencyKeyInUseError, nothing deleted", async () => {
    const t = txoncePg(db.pool);
    const { running, release } = await holdKey(t, "k", 1); // the call holds the key
    const error = await t.keys.forget({ scope: "acme", key: "k" }, { lockTimeout: 200 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IdempotencyKeyInUseError);
    expect(error).toMatchObject({ code: "TXONCE_KEY_IN_USE", scope: "acme", key: "k" });
    release();
    await running;
    expect(await countKeys(db.pool, "scope = 'acme'")).toBe(1);
  });

  test("through Prisma, under a SERIALIZABLE default: waits for the running call and deletes its record", async () => {
    const t = txoncePrisma(db.prisma, { transaction: { isolationLevel: "Serializable" } });
    await db.pool.query(`ALTER DATABASE ${new URL(db.url).pathname.slice(1)} SET default_transaction_isolation = 'serializable'`);
    try {
      const prisma = db.newPrisma({ max: 3 });
      const p = txoncePrisma(prisma);
      const { running, release } = await holdKey(t, "k", 1); // the call holds the key
      const forgetting = p.keys.forget({ scope: "acme", key: "k" });
      await new Promise((resolve) => setTimeout(resolve, 100));
      release();
      await running;
      expect(await forgetting).toBe(true);
      expect(await countKeys(db.pool, "scope = 'acme'")).toBe(0);
    } finally {
      await db.pool.query(`ALTER DATABASE ${new URL(db.url).pathname.slice(1)} RESET default_transaction_isolation`);
    }
  });
});

describe("keys.purge", () => {
  test("deletes one scope's records in batches and evicts them from the replay cache; other scopes stay", async () => {
    const t = txoncePg(db.pool);
    await seedKeys(db.pool, { count: 2_500, expired: false, scope: "leaving" });
    await seedKeys(db.pool, { count: 7, expired: false, scope: "staying" });
    let runs = 0;
    await t.withIdempotency("cached", async () => ++runs, { scope: "leaving" });
    // A scope whose name starts with the purged one keeps its copies: deleted behind txonce's back,
    // its record still replays from memory after the purge.
    await t.withIdempotency("cached", async () => ++runs, { scope: "leaving-too" });
    await db.pool.query("DELETE FROM txonce_idempotency_keys WHERE scope = 'leaving-too'");
    expect(await t.keys.purge({ scope: "leaving" }, { batchSize: 1000 })).toBe(2_501);
    expect(await countKeys(db.pool)).toBe(7);
    expect(await t.withIdempotency("cached", async () => ++runs, { scope: "leaving" })).toBe(3);
    expect(await t.withIdempotency("cached", async () => ++runs, { scope: "leaving-too" })).toBe(2);
  });
});

describe("refusals, before any statement", () => {
  const t = createTxonce(noDatabase);
  test.each([
    ["inspect without a scope", () => t.keys.inspect({ key: "k" } as never), "scope"],
    ["inspect with the default scope", () => t.keys.inspect({ scope: "", key: "k" }), "scope"],
    ["inspect without a key", () => t.keys.inspect({ scope: "acme" } as never), "key"],
    ["forget with the default scope", () => t.keys.forget({ scope: "", key: "k" }), "scope"],
    ["forget with a NUL in the key", () => t.keys.forget({ scope: "acme", key: "a\u0000b" }), "key"],
    ["forget with a bad lockTimeout", () => t.keys.forget({ scope: "acme", key: "k" }, { lockTimeout: "soon" }), "lockTimeout"],
    ["purge without a scope", () => t.keys.purge({} as never), "scope"],
    ["purge with the default scope", () => t.keys.purge({ scope: "" }), "scope"],
    ["purge with no argument", () => t.keys.purge(undefined as never), "scope"],
    ["purge with a bad batch size", () => t.keys.purge({ scope: "acme" }, { batchSize: 0 }), "batchSize"],
    ["listDead with an empty topic", () => t.outbox.listDead({ topic: "" }), "topic"],
    ["listDead with a bad limit", () => t.outbox.listDead({ limit: 0 }), "limit"],
  ])("%s", async (_name, act, argument) => {
    const error = await act().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ code: "TXONCE_INVALID_ARGUMENT", argument });
  });
  test("the default scope's reason says why", async () => {
    await expect(t.keys.purge({ scope: "" })).rejects.toThrow(/a scope is required \(operator actions never work on the default scope "" or on all scopes at once\)/);
  });
});

async function deadMessages(count: number, topic: string) {
  await db.pool.query(
    `INSERT INTO txonce_outbox_messages (id, topic, key, payload, headers, attempts, last_error, dead_at)
     SELECT gen_random_uuid(), $1, 'k' || i, '{"json":{"n":' || i || ',"at":"2026-01-01T00:00:00.000Z"},"meta":{"values":{"at":["Date"]}}}',
       '{"h":"v"}', 10, 'broker refused ' || i, now() - (100 - i) * interval '1 second'
     FROM generate_series(1, $2::integer) AS i`,
    [topic, count],
  );
}

describe("outbox.listDead", () => {
  test("dead messages oldest first, decoded, filtered by topic, limited; requeueDead puts them back", async () => {
    const t = txoncePg(db.pool);
    await deadMessages(3, "orders");
    await deadMessages(2, "invoices");
    await db.pool.query(`INSERT INTO txonce_outbox_messages (id, topic, payload) VALUES (gen_random_uuid(), 'orders', '{"json":0}')`); // pending
    const orders = await t.outbox.listDead({ topic: "orders" });
    expect(orders.map((m) => m.lastError)).toEqual(["broker refused 1", "broker refused 2", "broker refused 3"]);
    expect(orders[0]).toMatchObject({
      topic: "orders",
      key: "k1",
      payload: { n: 1, at: new Date("2026-01-01T00:00:00.000Z") },
      headers: { h: "v" },
      attempts: 10,
    });
    expect(orders[0]!.deadAt).toBeInstanceOf(Date);
    expect(await t.outbox.listDead()).toHaveLength(5);
    expect(await t.outbox.listDead({ limit: 2 })).toHaveLength(2);
    expect(await t.outbox.requeueDead({ topic: "invoices" })).toBe(2);
    expect((await t.outbox.listDead()).map((m) => m.topic)).toEqual(["orders", "orders", "orders"]);
  });
});

describe("the CLI", () => {
  const run = (args: string[]) => txonceCli(args, { DATABASE_URL: db.url });

  test("keys show, forget, purge (purge asks for --yes)", async () => {
    const t = txoncePg(db.pool);
    await t.withIdempotency("k1", async () => ({ ok: true, at: new Date("2026-01-01T00:00:00Z") }), { scope: "acme" });
    const shown = await run(["keys", "show", "--scope", "acme", "--key", "k1"]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/^scope: +"acme"\nkey: +"k1"\nstatus: +completed\ncreated: +\S+\nexpires: +\S+\nfingerprint: +\(none\)\nresult: +\{"ok":true,"at":"2026-01-01T00:00:00.000Z"\}\n$/);
    const json = await run(["keys", "show", "--scope", "acme", "--key", "k1", "--json"]);
    expect(JSON.parse(json.stdout)).toMatchObject({ status: "completed", result: { ok: true, at: "2026-01-01T00:00:00.000Z" } });

    const forgot = await run(["keys", "forget", "--scope", "acme", "--key", "k1"]);
    expect(forgot.code, forgot.stderr).toBe(0);
    expect(forgot.stdout).toBe('txonce keys forget: deleted the record of key "k1" in scope "acme"; its next call runs again\n');
    expect(JSON.parse((await run(["keys", "show", "--scope", "acme", "--key", "k1", "--json"])).stdout)).toMatchObject({ status: "absent" });

    await seedKeys(db.pool, { count: 30, expired: false, scope: "leaving" });
    const unconfirmed = await run(["keys", "purge", "--scope", "leaving"]);
    expect(unconfirmed.code).toBe(64);
    expect(unconfirmed.stderr).toMatch(/add --yes to confirm/);
    expect(await countKeys(db.pool)).toBe(30);
    const purged = await run(["keys", "purge", "--scope", "leaving", "--yes", "--batch-size", "7", "--json"]);
    expect(purged.code, purged.stderr).toBe(0);
    expect(JSON.parse(purged.stdout)).toEqual({ scope: "leaving", deleted: 30 });
    expect(await countKeys(db.pool)).toBe(0);
  });

  test("keys show a result holding a type the command was not given (Prisma's Decimal): the codec's JSON, nothing thrown", async () => {
    await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('decimal-acc', 0) ON CONFLICT DO NOTHING");
    await txoncePrisma(db.prisma).withIdempotency("charged", (tx) => tx.charge.create({ data: { accountId: "decimal-acc", amount: "12.50" } }), { scope: "decimal" });
    const shown = await run(["keys", "show", "--scope", "decimal", "--key", "charged"]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/\nresult: +\{.*"amount":"12.5".*\}\n$/);
    const json = await run(["keys", "show", "--scope", "decimal", "--key", "charged", "--json"]);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ status: "completed", result: { accountId: "decimal-acc", amount: "12.5" } });
    // The library still decodes it for an instance that has the type, when the result is read.
    const record = await txoncePrisma(db.prisma).keys.inspect({ scope: "decimal", key: "charged" });
    expect(String((record.result as { amount: unknown }).amount)).toBe("12.5");
    // One without it gets the record, and an error only when it reads the decoded result.
    const undecodable = await txoncePg(db.pool).keys.inspect({ scope: "decimal", key: "charged" });
    expect(undecodable).toMatchObject({ status: "completed", encodedResult: expect.stringContaining("12.5") });
    expect(() => undecodable.result).toThrow();
  });

  test.each([
    [["keys"], /missing subcommand: expected show, forget, purge/],
    [["keys", "drop", "--scope", "a"], /unknown subcommand "drop"/],
    [["keys", "show", "--key", "k"], /--scope is required/],
    [["keys", "forget", "--scope", "", "--key", "k"], /--scope is required/],
    [["keys", "forget", "--scope", "a"], /--key is required/],
    [["keys", "purge", "--scope", "a", "--key", "k", "--yes"], /leave --key out/],
    [["dead", "requeue"], /requeue needs --topic, --id, or --all/],
    [["dead", "requeue", "--all", "--topic", "t"], /leave out --topic and --id, or --all/],
    [["dead", "requeue", "--id", "42"], /not a message id/],
    [["dead", "list", "--limit", "0"], /--limit: expected a whole number/],
  ])("%j: exit 64 before touching anything", async (args, reason) => {
    await seedKeys(db.pool, { count: 2, expired: false, scope: "a" });
    const r = await run(args);
    expect(r.code).toBe(64);
    expect(r.stderr.split("\n")[0]).toMatch(reason);
    expect(await countKeys(db.pool)).toBe(2);
  });

  test("dead list and requeue (by topic, by id, --all)", async () => {
    await deadMessages(2, "orders");
    await deadMessages(1, "invoices");
    const listed = await run(["dead", "list", "--topic", "orders"]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^[0-9a-f-]{36} {2}orders key "k1" {2}died \S+ after 10 attempts: broker refused 1\n[0-9a-f-]{36} {2}orders key "k2" {2}died \S+ after 10 attempts: broker refused 2\n$/);
    const json = await run(["dead", "list", "--json"]);
    const lines = json.stdout.trim().split("\n").map((line) => JSON.parse(line) as { id: string; topic: string; payload: unknown });
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatchObject({ topic: "orders", payload: { n: 1, at: "2026-01-01T00:00:00.000Z" } });

    const byId = await run(["dead", "requeue", "--id", lines[0]!.id, "--json"]);
    expect(JSON.parse(byId.stdout)).toEqual({ requeued: 1 });
    const byTopic = await run(["dead", "requeue", "--topic", "invoices"]);
    expect(byTopic.stdout).toBe("txonce dead requeue: requeued 1 messages\n");
    const all = await run(["dead", "requeue", "--all"]);
    expect(all.stdout).toBe("txonce dead requeue: requeued 1 messages\n");
    expect((await run(["dead", "list"])).stdout).toBe("txonce dead list: no dead messages\n");
  });
});
