/**
 * txonce/pg with `preparedStatements: true`: txonce's own statements are sent as named statements
 * (parsed once per connection, as `pg_prepared_statements` shows), the operation's are not, and
 * the semantics stay those of the default (first call, replay in another process, a waiter that
 * polls, an expired key replaced, a rollback).
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { txonce } from "../src/adapters/pg.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
const pools: pg.Pool[] = [];
/** A pool of its own; with `max: 1` every statement goes through one session. */
const newPool = (max: number) => {
  const pool = new pg.Pool({ connectionString: db.url, max });
  pool.on("error", () => {});
  pools.push(pool);
  return pool;
};
beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end()));
  await db?.drop();
});

const insertCharge = async (client: pg.PoolClient, amount: number) =>
  (await client.query("INSERT INTO charges (account_id, amount) VALUES ('acc', $1) RETURNING id", [amount])).rows[0].id as number;
const preparedIn = async (pool: pg.Pool) =>
  (await pool.query<{ name: string; statement: string }>("SELECT name, statement FROM pg_prepared_statements ORDER BY name")).rows;

test("txonce's statements are prepared once per connection; the operation's are not; off by default", async () => {
  const pool = newPool(1);
  const t = txonce(pool, { preparedStatements: true });
  const first = await t.withIdempotencyOutcome("prepared-1", (client) => insertCharge(client, 501));
  await t.withIdempotency("prepared-2", (client) => insertCharge(client, 502));
  // A first execution prepares nothing: the claim goes with BEGIN and the save with COMMIT, each
  // pair one simple-protocol query (which cannot be prepared), and the operation's are its own.
  expect(await preparedIn(pool)).toEqual([]);
  // A process that has not seen the key replays it: its first poll goes with the ROLLBACK (one
  // simple-protocol query too), so nothing is prepared either.
  const elsewherePool = newPool(1);
  const elsewhere = txonce(elsewherePool, { preparedStatements: true, replayCache: false });
  await expect(elsewhere.withIdempotencyOutcome("prepared-1", async () => -1)).resolves.toMatchObject({
    value: first.value,
    replayed: true,
  });
  expect(await preparedIn(elsewherePool)).toEqual([]);

  const plain = newPool(1);
  await txonce(plain).withIdempotency("unprepared", (client) => insertCharge(client, 503));
  expect(await preparedIn(plain)).toEqual([]);
});

test("a waiter in another process polls with its prepared poll and replays; a rollback leaves nothing", async () => {
  const first = txonce(newPool(2), { preparedStatements: true });
  const secondPool = newPool(1);
  const second = txonce(secondPool, { preparedStatements: true });
  const running = first.withIdempotency("prepared-wait", async (client) => {
    await sleep(300);
    return insertCharge(client, 504);
  });
  await sleep(50);
  const waited = await second.withIdempotencyOutcome("prepared-wait", async () => -1);
  expect(waited).toMatchObject({ value: await running, replayed: true });
  // The polls after the first (which went with the claim's ROLLBACK) are prepared.
  const prepared = await preparedIn(secondPool);
  expect(prepared.length).toBeGreaterThanOrEqual(1);
  for (const p of prepared) expect(p.name).toMatch(/^txonce_[0-9a-f]{20}$/);
  expect(prepared.some((p) => p.statement.includes("pg_try_advisory_xact_lock") && p.statement.includes("LEFT JOIN"))).toBe(true);

  await expect(first.withIdempotency("prepared-fails", async () => Promise.reject(new Error("nope")))).rejects.toThrow("nope");
  expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key = 'prepared-fails'")).rows[0].n).toBe(0);
});

test("an expired key is replaced through the prepared statements too", async () => {
  const t = () => txonce(newPool(1), { preparedStatements: true, replayCache: false });
  await t().withIdempotency("prepared-expired", async () => "old");
  await db.pool.query("UPDATE txonce_idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'prepared-expired'");
  await expect(t().withIdempotencyOutcome("prepared-expired", async () => "new")).resolves.toMatchObject({ value: "new", replayed: false });
  await expect(t().withIdempotency("prepared-expired", async () => "newer")).resolves.toBe("new");
});
