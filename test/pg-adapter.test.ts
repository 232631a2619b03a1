/**
 * What only txonce/pg has, beside the conformance suite (adapters.test.ts): the connection goes
 * back to the pool clean after a rollback, an unknown isolation level is refused, and a first
 * execution is as many round trips as a bare transaction.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { InvalidArgumentError } from "../src/index.js";
import { txonce } from "../src/adapters/pg.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
let pool: pg.Pool;
beforeAll(async () => {
  db = await createTestDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 12 });
  pool.on("error", () => {}); // idle connections terminated by the final DROP DATABASE ... WITH (FORCE)
  await pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 100)");
});
afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

const charges = async (amount: number) =>
  (await pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount])).rows[0].n as number;

const insertCharge = (client: pg.PoolClient, amount: number) =>
  client
    .query("INSERT INTO charges (account_id, amount) VALUES ('acc', $1) RETURNING id, amount, created_at", [amount])
    .then((r) => r.rows[0] as { id: number; amount: string; created_at: Date });

test("a throwing operation rolls back the key and its writes, and the connection goes back to the pool clean", async () => {
  const { withIdempotency } = txonce(new pg.Pool({ connectionString: db.url, max: 1 }).on("error", () => {}));
  const boom = new Error("boom");
  await expect(
    withIdempotency("pg-2", async (client) => {
      await insertCharge(client, 2.5);
      throw boom;
    }),
  ).rejects.toBe(boom);
  expect(await charges(2.5)).toBe(0);
  expect((await pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key = 'pg-2'")).rows[0].n).toBe(0);
  // The pool's one connection is reused: it is idle, not left in a failed transaction.
  await expect(withIdempotency("pg-2", async (client) => [client.getTransactionStatus?.(), await insertCharge(client, 2.5)])).resolves.toMatchObject(["T", { amount: "2.50" }]);
});

test("an unknown isolation level is refused before anything is written", async () => {
  await expect(
    txonce(pool).withIdempotency("pg-4", async () => 1, { transaction: { isolationLevel: "chaos" as never } }),
  ).rejects.toBeInstanceOf(InvalidArgumentError);
});

test("withIdempotencyIn under REPEATABLE READ: a record committed after the caller's snapshot fails the claim with 40001, and the caller's transaction is aborted", async () => {
  const t = txonce(pool);
  const key = "pg-joined-repeatable-read";
  const client = await pool.connect();
  try {
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    await client.query("SELECT 1"); // the snapshot is taken here
    await txonce(pool).withIdempotency(key, async () => "committed by another call");
    const error = await t.withIdempotencyIn(client, key, async () => "must not run").catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "40001" });
    // Aborted: its next statement is refused (getTransactionStatus() may not have seen the
    // ReadyForQuery that follows the error yet, so ask the server).
    await expect(client.query("SELECT 1")).rejects.toMatchObject({ code: "25P02" });
  } finally {
    await client.query("ROLLBACK");
    client.release();
  }
  // Retried as a whole, the caller's transaction replays the record.
  const retried = await pool.connect();
  try {
    await retried.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    await expect(t.withIdempotencyIn(retried, key, async () => "must not run")).resolves.toBe("committed by another call");
    await retried.query("COMMIT");
  } finally {
    retried.release();
  }
});

test("a first execution is three round trips, as a bare transaction: the claim goes with BEGIN, the save with COMMIT; a cold replay two, the poll with the ROLLBACK", async () => {
  const sent: string[] = [];
  class CountingClient extends pg.Client {
    override query(...args: any[]): any {
      const [config] = args as [string | { text: string }];
      sent.push(typeof config === "string" ? config : config.text);
      return (super.query as (...a: unknown[]) => unknown)(...args);
    }
  }
  const counted = new pg.Pool({ connectionString: db.url, max: 1, Client: CountingClient });
  counted.on("error", () => {});
  try {
    const t = txonce(counted);
    await t.withIdempotency("pg-round-trips", (client) => insertCharge(client, 7.25));
    expect(sent).toHaveLength(3);
    expect(sent[0]).toMatch(/^BEGIN;\s+INSERT INTO txonce_idempotency_keys/);
    expect(sent[1]).toMatch(/^INSERT INTO charges/);
    expect(sent[2]).toMatch(/UPDATE txonce_idempotency_keys[\s\S]*;\s+COMMIT$/);
    expect(await charges(7.25)).toBe(1);
    const { rows } = await pool.query("SELECT result FROM txonce_idempotency_keys WHERE key = 'pg-round-trips'");
    expect(rows[0].result).toContain("7.25");
    // Replayed by an instance that has not seen the key: the claim finds it taken, and the first
    // poll, which finds its record, goes with the ROLLBACK.
    sent.length = 0;
    const cold = await txonce(counted, { replayCache: false }).withIdempotencyOutcome("pg-round-trips", () => insertCharge({} as pg.PoolClient, 0));
    expect(cold).toMatchObject({ replayed: true, value: { amount: "7.25" } });
    expect(sent).toHaveLength(2);
    expect(sent[0]).toMatch(/^BEGIN;\s+INSERT INTO txonce_idempotency_keys/);
    expect(sent[1]).toMatch(/^ROLLBACK;\s+SELECT k.fingerprint/);
  } finally {
    await counted.end();
  }
});
