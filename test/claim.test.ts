/**
 * The claim and the save as statements: what they lock and read, beyond what the semantics suites
 * (idempotency, concurrency, pg-adapter) check. On a real PostgreSQL.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { txonce } from "../src/adapters/prisma.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { startFaultProxy } from "./support/fault-proxy.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 8 });
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await db?.drop();
});

const serial = { n: 0 };
const newKey = (label: string) => `${label}-${++serial.n}-${Math.random().toString(36).slice(2)}`;

test("under Serializable, first executions of neighbouring keys do not fail each other", async () => {
  // Three calls interleaved so that, had a save read the key index (by scope and key), the second
  // would be the pivot of a dangerous structure and fail with 40001 serialization_failure: the
  // first saves, and holds its COMMIT while the second claims (inserting into the index page the
  // first's save read) and saves, and holds its COMMIT while the third claims and commits. The
  // save finds its row by ctid instead (a TID scan): no txonce statement of a first execution
  // reads the key index, so the three commit. (Before, 16 callers at a time on neighbouring keys
  // saw such failures at random: docs/benchmarks.md.)
  const proxy = await startFaultProxy(db.url);
  const pool = new pg.Pool({ connectionString: proxy.url, max: 4 });
  pool.on("error", () => {});
  try {
    const { withIdempotency } = txoncePg(pool, { transaction: { isolationLevel: "serializable" } });
    const call = (n: number) => withIdempotency(`neighbour-${n}`, async () => `value ${n}`);
    const heldWhile = (work: () => Promise<unknown>) => ({
      hook: async () => {
        await work().catch(() => {});
      },
    });
    let second: Promise<string> | undefined;
    let third: Promise<string> | undefined;
    void proxy.arm("COMMIT", heldWhile(async () => {
      void proxy.arm("COMMIT", heldWhile(() => (third = call(3))));
      await (second = call(2)).catch(() => {});
    }));
    const first = call(1);
    await expect(first).resolves.toBe("value 1");
    await expect(second).resolves.toBe("value 2");
    await expect(third).resolves.toBe("value 3");
  } finally {
    await pool.end();
    await proxy.close();
  }
});

test("an operation that changes its own key row: the result is still stored, and replayed", async () => {
  // The row is no longer at the claim's ctid when the result is saved; the save falls back to
  // (scope, key).
  const key = newKey("moved");
  const t = txonce(db.prisma);
  const first = await t.withIdempotencyOutcome(key, async (tx) => {
    await tx.$executeRawUnsafe("UPDATE txonce_idempotency_keys SET fingerprint = fingerprint WHERE key = $1", key);
    return "stored anyway";
  });
  expect(first).toMatchObject({ value: "stored anyway", replayed: false });
  const { rows } = await db.pool.query("SELECT result FROM txonce_idempotency_keys WHERE key = $1", [key]);
  expect(rows).toHaveLength(1);
  expect(rows[0].result).toContain("stored anyway");
  await expect(txonce(db.prisma).withIdempotencyOutcome(key, async () => "must not run")).resolves.toMatchObject({
    value: "stored anyway",
    replayed: true,
  });
});
