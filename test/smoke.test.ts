import { afterAll, beforeAll, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
beforeAll(async () => { db = await createTestDatabase(); });
afterAll(async () => { await db?.drop(); });

test("smoke", async () => {
  const { withIdempotencyOutcome } = txonce(db.prisma);
  await db.prisma.account.create({ data: { id: "a1", balance: 100 } });
  const r1 = await withIdempotencyOutcome("k1", async (tx) => {
    await tx.account.update({ where: { id: "a1" }, data: { balance: { decrement: 10 } } });
    return tx.charge.create({ data: { accountId: "a1", amount: 10 } });
  });
  const r2 = await withIdempotencyOutcome("k1", async () => { throw new Error("should not run"); });
  console.log(r1, r2);
  expect(r2.value).toEqual(r1.value);
  const rows = await db.prisma.$queryRawUnsafe("select * from txonce_idempotency_keys");
  console.log(rows);
  try { await db.prisma.$queryRawUnsafe("select * from nope"); } catch (e: any) { console.log(Object.keys(e), e.code, e.meta, e.cause); }
  try { await db.prisma.$transaction(async (tx) => { await tx.$queryRawUnsafe("SET LOCAL lock_timeout = '10ms'"); await tx.$queryRawUnsafe("lock table accounts in access exclusive mode"); }); } catch (e: any) { console.log(e.constructor.name, e.code, JSON.stringify(e.meta)); }
});
