/**
 * The conformance suite: the semantics every adapter must keep, run against each row of
 * test/support/adapters.ts (Prisma, the Prisma client extension, node-postgres, Kysely, Drizzle
 * on node-postgres and on postgres.js, Knex, TypeORM, postgres.js) on a real PostgreSQL. First
 * call, replay, rollback, concurrent callers, a first caller that rolls back with others waiting,
 * fingerprints, scopes, expiry, typed replay, bad input, isolation levels, the outbox, cleanup,
 * and joining a transaction the caller opened. What only one adapter has is tested beside it
 * (idempotency.test.ts, concurrency.test.ts for Prisma; pg-adapter.test.ts ...).
 *
 * Each "instance" (`subject.txonce()`) stands for a process: its own replay cache and its own
 * in-process sharing of attempts; `others` are clients with pools of their own.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import pg from "pg";
import {
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  SchemaNotInstalledError,
  schemaSql,
  type OutboxMessage,
  type Txonce,
} from "../src/index.js";
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { txonce as txoncePrisma } from "../src/adapters/prisma.js";
import { sqlStateOf } from "../src/sqlstate.js";
import { adapterRows, pgPool, type Subject } from "./support/adapters.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { seedKeys } from "./support/seed.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 1 });
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await db?.drop();
});

let amountSeq = 0;
/** A charge amount no other case uses, so that counting charges of an amount counts one case's. */
const newAmount = () => 100 + ++amountSeq;
const charges = async (amount: number) =>
  (await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount])).rows[0].n as number;
const keyRows = async (scope: string, key: string) =>
  (await db.pool.query("SELECT result, created_at, expires_at FROM txonce_idempotency_keys WHERE scope = $1 AND key = $2", [scope, key])).rows;

/**
 * Sessions of the test database, other than the asking one, whose transaction has been open for
 * more than `longMs`, and sessions waiting on a lock: sampled every 20 ms until `done` settles.
 */
async function watchSessions(done: Promise<unknown>, longMs: number) {
  const peak = { long_transactions: 0, waiting_on_locks: 0, samples: 0 };
  let finished = false;
  void done.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    const { rows } = await db.pool.query(
      `SELECT count(*) FILTER (WHERE now() - xact_start > $1 * interval '1 millisecond')::int AS long_transactions,
              count(*) FILTER (WHERE wait_event_type = 'Lock')::int AS waiting_on_locks
       FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
      [longMs],
    );
    peak.long_transactions = Math.max(peak.long_transactions, rows[0].long_transactions);
    peak.waiting_on_locks = Math.max(peak.waiting_on_locks, rows[0].waiting_on_locks);
    peak.samples++;
    await sleep(20);
  }
  return peak;
}

describe.each(adapterRows)("$name", (row) => {
  let subject: Subject;
  /** Two more clients with pools of their own: other processes. */
  let others: Subject[];
  let scope: string;
  let keySeq = 0;
  const newKey = (label: string) => `${label}-${++keySeq}`;
  const instances = (count: number, options?: object): Txonce<any, any>[] =>
    Array.from({ length: count }, (_, i) => [subject, ...others][i % (1 + others.length)]!.txonce(options));

  beforeAll(async () => {
    subject = await row.open(db.url, 4);
    others = await Promise.all([row.open(db.url, 3), row.open(db.url, 3)]);
    scope = row.name;
  });
  afterAll(async () => {
    await Promise.all([subject, ...(others ?? [])].map((s) => s?.close()));
  });

  test("first call: the key is claimed in the operation's transaction, stored with its result, invisible to others until commit", async () => {
    const key = newKey("first");
    const amount = newAmount();
    let inside: unknown[] = [];
    let outside: unknown[] = [];
    const outcome = await subject.txonce().withIdempotencyOutcome(
      key,
      async (tx) => {
        inside = await subject.select(tx, `SELECT result FROM txonce_idempotency_keys WHERE scope = '${scope}' AND key = '${key}'`);
        outside = await keyRows(scope, key);
        return subject.charge(tx, amount);
      },
      { scope },
    );
    expect(inside).toEqual([{ result: null }]);
    expect(outside).toEqual([]);
    expect(outcome).toMatchObject({ replayed: false, scope, key });
    expect(outcome.value.id).toEqual(expect.any(Number));
    const [stored] = await keyRows(scope, key);
    expect(stored.result).toContain(String(outcome.value.id));
    expect(outcome.firstSeenAt).toEqual(stored.created_at);
    expect(await charges(amount)).toBe(1);
  });

  test("replay: the same instance (from memory) and another one (from the database) return the stored value without running the operation", async () => {
    const key = newKey("replay");
    const amount = newAmount();
    const [here, elsewhere] = [subject.txonce(), others[0]!.txonce()];
    let runs = 0;
    const call = (t: Txonce<any, any>) =>
      t.withIdempotencyOutcome(key, async (tx) => (runs++, subject.charge(tx, amount)), { scope });
    const first = await call(here);
    const again = await call(here);
    const cold = await call(elsewhere);
    expect(runs).toBe(1);
    for (const replay of [again, cold]) {
      expect(replay).toMatchObject({ replayed: true, firstSeenAt: first.firstSeenAt, expiresAt: first.expiresAt });
      expect(replay.value).toStrictEqual(first.value);
    }
    expect(await charges(amount)).toBe(1);
  });

  test("typed replay: dates, bigints, maps, sets, bytes and undefined come back as they were", async () => {
    const key = newKey("typed");
    const original = {
      at: new Date("2026-11-27T12:34:56.789Z"),
      big: 12345678901234567890n,
      tags: new Set(["a"]),
      map: new Map<unknown, unknown>([[1, { nested: [new Date(0)] }]]),
      bytes: new Uint8Array([0, 255]),
      missing: undefined,
    };
    await subject.txonce().withIdempotency(key, async () => original, { scope });
    const replayed = await others[0]!.txonce().withIdempotency(key, async () => "must not run", { scope });
    expect(replayed).toStrictEqual(original);
  });

  test("an operation that throws rolls back the key with its writes; the error is the caller's and a retry runs again", async () => {
    const t = subject.txonce();
    const key = newKey("throws");
    const amount = newAmount();
    const boom = new Error("card declined");
    await expect(
      t.withIdempotency(key, async (tx) => {
        await subject.charge(tx, amount);
        throw boom;
      }, { scope }),
    ).rejects.toBe(boom);
    expect(await keyRows(scope, key)).toEqual([]);
    expect(await charges(amount)).toBe(0);
    await expect(t.withIdempotencyOutcome(key, (tx) => subject.charge(tx, amount), { scope })).resolves.toMatchObject({ replayed: false });
    expect(await charges(amount)).toBe(1);
  });

  test("a result the server refuses to store (a CHECK on the key table): the server's error, nothing stored, the connection back in the pool clean", async () => {
    // Where the adapter sends the save with the COMMIT (txonce/pg, txonceAdapter), the failed
    // save must not leave the connection inside an aborted transaction: the pool has one.
    const lone = await row.open(db.url, 1);
    const key = newKey("refused");
    const amount = newAmount();
    const constraint = `refuse_${key.replace(/\W/g, "_")}`;
    await db.pool.query(`ALTER TABLE txonce_idempotency_keys ADD CONSTRAINT ${constraint} CHECK (key <> '${key}' OR result IS NULL)`);
    try {
      const t = lone.txonce();
      const error = await t.withIdempotency(key, async (tx) => (await lone.charge(tx, amount), "refused"), { scope }).catch((e: unknown) => e);
      expect(sqlStateOf(error)).toBe("23514");
      expect(await charges(amount)).toBe(0);
      expect(await keyRows(scope, key)).toEqual([]);
      await expect(t.withIdempotency(newKey("after-refused"), async () => "fine", { scope })).resolves.toBe("fine");
    } finally {
      await db.pool.query(`ALTER TABLE txonce_idempotency_keys DROP CONSTRAINT ${constraint}`);
      await lone.close();
    }
  });

  test("20 concurrent callers on one key across 3 clients: the operation runs once, all get its result, no waiter holds a transaction", async () => {
    const key = newKey("twenty");
    const amount = newAmount();
    let runs = 0;
    const ts = instances(3);
    const calls = Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        ts[i % 3]!.withIdempotencyOutcome(key, async (tx) => {
          runs++;
          const charge = await subject.charge(tx, amount);
          await sleep(600); // holds the key while the others pile up
          return charge;
        }, { scope }),
      ),
    );
    // Long: open for 300 ms or more. The waiters' claims (BEGIN, claim, ROLLBACK) last a few ms.
    const peak = await watchSessions(calls, 300);
    const outcomes = await calls;
    expect(runs).toBe(1);
    expect(peak.samples).toBeGreaterThan(3);
    expect(peak).toMatchObject({ long_transactions: 1, waiting_on_locks: 0 });
    const first = outcomes.find((o) => !o.replayed)!;
    expect(outcomes.filter((o) => o.replayed)).toHaveLength(19);
    for (const o of outcomes) expect(o.value).toStrictEqual(first.value);
    expect(await charges(amount)).toBe(1);
  });

  test("the first caller rolls back with others waiting: exactly one of them runs the operation, the others get its result", async () => {
    const key = newKey("first-fails");
    const amount = newAmount();
    const ts = instances(3);
    const runs: number[] = [];
    const settled = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        ts[i % 3]!.withIdempotencyOutcome(key, async (tx) => {
          runs.push(i);
          const charge = await subject.charge(tx, amount);
          if (runs.length === 1) {
            await sleep(300); // everyone else is waiting by now
            throw new Error("first attempt fails");
          }
          return charge;
        }, { scope }),
      ),
    );
    const rejected = settled.filter((s) => s.status === "rejected");
    const fulfilled = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    expect(rejected.map((r) => (r as PromiseRejectedResult).reason.message)).toEqual(["first attempt fails"]);
    expect(runs).toHaveLength(2);
    expect(fulfilled.filter((o) => !o.replayed)).toHaveLength(1);
    for (const o of fulfilled) expect(o.value).toStrictEqual(fulfilled[0]!.value);
    expect(await charges(amount)).toBe(1);
  });

  test("a waiter whose lockTimeout ends first gets IdempotencyKeyInUseError, then replays", async () => {
    const key = newKey("slow");
    const [holder, waiter] = [subject.txonce(), others[0]!.txonce()];
    const slow = holder.withIdempotency(key, async () => (await sleep(700), "slow result"), { scope });
    await sleep(150);
    const error = await waiter.withIdempotency(key, async () => "must not run", { scope, lockTimeout: 150 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IdempotencyKeyInUseError);
    expect(error).toMatchObject({ code: "TXONCE_KEY_IN_USE", key, scope });
    await expect(slow).resolves.toBe("slow result");
    await expect(waiter.withIdempotency(key, async () => "must not run", { scope })).resolves.toBe("slow result");
  });

  test("fingerprint: the same request in another key order replays, a different one is refused with the stored record", async () => {
    const t = subject.txonce();
    const key = newKey("fingerprint");
    let runs = 0;
    const call = (fingerprint: unknown) => t.withIdempotency(key, async () => ++runs, { scope, fingerprint });
    await expect(call({ amount: 10, currency: "EUR" })).resolves.toBe(1);
    await expect(call({ currency: "EUR", amount: 10 })).resolves.toBe(1);
    const error = await call({ amount: 11, currency: "EUR" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IdempotencyKeyReusedError);
    expect((error as IdempotencyKeyReusedError).record).toMatchObject({ scope, key, fingerprint: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(runs).toBe(1);
  });

  test("scope: the same key in two scopes is two records, and neither sees the other's result", async () => {
    const t = subject.txonce();
    const key = newKey("scoped");
    await expect(t.withIdempotency(key, async () => "alice's", { scope: `${scope}:alice` })).resolves.toBe("alice's");
    await expect(t.withIdempotency(key, async () => "bob's", { scope: `${scope}:bob` })).resolves.toBe("bob's");
    await expect(others[0]!.txonce().withIdempotency(key, async () => "x", { scope: `${scope}:alice` })).resolves.toBe("alice's");
  });

  test("expiry: expires_at is the database's now() plus the retention; an expired record counts as absent and is replaced", async () => {
    const key = newKey("expiry");
    const first = await subject.txonce({ retention: "90s" }).withIdempotencyOutcome(key, async () => "old", { scope });
    expect(first.expiresAt.getTime() - first.firstSeenAt.getTime()).toBe(90_000);
    await db.pool.query("UPDATE txonce_idempotency_keys SET expires_at = now() - interval '1 second' WHERE scope = $1 AND key = $2", [scope, key]);
    const second = await others[0]!.txonce().withIdempotencyOutcome(key, async () => "new", { scope });
    expect(second).toMatchObject({ value: "new", replayed: false });
    const rows = await keyRows(scope, key);
    expect(rows).toHaveLength(1);
    expect(rows[0].result).toContain("new");
  });

  test("isolation levels: per instance and per call, in the library's own spelling; waiters under them still replay", async () => {
    const level = async (tx: unknown) =>
      String((await subject.select(tx, "SHOW transaction_isolation"))[0]!.transaction_isolation);
    const t = subject.txonce({ transaction: row.isolation.repeatableRead });
    await expect(t.withIdempotency(newKey("iso"), level, { scope })).resolves.toBe("repeatable read");
    await expect(t.withIdempotency(newKey("iso"), level, { scope, transaction: row.isolation.serializable })).resolves.toBe("serializable");
    await expect(subject.txonce().withIdempotency(newKey("iso"), level, { scope })).resolves.toBe("read committed");
    for (const isolation of [row.isolation.repeatableRead, row.isolation.serializable]) {
      const key = newKey("iso-waiters");
      let runs = 0;
      const outcomes = await Promise.all(
        instances(3, { transaction: isolation }).map((i) => i.withIdempotencyOutcome(key, async () => (runs++, await sleep(150), "once"), { scope })),
      );
      expect(runs).toBe(1);
      expect(outcomes.map((o) => o.value)).toEqual(["once", "once", "once"]);
    }
  });

  describe("bad input is refused with InvalidArgumentError before anything is written", () => {
    test("something that is not a client of its kind, or one of its transactions", async () => {
      const tx = await subject.transaction(async (tx) => tx);
      for (const stranger of [{}, null, "postgres://localhost", tx]) {
        let error: unknown;
        try {
          row.txonceOf(stranger);
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(InvalidArgumentError);
        expect((error as InvalidArgumentError).reason).toMatch(/^expected an? /);
      }
    });

    test("a key, scope, option or isolation level that is not acceptable", async () => {
      const t = subject.txonce();
      const before = (await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys")).rows[0].n;
      for (const [argument, call] of [
        ["key", () => t.withIdempotency("", async () => 1)],
        ["key", () => t.withIdempotency("k".repeat(256), async () => 1)],
        ["scope", () => t.withIdempotency("k", async () => 1, { scope: 7 as never })],
        ["retention", () => t.withIdempotency("k", async () => 1, { retention: "two days" })],
        ["operation", () => t.withIdempotency("k", "run" as never)],
        ["transaction.isolationLevel", () => t.withIdempotency("k", async () => 1, { transaction: { isolationLevel: "chaos" } })],
      ] as const) {
        await expect(call()).rejects.toMatchObject({ argument, code: "TXONCE_INVALID_ARGUMENT" });
      }
      expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys")).rows[0].n).toBe(before);
    });

    test("the root client, or a transaction that already ended, where a transaction is expected", async () => {
      const t = subject.txonce();
      const topic = `${scope}.refused`;
      let ended: unknown;
      await t.withIdempotency(newKey("ended"), async (tx) => void (ended = tx), { scope });
      for (const handle of [subject.client, ended]) {
        await expect(t.outbox.enqueue(handle, { topic, payload: 1 })).rejects.toMatchObject({ argument: "tx", code: "TXONCE_INVALID_ARGUMENT" });
        await expect(t.withIdempotencyIn(handle, newKey("refused"), async () => 1, { scope })).rejects.toBeInstanceOf(InvalidArgumentError);
      }
      expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE topic = $1", [topic])).rows[0].n).toBe(0);
    });
  });

  test.runIf(row.tellsEndedTransactions)("a transaction the application opened that has ended is refused too", async () => {
    const t = subject.txonce();
    const topic = `${scope}.refused-own`;
    const ended = await subject.transaction(async (tx) => tx);
    await expect(t.outbox.enqueue(ended, { topic, payload: 1 })).rejects.toMatchObject({ argument: "tx", reason: expect.stringMatching(/ended|not in a transaction/) });
    await expect(t.withIdempotencyIn(ended, newKey("refused-own"), async () => 1, { scope })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE topic = $1", [topic])).rows[0].n).toBe(0);
  });

  test.each([false, true])(
    "outbox (deleteOnPublish: %s): a message enqueued in the business transaction is published after commit and marked published (or deleted); a rolled-back one never",
    async (deleteOnPublish) => {
      const t = subject.txonce({ outbox: { deleteOnPublish } });
      const topic = `${scope}.created.${deleteOnPublish}`;
      const received: OutboxMessage[] = [];
      const errors: unknown[] = [];
      const relay = t.outbox.relay({
        publisher: async (m) => void (m.topic === topic && received.push(m)),
        pollInterval: 20,
        logger: false,
        onError: (error) => errors.push(error),
      });
      const rowsOf = async () =>
        (await db.pool.query("SELECT published_at, lease_token FROM txonce_outbox_messages WHERE topic = $1", [topic])).rows;
      await relay.start();
      try {
        const charge = await t.withIdempotency(newKey("outbox"), async (tx) => {
          const created = await subject.charge(tx, newAmount());
          await t.outbox.enqueue(tx, { topic, key: "acc", payload: { chargeId: created.id, at: new Date(0) } });
          return created;
        }, { scope });
        await subject.transaction((tx) => t.outbox.enqueue(tx, { topic, payload: "in the library's own transaction" }));
        await expect(
          subject.transaction(async (tx) => {
            await t.outbox.enqueue(tx, { topic, payload: "rolled back" });
            throw new Error("abort");
          }),
        ).rejects.toThrow("abort");
        // Published, then recorded: marked published (or deleted), the lease let go.
        const recorded = async () => {
          const rows = await rowsOf();
          return deleteOnPublish ? rows.length === 0 : rows.length === 2 && rows.every((r) => r.published_at !== null && r.lease_token === null);
        };
        const deadline = Date.now() + 10_000;
        while ((received.length < 2 || !(await recorded())) && errors.length === 0 && Date.now() < deadline) await sleep(20);
        await sleep(60);
        expect(errors).toEqual([]);
        // Messages without a common key are published in any order.
        expect(received.map((m) => m.payload)).toHaveLength(2);
        expect(received.map((m) => m.payload)).toEqual(
          expect.arrayContaining([{ chargeId: charge.id, at: new Date(0) }, "in the library's own transaction"]),
        );
        const rows = await rowsOf();
        if (deleteOnPublish) expect(rows).toEqual([]);
        else expect(rows).toEqual([
          { published_at: expect.any(Date), lease_token: null },
          { published_at: expect.any(Date), lease_token: null },
        ]);
        await expect(t.outbox.backlog()).resolves.toMatchObject({ pending: 0, dead: 0 });
      } finally {
        await relay.stop();
      }
    },
  );

  test("cleanup deletes expired records and keeps live ones", async () => {
    const prefix = `${scope}-cleanup`;
    await seedKeys(db.pool, { count: 30, expired: true, scope, prefix: `${prefix}-old` });
    await seedKeys(db.pool, { count: 5, expired: false, scope, prefix: `${prefix}-live` });
    const result = await subject.txonce().cleanup({ batchSize: 10 });
    expect(result.finished).toBe(true);
    expect(result.deleted).toBeGreaterThanOrEqual(30);
    const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key LIKE $1", [`${prefix}-%`]);
    expect(rows[0].n).toBe(5);
  });

  test("operator actions: inspect decodes the record, forget waits for a running first call and the key runs again, doctor reads", async () => {
    const key = newKey("forget");
    const t = subject.txonce();
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let started!: () => void;
    const holding = new Promise<void>((resolve) => (started = resolve));
    let runs = 0;
    const running = t.withIdempotency(key, async () => {
      started();
      await released;
      return { run: ++runs, at: new Date("2026-01-01T00:00:00Z") };
    }, { scope });
    await holding;
    expect((await t.keys.inspect({ scope, key })).status).toBe("running");
    const forgetting = t.keys.forget({ scope, key });
    await sleep(50);
    release();
    await running;
    expect(await forgetting).toBe(true);
    expect(await keyRows(scope, key)).toEqual([]);
    expect(await t.withIdempotency(key, async () => ({ run: ++runs, at: new Date("2026-01-01T00:00:00Z") }), { scope })).toEqual({ run: 2, at: new Date("2026-01-01T00:00:00Z") });
    expect(await t.keys.inspect({ scope, key })).toMatchObject({ status: "completed", result: { run: 2, at: new Date("2026-01-01T00:00:00Z") } });
    expect((await t.doctor({ skip: ["autovacuum", "xmin-horizon", "tables"] })).checks.find((c) => c.name === "schema")?.verdict).toBe("ok");
  });

  describe("withIdempotencyIn: joining a transaction the caller opened", () => {
    test("the key is claimed in it, and the caller's commit stores it with the caller's other writes", async () => {
      const t = subject.txonce();
      const key = newKey("join");
      const [amount, later] = [newAmount(), newAmount()];
      let visibleBeforeCommit: unknown[] = [];
      const value = await subject.transaction(async (tx) => {
        const charge = await t.withIdempotencyIn(tx, key, (inner) => {
          expect(inner).toBe(tx);
          return subject.charge(inner, amount);
        }, { scope });
        await subject.charge(tx, later); // more work after the idempotent part
        visibleBeforeCommit = await keyRows(scope, key);
        return charge;
      });
      expect(visibleBeforeCommit).toEqual([]);
      expect(await keyRows(scope, key)).toHaveLength(1);
      expect([await charges(amount), await charges(later)]).toEqual([1, 1]);
      // A later call, joined or not, replays it.
      await expect(others[0]!.txonce().withIdempotency(key, async () => "must not run", { scope })).resolves.toStrictEqual(value);
      await expect(subject.transaction((tx) => others[1]!.txonce().withIdempotencyIn(tx, key, async () => "must not run", { scope }))).resolves.toStrictEqual(value);
    });

    test("the caller's rollback removes the key: a retry runs afresh", async () => {
      const t = subject.txonce();
      const key = newKey("join-rollback");
      const amount = newAmount();
      await expect(
        subject.transaction(async (tx) => {
          await t.withIdempotencyIn(tx, key, (inner) => subject.charge(inner, amount), { scope });
          throw new Error("the caller's later step failed");
        }),
      ).rejects.toThrow("the caller's later step failed");
      expect(await keyRows(scope, key)).toEqual([]);
      expect(await charges(amount)).toBe(0);
      await expect(t.withIdempotencyOutcome(key, (tx) => subject.charge(tx, amount), { scope })).resolves.toMatchObject({ replayed: false });
    });

    test("a concurrent duplicate waits for the caller's transaction to end, then replays", async () => {
      const key = newKey("join-wait");
      const amount = newAmount();
      const events: string[] = [];
      const caller = subject.transaction(async (tx) => {
        const charge = await subject.txonce().withIdempotencyIn(tx, key, (inner) => subject.charge(inner, amount), { scope });
        await sleep(400); // the caller goes on after the idempotent part; the key stays claimed
        events.push("the caller's work ended, COMMIT follows");
        return charge;
      });
      await sleep(100);
      const duplicate = await others[0]!.txonce().withIdempotencyOutcome(key, async () => "must not run", { scope, lockTimeout: "3s" });
      events.push("the duplicate returned");
      const value = await caller;
      expect(events).toEqual(["the caller's work ended, COMMIT follows", "the duplicate returned"]);
      expect(duplicate).toMatchObject({ replayed: true });
      expect(duplicate.value).toStrictEqual(value);
      expect(await charges(amount)).toBe(1);
    });
  });
});

/**
 * The schema dimension: txonce's tables in schema `app` (and `app2`), which no connection has on
 * its search_path, while `public` has the business tables but none of txonce's. Each row is told
 * the schema the way its users would: Prisma through PrismaPg's `schema`, TypeORM through the
 * DataSource's `schema` (txonce takes both as its default), the others with the `schema` option.
 */
describe("tables in another schema", () => {
  let sdb: TestDatabase;
  /** Pools whose search_path is the schema: for the assertions and the seeding. */
  const pools: Record<string, pg.Pool> = {};
  beforeAll(async () => {
    sdb = await createTestDatabase({ prismaPoolSize: 1 });
    const appTables = await readFile(join(import.meta.dirname, "../examples/demo/app-tables.sql"), "utf8");
    const client = await sdb.pool.connect();
    try {
      await client.query("DROP TABLE txonce_idempotency_keys, txonce_outbox_messages, txonce_cleanup_runs; DROP PROCEDURE txonce_cleanup");
      for (const schema of ["app", "app2"]) {
        await client.query(`CREATE SCHEMA ${schema}; SET search_path TO ${schema}`);
        await client.query(schemaSql);
        await client.query(appTables);
        await client.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0); RESET search_path");
        pools[schema] = new pg.Pool({ connectionString: sdb.url, max: 2, options: `-c search_path=${schema}` });
      }
    } finally {
      client.release();
    }
    await sdb.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
  });
  afterAll(async () => {
    await Promise.all(Object.values(pools).map((p) => p.end()));
    await sdb?.drop();
  });

  const keyRowsIn = async (schema: string, scope: string, key: string) =>
    (await pools[schema]!.query("SELECT result FROM txonce_idempotency_keys WHERE scope = $1 AND key = $2", [scope, key])).rows;

  test("public has the business tables and none of txonce's", async () => {
    const { rows } = await sdb.pool.query(
      "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE 'txonce%' OR table_name = 'charges' ORDER BY 1, 2",
    );
    expect(rows.map((r) => `${r.table_schema}.${r.table_name}`)).toEqual([
      "app.charges", "app.txonce_cleanup_runs", "app.txonce_idempotency_keys", "app.txonce_outbox_messages",
      "app2.charges", "app2.txonce_cleanup_runs", "app2.txonce_idempotency_keys", "app2.txonce_outbox_messages",
      "public.charges",
    ]);
  });

  describe.each(adapterRows)("$name", (row) => {
    let subject: Subject;
    let other: Subject;
    const scope = `schema:${row.name}`;
    let keySeq = 0;
    const newKey = (label: string) => `${label}-${++keySeq}`;
    beforeAll(async () => {
      subject = await row.open(sdb.url, 3, "app");
      other = await row.open(sdb.url, 2, "app");
    });
    afterAll(async () => {
      await Promise.all([subject, other].map((s) => s?.close()));
    });

    test("first call and replay: the key is stored in app's table, replayed by another client from there", async () => {
      const key = newKey("first");
      let runs = 0;
      const first = await subject.txonce().withIdempotencyOutcome(key, async (tx) => (runs++, subject.charge(tx, 7)), { scope });
      expect(first).toMatchObject({ replayed: false });
      expect(await keyRowsIn("app", scope, key)).toEqual([{ result: expect.stringContaining(String(first.value.id)) }]);
      const again = await other.txonce().withIdempotencyOutcome(key, async () => (runs++, "must not run"), { scope });
      expect(again).toMatchObject({ replayed: true });
      expect(again.value).toStrictEqual(first.value);
      expect(runs).toBe(1);
    });

    test("two schemas in one database: the same key is a key of each, and neither waits for the other's claim", async () => {
      const key = newKey("two");
      const [inApp, inApp2] = [subject.txonce(), other.txonce({ schema: "app2" })];
      const slow = inApp.withIdempotency(key, async () => (await sleep(500), "app's"), { scope });
      await sleep(100); // app's claim holds the key's lock now
      await expect(inApp2.withIdempotency(key, async () => "app2's", { scope, lockTimeout: 200 })).resolves.toBe("app2's");
      await expect(slow).resolves.toBe("app's");
      expect(await keyRowsIn("app", scope, key)).toEqual([{ result: expect.stringContaining("app's") }]);
      expect(await keyRowsIn("app2", scope, key)).toEqual([{ result: expect.stringContaining("app2's") }]);
    });

    test("outbox: enqueued in app's table, the relay of app is woken by app's channel, publishes and marks them", async () => {
      const t = subject.txonce();
      const topic = `${scope}.created`;
      const received: OutboxMessage[] = [];
      const errors: unknown[] = [];
      // A poll interval longer than the test: only a notification on app's channel wakes the relay.
      const relay = t.outbox.relay({
        publisher: async (m) => void (m.topic === topic && received.push(m)),
        pollInterval: "1m",
        listen: { connectionString: sdb.url },
        logger: false,
        onError: (error) => errors.push(error),
      });
      // What a relay of the tables in public (no schema) listens to: app's commits do not wake it.
      const publicChannel = new pg.Client({ connectionString: sdb.url });
      const heardInPublic: string[] = [];
      publicChannel.on("notification", (n) => heardInPublic.push(n.channel));
      await publicChannel.connect();
      await publicChannel.query("LISTEN txonce_outbox");
      await relay.start();
      try {
        await sleep(50); // the first claim found nothing; the relay waits for a notification
        await t.withIdempotency(newKey("outbox"), async (tx) => t.outbox.enqueue(tx, { topic, key: "k", payload: 1 }), { scope });
        await subject.transaction((tx) => t.outbox.enqueue(tx, { topic, payload: 2 }));
        const marked = async () =>
          (await pools.app!.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE topic = $1 AND published_at IS NOT NULL", [topic])).rows[0].n;
        const deadline = Date.now() + 10_000;
        while ((received.length < 2 || (await marked()) < 2) && errors.length === 0 && Date.now() < deadline) await sleep(20);
        expect(errors).toEqual([]);
        expect(received.map((m) => m.payload).sort()).toEqual([1, 2]);
        expect(await marked()).toBe(2);
        await expect(t.outbox.backlog()).resolves.toMatchObject({ pending: 0, dead: 0 });
        expect(heardInPublic).toEqual([]);
      } finally {
        await relay.stop();
        await publicChannel.end();
      }
    });

    test("cleanup deletes app's expired keys and leaves app2's", async () => {
      const prefix = `${scope}-cleanup`;
      for (const schema of ["app", "app2"]) await seedKeys(pools[schema]!, { count: 12, expired: true, scope, prefix });
      const dry = await subject.txonce().cleanup({ dryRun: true });
      expect(dry.tables.txonce_idempotency_keys!.deleted).toBeGreaterThanOrEqual(12);
      const result = await subject.txonce().cleanup({ batchSize: 5 });
      expect(result).toMatchObject({ finished: true });
      const count = async (schema: string) =>
        (await pools[schema]!.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key LIKE $1", [`${prefix}-%`])).rows[0].n;
      expect([await count("app"), await count("app2")]).toEqual([0, 12]);
      await pools.app2!.query("DELETE FROM txonce_idempotency_keys WHERE key LIKE $1", [`${prefix}-%`]);
    });

    test("operator actions and the doctor read app's tables: inspect, forget, the cleanup run recorded in app", async () => {
      const t = subject.txonce();
      const key = newKey("operate");
      await t.withIdempotency(key, async () => "in app", { scope });
      await expect(t.keys.inspect({ scope, key })).resolves.toMatchObject({ status: "completed", result: "in app" });
      await expect(other.txonce({ schema: "app2" }).keys.inspect({ scope, key })).resolves.toMatchObject({ status: "absent" });
      await expect(t.keys.forget({ scope, key })).resolves.toBe(true);
      expect(await keyRowsIn("app", scope, key)).toEqual([]);
      const runs = async (schema: string) => (await pools[schema]!.query("SELECT count(*)::int AS n FROM txonce_cleanup_runs")).rows[0].n as number;
      const before = [await runs("app"), await runs("app2")];
      await t.cleanup();
      expect([await runs("app"), await runs("app2")]).toEqual([before[0]! + 1, before[1]]);
      const report = await t.doctor({ skip: ["autovacuum", "xmin-horizon"] });
      expect(report.checks.find((c) => c.name === "schema")).toMatchObject({ verdict: "ok" });
      expect(report.checks.find((c) => c.name === "tables")?.summary).toMatch(/txonce_idempotency_keys .*txonce_outbox_messages /);
      expect(report.checks.find((c) => c.name === "cleanup")?.detail).toMatchObject({ lastRun: expect.objectContaining({ runner: expect.any(String) }) });
    });

    test("the schema option wins over the client's; tables not there: SchemaNotInstalledError names the schema and where they are", async () => {
      const t = subject.txonce({ schema: "nowhere" });
      const checks: [string, () => Promise<unknown>][] = [
        ["withIdempotency", () => t.withIdempotency(newKey("missing"), async () => "must not run", { scope })],
        ["enqueue", () => subject.transaction((tx) => t.outbox.enqueue(tx, { topic: `${scope}.missing`, payload: 1 }))],
        ["cleanup", () => t.cleanup()],
      ];
      for (const [what, call] of checks) {
        const error = await call().catch((e: unknown) => e);
        expect(error, what).toBeInstanceOf(SchemaNotInstalledError);
        expect(error, what).toMatchObject({ code: "TXONCE_SCHEMA_NOT_INSTALLED", schema: "nowhere", foundIn: ["app", "app2"] });
        expect((error as Error).message, what).toMatch(/^The txonce tables are not in schema "nowhere" of this database \(found in schema "app", "app2": pass \{ schema: "app" \}\)/);
      }
    });
  });

  test("Prisma: the ?schema= of PrismaPg's connection string is the default too; PrismaPg's schema option wins over it", async () => {
    const url = new URL(sdb.url);
    url.searchParams.set("schema", "app2");
    const ignore = () => {};
    const fromUrl = new PrismaClient({ adapter: new PrismaPg({ connectionString: url.toString(), max: 1 }, { onPoolError: ignore }) });
    const fromOption = new PrismaClient({ adapter: new PrismaPg({ connectionString: url.toString(), max: 1 }, { schema: "app", onPoolError: ignore }) });
    try {
      await txoncePrisma(fromUrl).withIdempotency("prisma-url", async () => "in app2", { scope: "url" });
      await txoncePrisma(fromOption).withIdempotency("prisma-url", async () => "in app", { scope: "url" });
      expect(await keyRowsIn("app2", "url", "prisma-url")).toEqual([{ result: expect.stringContaining("in app2") }]);
      expect(await keyRowsIn("app", "url", "prisma-url")).toEqual([{ result: expect.stringContaining("in app") }]);
    } finally {
      await Promise.all([fromUrl.$disconnect(), fromOption.$disconnect()]);
    }
  });

  test("without a schema, the error says the tables are not on the search_path and names the schemas that have them", async () => {
    const pool = pgPool(sdb.url, 2);
    try {
      const error = await txoncePg(pool).withIdempotency("k", async () => 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SchemaNotInstalledError);
      expect(error).toMatchObject({ schema: "public", foundIn: ["app", "app2"] });
      expect((error as Error).message).toMatch(/^The txonce tables are not in schema "public" \(the connection's search_path\) of this database \(found in schema "app", "app2": pass \{ schema: "app" \}\)/);
    } finally {
      await pool.end();
    }
  });

  test("a schema option that is not a plain identifier is refused before anything runs", () => {
    for (const schema of ["", "app; DROP TABLE charges", 'a"b', "1app", "x".repeat(64), 7]) {
      expect(() => txoncePg(pools.app!, { schema: schema as string }), String(schema)).toThrow(
        expect.objectContaining({ code: "TXONCE_INVALID_ARGUMENT", argument: "schema" }),
      );
    }
  });
});
