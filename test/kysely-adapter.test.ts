/**
 * What only txonce/kysely has, beside the conformance suite (adapters.test.ts): txonce's own
 * statements run without the instance's plugins, so a CamelCasePlugin (which renames result
 * columns) changes nothing for txonce while the operation's own queries keep it.
 */
import { CamelCasePlugin, Kysely, PostgresDialect, type Generated } from "kysely";
import { afterAll, beforeAll, expect, test } from "vitest";
import { txonce } from "../src/adapters/kysely.js";
import { pgPool } from "./support/adapters.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

interface Database {
  charges: { id: Generated<number>; accountId: string; amount: string; createdAt: Generated<Date> };
}

let db: TestDatabase;
let kysely: Kysely<Database>;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 1 });
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
  kysely = new Kysely<Database>({ dialect: new PostgresDialect({ pool: pgPool(db.url, 3) }), plugins: [new CamelCasePlugin()] });
});
afterAll(async () => {
  await kysely?.destroy();
  await db?.drop();
});

test("with CamelCasePlugin: first call, a replay from another instance and the outbox work; the operation's rows are camelCased", async () => {
  const key = "camel";
  const first = await txonce(kysely).withIdempotencyOutcome(key, (trx) =>
    trx.insertInto("charges").values({ accountId: "acc", amount: "5.00" }).returningAll().executeTakeFirstOrThrow(),
  );
  expect(first.value).toMatchObject({ accountId: "acc", amount: "5.00", createdAt: expect.any(Date) });
  const replay = await txonce(kysely).withIdempotencyOutcome(key, async () => {
    throw new Error("must not run");
  });
  expect(replay).toMatchObject({ replayed: true, firstSeenAt: first.firstSeenAt });
  expect(replay.value).toStrictEqual(first.value);
  await expect(txonce(kysely).outbox.backlog()).resolves.toMatchObject({ pending: 0 });
});
