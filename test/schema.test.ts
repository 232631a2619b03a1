/**
 * The shipped schema: the migration SQL is what Prisma produces for prisma/txonce.prisma, the
 * exported constant is that SQL, and a Prisma 7 client generated from the models reads and
 * writes every column of the tables the SQL creates, side by side with the SDK.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, expect, inject, test } from "vitest";
import { migrations, schemaSql } from "../src/index.js";
import { txonce } from "../src/adapters/prisma.js";
import { migrationSqlFor } from "../scripts/prisma6/migration-sql.js";
import { schemaModuleSource, shippedMigrations } from "../scripts/migrations.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

const root = join(import.meta.dirname, "..");
let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

test("the shipped migration is exactly what Prisma's schema engine produces for prisma/txonce.prisma", async () => {
  const produced = await migrationSqlFor([join(root, "prisma", "txonce.prisma")], inject("postgres").serverUrl);
  const shipped = await shippedMigrations();
  expect(shipped.map((m) => m.name)).toEqual(migrations.map((m) => m.name));
  expect(shipped.at(-1)!.sql).toBe(produced);
});

test("the exported schemaSql is the migration files, inlined", async () => {
  const shipped = await shippedMigrations();
  expect(await readFile(join(root, "src", "sql", "schema.ts"), "utf8")).toBe(schemaModuleSource(shipped));
  expect(schemaSql).toBe(shipped.map((m) => m.sql).join("\n"));
});

test("a Prisma 7 client generated from the models reads and writes every column", async () => {
  const expiresAt = new Date("2030-01-02T03:04:05.678Z");
  const created = await db.prisma.txonceIdempotencyKey.create({
    data: { scope: "s", key: "from-prisma", fingerprint: "f".repeat(64), result: '{"json":1}', expiresAt },
  });
  expect(created).toEqual({
    scope: "s",
    key: "from-prisma",
    fingerprint: "f".repeat(64),
    result: '{"json":1}',
    createdAt: expect.any(Date),
    expiresAt,
  });
  const defaults = await db.prisma.txonceIdempotencyKey.create({ data: { key: "defaults", expiresAt } });
  expect(defaults).toMatchObject({ scope: "", fingerprint: null, result: null });
  const updated = await db.prisma.txonceIdempotencyKey.update({
    where: { scope_key: { scope: "s", key: "from-prisma" } },
    data: { result: '{"json":2}' },
  });
  expect(updated.result).toBe('{"json":2}');
  const { rows } = await db.pool.query(
    "SELECT column_name FROM information_schema.columns WHERE table_name = 'txonce_idempotency_keys' ORDER BY ordinal_position",
  );
  expect(rows.map((r) => r.column_name)).toEqual(["scope", "key", "fingerprint", "result", "created_at", "expires_at"]);
});

test("what the SDK stores reads back through the Prisma model, and the model's rows are honoured by the SDK", async () => {
  const { withIdempotencyOutcome } = txonce(db.prisma);
  const outcome = await withIdempotencyOutcome("sdk-key", async () => ({ total: 3n }), { scope: "sdk", retention: "1h" });
  const row = await db.prisma.txonceIdempotencyKey.findUniqueOrThrow({ where: { scope_key: { scope: "sdk", key: "sdk-key" } } });
  expect(row.createdAt).toEqual(outcome.firstSeenAt);
  expect(row.expiresAt).toEqual(outcome.expiresAt);
  expect(row.expiresAt.getTime() - row.createdAt.getTime()).toBe(3600_000);
  expect(row.fingerprint).toBeNull();

  // Expire it through Prisma: the SDK then treats the key as new.
  await db.prisma.txonceIdempotencyKey.update({
    where: { scope_key: { scope: "sdk", key: "sdk-key" } },
    data: { expiresAt: new Date(Date.now() - 60_000) },
  });
  const again = await withIdempotencyOutcome("sdk-key", async () => ({ total: 4n }), { scope: "sdk" });
  expect(again).toMatchObject({ replayed: false, value: { total: 4n } });
});
