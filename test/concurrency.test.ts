/**
 * Concurrent calls with one key through Prisma, beside the conformance suite (adapters.test.ts
 * runs 20 callers on one key, a first caller rolling back with waiters, lockTimeout and the
 * isolation levels for every adapter): the operation runs exactly once, the others get its result
 * (`replayed`), and nobody holds a database connection while waiting. Calls in one process
 * (one txonce instance) share the first one's attempt; calls in other processes (here: other
 * instances with pools of their own, and child processes) find the key taken, release their
 * connection and poll outside any transaction.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { IdempotencyKeyReusedError } from "../src/index.js";
import { txonce } from "../src/adapters/prisma.js";
import { PrismaClient } from "../generated/prisma/client.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
/** Four clients with their own pools, like four replicas of a service. */
let replicas: PrismaClient[];

beforeAll(async () => {
  db = await createTestDatabase();
  replicas = Array.from({ length: 4 }, () => db.newPrisma({ max: 8 }));
  await db.prisma.account.create({ data: { id: "acc", balance: 0 } });
});
afterAll(async () => {
  await db?.drop();
});

async function countCharges(amount: number) {
  const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount]);
  return rows[0].n as number;
}

/**
 * Sessions of this database, other than the asking one, whose transaction has been open for more
 * than `longMs` (a call holding a key; the claims that find a key taken and the polls of waiting
 * calls last a few milliseconds), and sessions waiting on a lock a duplicate would wait on: a key's
 * advisory lock, or its row (a transaction id or tuple lock). Not the relation extension locks
 * that concurrent inserts into the business table can wait on for a moment under load.
 */
async function sessions(longMs: number) {
  const { rows } = await db.pool.query(
    `SELECT count(*) FILTER (WHERE now() - xact_start > $1 * interval '1 millisecond')::int AS long_transactions,
            count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event IN ('advisory', 'transactionid', 'tuple'))::int AS waiting_on_locks,
            coalesce(string_agg(wait_event || ': ' || left(query, 80), ' | ') FILTER (WHERE wait_event_type = 'Lock'), '') AS lock_waits
     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
    [longMs],
  );
  return rows[0] as { long_transactions: number; waiting_on_locks: number; lock_waits: string };
}

/** Samples `sessions(longMs)` every 20 ms until `done` settles; returns the highest counts seen. */
async function watchSessions(done: Promise<unknown>, longMs: number) {
  const peak = { long_transactions: 0, waiting_on_locks: 0, samples: 0, lockWaitsSeen: [] as string[] };
  let finished = false;
  void done.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    const now = await sessions(longMs);
    peak.long_transactions = Math.max(peak.long_transactions, now.long_transactions);
    peak.waiting_on_locks = Math.max(peak.waiting_on_locks, now.waiting_on_locks);
    peak.samples++;
    if (now.lock_waits) peak.lockWaitsSeen.push(now.lock_waits); // in the failure message, if any
    await sleep(20);
  }
  return peak;
}

describe("one key, many callers at once", () => {
  test("calls in one process share one attempt; the others get the value decoded from what was stored, not the first call's object", async () => {
    const { withIdempotencyOutcome } = txonce(replicas[0]!);
    let runs = 0;
    const outcomes = await Promise.all(
      Array.from({ length: 30 }, () =>
        withIdempotencyOutcome("shared-attempt", async () => {
          runs++;
          await sleep(200);
          return { at: new Date("2026-01-01T00:00:00Z"), n: 10n, tags: new Set(["a"]) };
        }),
      ),
    );
    expect(runs).toBe(1);
    const first = outcomes.find((o) => !o.replayed)!;
    const others = outcomes.filter((o) => o.replayed);
    expect(others).toHaveLength(29);
    for (const o of others) {
      expect(o.value).toStrictEqual(first.value);
      expect(o.value).not.toBe(first.value);
      expect(o).toMatchObject({ firstSeenAt: first.firstSeenAt, expiresAt: first.expiresAt });
    }
    expect(new Set(others.map((o) => o.value)).size).toBe(29);
  });

  test.each([
    ["in one process (the calls share its attempt)", () => txonce(replicas[0]!)],
    ["across 4 replicas (the calls poll)", (i: number) => txonce(replicas[i % replicas.length]!)],
  ])("when the first call rolls back with others waiting, exactly one of them runs the operation: %s", async (_label, instance) => {
    const amount = _label.startsWith("in one") ? 30.01 : 30.02;
    const key = `first-fails-${amount}`;
    const shared = txonce(replicas[0]!);
    const runs: number[] = [];
    const calls = Array.from({ length: 10 }, (_, i) =>
      (_label.startsWith("in one") ? shared : instance(i)).withIdempotencyOutcome(key, async (tx) => {
        runs.push(i);
        const charge = await tx.charge.create({ data: { accountId: "acc", amount } });
        if (runs.length === 1) {
          await sleep(400); // everyone else is waiting by now
          throw new Error("first attempt fails");
        }
        return charge;
      }),
    );
    const settled = await Promise.allSettled(calls);
    const rejected = settled.filter((s) => s.status === "rejected");
    const fulfilled = settled.filter((s) => s.status === "fulfilled").map((s) => s.value);
    expect(rejected).toHaveLength(1);
    expect((rejected[0] as PromiseRejectedResult).reason.message).toBe("first attempt fails");
    expect(runs).toHaveLength(2);
    expect(fulfilled).toHaveLength(9);
    expect(fulfilled.filter((o) => !o.replayed)).toHaveLength(1);
    for (const o of fulfilled) expect(o.value).toStrictEqual(fulfilled[0]!.value);
    expect(await countCharges(amount)).toBe(1);
  });

  test.each([
    ["in the same process", 0],
    ["in another process", 1],
  ])("a waiter with a different fingerprint is refused once the first commits: %s", async (label, replica) => {
    const key = `mismatch-while-running-${label}`;
    const first = txonce(replicas[0]!);
    const second = replica === 0 ? first : txonce(replicas[1]!);
    const running = first.withIdempotency(
      key,
      async () => {
        await sleep(300);
        return "a";
      },
      { fingerprint: { a: 1 } },
    );
    await sleep(100);
    const refused = second.withIdempotency(key, async () => "b", { fingerprint: { a: 2 } });
    await expect(running).resolves.toBe("a");
    const error = await refused.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IdempotencyKeyReusedError);
    expect((error as IdempotencyKeyReusedError).record).toMatchObject({ key, scope: "" });
  });
});

test("a storm of 120 callers on 3 keys through one client beside other calls: nobody else fails, one execution per key, no waiter holds a connection", async () => {
  const pool = new pg.Pool({ connectionString: db.url, max: 8 });
  pool.on("error", () => {});
  const client = new PrismaClient({ adapter: new PrismaPg(pool) });
  try {
    // Two instances on the same client: the callers of each share one attempt per key, and the
    // second instance's attempt finds the key taken by the first's and polls.
    const instances = [txonce(client, { lockTimeout: "5s" }), txonce(client, { lockTimeout: "5s" })];
    const hotKeys = ["storm-a", "storm-b", "storm-c"];
    const runs = new Map<string, number>();
    let stormOver = false;
    const storm = Promise.all(
      hotKeys.flatMap((key, k) =>
        Array.from({ length: 40 }, (_, c) =>
          instances[c % 2]!.withIdempotencyOutcome(key, async (tx) => {
            runs.set(key, (runs.get(key) ?? 0) + 1);
            const charge = await tx.charge.create({ data: { accountId: "acc", amount: 4000 + k } });
            await sleep(1500);
            return charge;
          }),
        ),
      ),
    ).finally(() => (stormOver = true));
    // Other calls on the same client meanwhile: first executions of fresh keys, with a short
    // maxWait, so that a starved pool would show as failures (P2028).
    const other = txonce(client, { transaction: { maxWait: 1000 } });
    const others = { ok: 0, failed: [] as unknown[] };
    const traffic = Promise.all(
      Array.from({ length: 2 }, async (_, w) => {
        for (let i = 0; !stormOver; i++) {
          try {
            await other.withIdempotency(`other-${w}-${i}`, (tx) => tx.charge.create({ data: { accountId: "acc", amount: 4100 } }));
            others.ok++;
          } catch (error) {
            others.failed.push(error);
          }
        }
      }),
    );
    const peak = await watchSessions(storm, 700);
    const outcomes = await storm;
    await traffic;

    expect(others.failed).toEqual([]);
    expect(others.ok).toBeGreaterThan(10);
    // The 3 attempts that hold their keys are the only long transactions, nobody waits on a lock:
    // the 117 other callers wait without a connection (if they held one, the 8 would all be
    // taken for 1.5 s and the other calls would fail with P2028 after their 1 s maxWait).
    expect(peak).toMatchObject({ long_transactions: hotKeys.length, waiting_on_locks: 0 });
    expect([...runs.entries()].sort()).toEqual(hotKeys.map((key) => [key, 1]));
    for (const k of hotKeys.keys()) {
      const forKey = outcomes.slice(k * 40, k * 40 + 40);
      expect(forKey.filter((o) => !o.replayed)).toHaveLength(1);
      for (const o of forKey) expect(o.value).toStrictEqual(forKey.find((x) => !x.replayed)!.value);
      expect(await countCharges(4000 + k)).toBe(1);
    }
  } finally {
    await client.$disconnect();
    await pool.end().catch(() => {});
  }
});

test("callers in two processes on the same key (txonce/prisma and txonce/pg): one runs, the other replays its result", async () => {
  const key = `two-processes-${Date.now()}`;
  const run = (adapter: string, label: string) =>
    new Promise<{ value: { chargeId: number; by: string }; replayed: boolean }>((resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "idempotent-call.ts")], {
        env: { ...process.env, DATABASE_URL: db.url, ADAPTER: adapter, KEY: key, LABEL: label, HOLD_MS: "800" },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.on("error", reject);
      child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop()!)) : reject(new Error(`exit ${code}: ${err}`))));
    });
  const [a, b] = await Promise.all([run("prisma", "A"), run("pg", "B")]);
  expect([a.replayed, b.replayed].sort()).toEqual([false, true]);
  expect(a.value).toStrictEqual(b.value);
  expect(await countCharges(77.77)).toBe(1);
}, 30_000);

test("200 keys x 5 callers: one operation and one business row per key", async () => {
  const keys = Array.from({ length: 200 }, (_, i) => `bulk-${i}`);
  const runs = new Map<string, number>();
  const calls = keys.flatMap((key, k) =>
    Array.from({ length: 5 }, (_, c) =>
      txonce(replicas[(k + c) % replicas.length]!, { lockTimeout: "4s", transaction: { timeout: 10_000, maxWait: 10_000 } })
        .withIdempotencyOutcome(key, async (tx) => {
          runs.set(key, (runs.get(key) ?? 0) + 1);
          return tx.charge.create({ data: { accountId: "acc", amount: 5000 + k } });
        }),
    ),
  );
  const outcomes = await Promise.all(calls);
  expect([...runs.values()].every((n) => n === 1)).toBe(true);
  expect(runs.size).toBe(200);
  expect(outcomes.filter((o) => !o.replayed)).toHaveLength(200);
  const { rows } = await db.pool.query(
    "SELECT count(*)::int AS charges, count(DISTINCT amount)::int AS distinct_amounts FROM charges WHERE amount >= 5000 AND amount < 5200",
  );
  expect(rows[0]).toEqual({ charges: 200, distinct_amounts: 200 });
  for (let k = 0; k < 200; k++) {
    const forKey = outcomes.slice(k * 5, k * 5 + 5);
    for (const o of forKey) expect(o.value).toStrictEqual(forKey.find((x) => !x.replayed)!.value);
  }
});
