/**
 * Concurrent calls with one key, each on its own connection: the operation runs exactly once,
 * the others wait on the first transaction's row lock (no polling) and replay its result.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { IdempotencyKeyInUseError, sqlStateOf } from "../src/index.js";
import { txonce } from "../src/adapters/prisma.js";
import type { PrismaClient } from "../generated/prisma/client.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function countCharges(keyPrefix: string) {
  const { rows } = await db.pool.query(
    "SELECT count(*)::int AS n FROM charges c JOIN accounts a ON a.id = c.account_id WHERE a.id = 'acc' AND c.amount::text LIKE $1",
    [`${keyPrefix}%`],
  );
  return rows[0].n as number;
}

/** Sessions of this database that wait on a heavyweight lock (a row lock wait shows as one). */
async function sessionsWaitingOnLocks() {
  const { rows } = await db.pool.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
  );
  return rows[0].n as number;
}

describe("one key, many callers at once", () => {
  test("20 callers on separate connections: the operation runs once, everyone gets its result", async () => {
    const key = "twenty";
    let runs = 0;
    let waitersSeen = 0;
    const calls = Array.from({ length: 20 }, (_, i) =>
      txonce(replicas[i % replicas.length]!).withIdempotencyOutcome(
        key,
        async (tx) => {
          runs++;
          // Hold the key while the others pile up behind it.
          for (let t = 0; t < 40 && waitersSeen < 19; t++) {
            await sleep(25);
            waitersSeen = await sessionsWaitingOnLocks();
          }
          return tx.charge.create({ data: { accountId: "acc", amount: 20.01 } });
        },
        { scope: "concurrency", fingerprint: { amount: "20.01" } },
      ),
    );
    const outcomes = await Promise.all(calls);
    expect(runs).toBe(1);
    // The others were blocked on the first transaction's lock, not sleeping in a poll loop.
    expect(waitersSeen).toBe(19);
    expect(outcomes.filter((o) => !o.replayed)).toHaveLength(1);
    const first = outcomes.find((o) => !o.replayed)!;
    for (const o of outcomes) expect(o.value).toStrictEqual(first.value);
    expect(await countCharges("20.01")).toBe(1);
  });

  test("when the first caller rolls back, exactly one waiter runs the operation", async () => {
    const key = "first-fails";
    const runs: number[] = [];
    const calls = Array.from({ length: 10 }, (_, i) =>
      txonce(replicas[i % replicas.length]!).withIdempotencyOutcome(key, async (tx) => {
        runs.push(i);
        const charge = await tx.charge.create({ data: { accountId: "acc", amount: 30.01 } });
        if (runs.length === 1) {
          // Fail only after everyone else is waiting behind this transaction.
          for (let t = 0; t < 40 && (await sessionsWaitingOnLocks()) < 9; t++) await sleep(25);
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
    expect(await countCharges("30.01")).toBe(1);
  });

  test("the wait is bounded: past lockTimeout the caller gets IdempotencyKeyInUseError, then replays once the first commits", async () => {
    const key = "slow";
    const { withIdempotency } = txonce(replicas[0]!);
    const waiter = txonce(replicas[1]!, { lockTimeout: 200 });
    const slow = withIdempotency(key, async () => {
      await sleep(1500);
      return "slow result";
    });
    await sleep(200);
    const started = Date.now();
    const error = await waiter.withIdempotency(key, async () => "must not run").catch((e: unknown) => e);
    const waited = Date.now() - started;
    expect(error).toBeInstanceOf(IdempotencyKeyInUseError);
    const inUse = error as IdempotencyKeyInUseError;
    expect(inUse).toMatchObject({ code: "TXONCE_KEY_IN_USE", key, scope: "" });
    expect(sqlStateOf(inUse.cause)).toBe("55P03");
    expect(waited).toBeGreaterThanOrEqual(180);
    expect(waited).toBeLessThan(1200);
    await expect(slow).resolves.toBe("slow result");
    await expect(waiter.withIdempotency(key, async () => "must not run")).resolves.toBe("slow result");
  });

  test("a waiter with a different fingerprint is refused once the first commits", async () => {
    const key = "mismatch-while-running";
    const first = txonce(replicas[0]!).withIdempotency(
      key,
      async () => {
        await sleep(300);
        return "a";
      },
      { fingerprint: { a: 1 } },
    );
    await sleep(100);
    const second = txonce(replicas[1]!).withIdempotency(key, async () => "b", { fingerprint: { a: 2 } });
    await expect(first).resolves.toBe("a");
    await expect(second).rejects.toMatchObject({ code: "TXONCE_KEY_REUSED" });
  });
});

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

test.each(["RepeatableRead", "Serializable"] as const)(
  "under %s the waiters also replay (the row they wait for is newer than their snapshot)",
  async (isolationLevel) => {
    const key = `isolation-${isolationLevel}`;
    let runs = 0;
    const outcomes = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        txonce(replicas[i % replicas.length]!, { transaction: { isolationLevel } }).withIdempotencyOutcome(key, async () => {
          runs++;
          await sleep(200);
          return `ran under ${isolationLevel}`;
        }),
      ),
    );
    expect(runs).toBe(1);
    expect(outcomes.filter((o) => o.replayed)).toHaveLength(7);
    for (const o of outcomes) expect(o.value).toBe(`ran under ${isolationLevel}`);
  },
);
