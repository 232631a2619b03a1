/**
 * The same core over node-postgres (`txonce/pg`): the operation gets the pool client holding the
 * transaction; first call, replay, rollback, isolation level and concurrent callers.
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

test("first call, then replay", async () => {
  const { withIdempotencyOutcome } = txonce(pool);
  const first = await withIdempotencyOutcome("pg-1", (client) => insertCharge(client, 1.5));
  const second = await withIdempotencyOutcome<typeof first.value>("pg-1", async () => {
    throw new Error("must not run");
  });
  expect(first.replayed).toBe(false);
  expect(second).toMatchObject({ replayed: true, value: first.value });
  expect(second.value.created_at).toBeInstanceOf(Date);
  expect(await charges(1.5)).toBe(1);
});

test("a throwing operation rolls back the key and its writes, and the connection goes back clean", async () => {
  const { withIdempotency } = txonce(pool);
  const boom = new Error("boom");
  await expect(
    withIdempotency("pg-2", async (client) => {
      await insertCharge(client, 2.5);
      throw boom;
    }),
  ).rejects.toBe(boom);
  expect(await charges(2.5)).toBe(0);
  expect((await pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key = 'pg-2'")).rows[0].n).toBe(0);
  await expect(withIdempotency("pg-2", (client) => insertCharge(client, 2.5))).resolves.toMatchObject({ amount: "2.50" });
});

test("isolation level", async () => {
  const { withIdempotency } = txonce(pool, { transaction: { isolationLevel: "serializable" } });
  const level = await withIdempotency("pg-3", async (client) => (await client.query("SHOW transaction_isolation")).rows[0]);
  expect(level).toEqual({ transaction_isolation: "serializable" });
  await expect(
    txonce(pool).withIdempotency("pg-4", async () => 1, { transaction: { isolationLevel: "chaos" as never } }),
  ).rejects.toBeInstanceOf(InvalidArgumentError);
});

test("10 concurrent callers run the operation once", async () => {
  const { withIdempotencyOutcome } = txonce(pool);
  let runs = 0;
  const outcomes = await Promise.all(
    Array.from({ length: 10 }, () =>
      withIdempotencyOutcome("pg-5", async (client) => {
        runs++;
        await new Promise((r) => setTimeout(r, 100));
        return insertCharge(client, 5.5);
      }),
    ),
  );
  expect(runs).toBe(1);
  expect(outcomes.filter((o) => o.replayed)).toHaveLength(9);
  expect(await charges(5.5)).toBe(1);
});
