/**
 * The shipped schema: the migration SQL is what Prisma produces for prisma/txonce.prisma, the
 * exported constant is that SQL, and a Prisma 7 client generated from the models reads and
 * writes every column of the tables the SQL creates, side by side with the SDK.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, inject, test } from "vitest";
import { migrations, schemaSql } from "../src/index.js";
import { statementsFor } from "../src/sql/statements.js";
import { txonce } from "../src/adapters/prisma.js";
import { EMPTY_MIGRATION, migrationSqlFor } from "../scripts/prisma6/migration-sql.js";
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

test("the shipped migrations build exactly the models of prisma/txonce.prisma (Prisma's schema engine finds nothing to add)", async () => {
  const pending = await migrationSqlFor([join(root, "prisma", "txonce.prisma")], inject("postgres").serverUrl, {
    migrationsDir: join(root, "prisma", "migrations"),
  });
  expect(pending.trim()).toBe(EMPTY_MIGRATION);
  const shipped = await shippedMigrations();
  expect(shipped.map((m) => m.name)).toEqual(migrations.map((m) => m.name));
  // The first migration is still, byte for byte, what `prisma migrate dev` wrote for the first model.
  expect(shipped[0]!.sql).toMatch(/^-- CreateTable\nCREATE TABLE "txonce_idempotency_keys"/);
});

test("the check above fails when a migration drifts from the models", async () => {
  const drifted = await mkdtemp(join(tmpdir(), "txonce-drift-"));
  try {
    await cp(join(root, "prisma", "migrations"), drifted, { recursive: true });
    const first = join(drifted, migrations[0]!.name, "migration.sql");
    await writeFile(first, (await readFile(first, "utf8")).replace('"result" TEXT,', '"result" TEXT, "extra" INTEGER,'));
    const pending = await migrationSqlFor([join(root, "prisma", "txonce.prisma")], inject("postgres").serverUrl, {
      migrationsDir: drifted,
    });
    expect(pending).toContain('DROP COLUMN "extra"');
  } finally {
    await rm(drifted, { recursive: true, force: true });
  }
});

test("CALL txonce_cleanup() (for pg_cron) deletes expired keys and old published messages, and nothing else", async () => {
  await db.pool.query(`
    INSERT INTO txonce_idempotency_keys (scope, key, result, expires_at)
    SELECT 'proc', 'old-' || i, 'x', now() - interval '1 hour' FROM generate_series(1, 2500) i
    UNION ALL SELECT 'proc', 'live-' || i, 'x', now() + interval '1 hour' FROM generate_series(1, 10) i`);
  await db.pool.query(`
    INSERT INTO txonce_outbox_messages (id, topic, payload, published_at)
    SELECT gen_random_uuid(), 't', 'p', now() - interval '8 days' FROM generate_series(1, 30)
    UNION ALL SELECT gen_random_uuid(), 't', 'p', now() - interval '1 day' FROM generate_series(1, 5)
    UNION ALL SELECT gen_random_uuid(), 't', 'p', NULL FROM generate_series(1, 7)`);
  await db.pool.query("CALL txonce_cleanup(1000)");
  const { rows } = await db.pool.query(`SELECT
    (SELECT count(*)::int FROM txonce_idempotency_keys WHERE scope = 'proc') AS keys,
    (SELECT count(*)::int FROM txonce_outbox_messages) AS messages`);
  expect(rows[0]).toEqual({ keys: 10, messages: 12 });
});

test("CALL app.txonce_cleanup(schema_name => 'app') cleans the tables of schema app from a session whose search_path does not have it", async () => {
  const setup = await db.pool.connect();
  try {
    await setup.query("CREATE SCHEMA proc_app; SET search_path TO proc_app");
    await setup.query(schemaSql);
  } finally {
    await setup.query("RESET search_path");
    setup.release();
  }
  try {
    for (const table of ["proc_app.txonce_idempotency_keys", "txonce_idempotency_keys"]) {
      await db.pool.query(`INSERT INTO ${table} (scope, key, result, expires_at)
        SELECT 'proc-schema', 'old-' || i, 'x', now() - interval '1 hour' FROM generate_series(1, 1500) i`);
    }
    await db.pool.query(`INSERT INTO proc_app.txonce_outbox_messages (id, topic, payload, published_at)
      SELECT gen_random_uuid(), 't', 'p', now() - interval '8 days' FROM generate_series(1, 3)`);
    await db.pool.query("CALL proc_app.txonce_cleanup(1000, schema_name => 'proc_app')");
    const { rows } = await db.pool.query(`SELECT
      (SELECT count(*)::int FROM proc_app.txonce_idempotency_keys) AS app_keys,
      (SELECT count(*)::int FROM proc_app.txonce_outbox_messages) AS app_messages,
      (SELECT count(*)::int FROM txonce_idempotency_keys WHERE scope = 'proc-schema') AS public_keys`);
    expect(rows[0]).toEqual({ app_keys: 0, app_messages: 0, public_keys: 1500 });
    // Without schema_name, the names are found on the search_path, as before the parameter existed.
    await expect(db.pool.query("CALL proc_app.txonce_cleanup()")).resolves.toBeDefined();
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE scope = 'proc-schema'")).rows[0].n).toBe(0);
  } finally {
    await db.pool.query("DROP SCHEMA proc_app CASCADE");
  }
});

test("statementsFor(schema) qualifies every table name of every statement, names the schema in lock ids and the channel; none is unqualified as written", () => {
  const bare = /(?<![."])\btxonce_(idempotency_keys|outbox_messages)\b/g;
  const asWritten = statementsFor();
  const schema = "App$$1"; // case kept, and a `$` that must not act as a replacement pattern
  const qualified = statementsFor(schema);
  expect(statementsFor(schema)).toBe(qualified); // made once
  let statements = 0;
  for (const [name, text] of Object.entries(asWritten)) {
    if (typeof text !== "string" || name.endsWith("_TABLE") || name === "OUTBOX_CHANNEL") continue;
    const made = (qualified as unknown as Record<string, string>)[name]!;
    expect(made.match(bare), name).toBeNull();
    expect(made.split(`"${schema}".txonce_`).length - 1, name).toBe(text.match(bare)?.length ?? 0);
    expect(made, name).not.toContain("current_schema()");
    if (text.includes("pg_notify(")) expect(made, name).toContain(`pg_notify('txonce_outbox:${schema}'`);
    statements++;
  }
  expect(statements).toBeGreaterThan(15);
  expect(qualified.tryCleanupLock).toContain(`':' || '${schema}'`);
  expect(qualified.IDEMPOTENCY_TABLE).toBe("txonce_idempotency_keys"); // names in results stay plain
  expect(qualified.OUTBOX_CHANNEL).toBe(`txonce_outbox:${schema}`);
  expect(statementsFor("s".repeat(63)).OUTBOX_CHANNEL).toMatch(/^txonce_outbox:[0-9a-f]{40}$/); // within 63 bytes
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

test("a Prisma 7 client reads and writes every column of the outbox table", async () => {
  const data = {
    id: "0190d7f0-0000-7000-8000-000000000001",
    topic: "orders",
    key: "order-1",
    payload: '{"json":{"a":1}}',
    headers: { "x-trace": "abc" },
    availableAt: new Date("2030-01-01T00:00:00.000Z"),
    attempts: 2,
    leaseUntil: new Date("2030-01-01T00:01:00.000Z"),
    leaseToken: "0190d7f0-0000-7000-8000-0000000000ff",
    lastError: "broker down",
    publishedAt: new Date("2030-01-01T00:02:00.000Z"),
    deadAt: null,
    traceContext: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
  };
  const created = await db.prisma.txonceOutboxMessage.create({ data });
  expect(created).toEqual({ ...data, seq: expect.any(BigInt), createdAt: expect.any(Date) });
  const read = await db.prisma.txonceOutboxMessage.findUniqueOrThrow({ where: { id: data.id } });
  expect(read).toEqual(created);
  const minimal = await db.prisma.txonceOutboxMessage.create({ data: { id: "0190d7f0-0000-7000-8000-000000000002", topic: "t", payload: "p" } });
  expect(minimal).toMatchObject({ key: null, headers: null, attempts: 0, leaseUntil: null, publishedAt: null, deadAt: null, traceContext: null });
  expect(minimal.seq).toBeGreaterThan(created.seq);
  await db.prisma.txonceOutboxMessage.deleteMany({ where: { id: { in: [data.id, minimal.id] } } });
});

test("what the SDK stores reads back through the Prisma model, and the model's rows are honoured by the SDK", async () => {
  const { withIdempotencyOutcome } = txonce(db.prisma);
  const outcome = await withIdempotencyOutcome("sdk-key", async () => ({ total: 3n }), { scope: "sdk", retention: "1h" });
  const row = await db.prisma.txonceIdempotencyKey.findUniqueOrThrow({ where: { scope_key: { scope: "sdk", key: "sdk-key" } } });
  expect(row.createdAt).toEqual(outcome.firstSeenAt);
  expect(row.expiresAt).toEqual(outcome.expiresAt);
  expect(row.expiresAt.getTime() - row.createdAt.getTime()).toBe(3600_000);
  expect(row.fingerprint).toBeNull();

  // Expire it through Prisma: the SDK then treats the key as new (in a process that has not kept
  // the record in memory: a copy there expires by the clock, not by this change).
  await db.prisma.txonceIdempotencyKey.update({
    where: { scope_key: { scope: "sdk", key: "sdk-key" } },
    data: { expiresAt: new Date(Date.now() - 60_000) },
  });
  const again = await txonce(db.prisma).withIdempotencyOutcome("sdk-key", async () => ({ total: 4n }), { scope: "sdk" });
  expect(again).toMatchObject({ replayed: false, value: { total: 4n } });
});
