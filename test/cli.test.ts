/**
 * `txonce cleanup` as cron runs it: a child process, judged by its exit code and output.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, beforeEach, expect, inject, test } from "vitest";
import { schemaSql } from "../src/sql/schema.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { databaseUrl } from "./support/postgres-server.js";
import { countKeys, seedKeys } from "./support/seed.js";

let db: TestDatabase;
let emptyDatabaseUrl: string;
beforeAll(async () => {
  db = await createTestDatabase();
  // A database without txonce's tables.
  const { serverUrl, runId } = inject("postgres");
  const name = `txonce_empty_${runId}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  emptyDatabaseUrl = databaseUrl(serverUrl, name);
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query("TRUNCATE txonce_idempotency_keys");
});

const lastLine = (text: string) => text.trim().split("\n").at(-1);

/** Runs the command; `cwd` and `bareEnvironment` (only PATH and `env`, as cron gives) for cron's view. */
function txonceCli(args: string[], env: Record<string, string | undefined> = {}, { cwd, bareEnvironment = false }: { cwd?: string; bareEnvironment?: boolean } = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), join(import.meta.dirname, "..", "src", "cli", "main.ts"), ...args], {
      env: bareEnvironment ? { PATH: process.env.PATH, ...env } : { ...process.env, DATABASE_URL: undefined, ...env },
      cwd,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

test("cleanup deletes the expired records and prints a one-line summary", async () => {
  await seedKeys(db.pool, { count: 2_500, expired: true });
  await seedKeys(db.pool, { count: 10, expired: false, prefix: "live" });
  const r = await txonceCli(["cleanup", "--batch-size", "1000"], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^txonce cleanup: deleted 2,500 expired rows in 3 batches in \d+\.\ds \(finished\)\n$/);
  expect(r.stderr).toMatch(/^txonce cleanup: started at /); // plain log lines when not on a terminal
  expect(await countKeys(db.pool)).toBe(10);
});

test("one row, one batch: singular words", async () => {
  await seedKeys(db.pool, { count: 1, expired: true });
  const r = await txonceCli(["cleanup"], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^txonce cleanup: deleted 1 expired row in 1 batch in \d+\.\ds \(finished\)\n$/);
});

test("nothing to delete: 0 rows in 0 batches", async () => {
  const r = await txonceCli(["cleanup"], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^txonce cleanup: deleted 0 expired rows in 0 batches in \d+\.\ds \(finished\)\n$/);
});

test("DATABASE_URL from .env in the current folder, as cron runs it (a bare environment); the environment wins over .env", async () => {
  const dir = await mkdtemp(join(tmpdir(), "txonce-cli-env-"));
  try {
    await writeFile(join(dir, ".env"), `# written by prisma init, edited by the user\nDATABASE_URL="${db.url}"\n`);
    await seedKeys(db.pool, { count: 3, expired: true });
    const fromFile = await txonceCli(["cleanup"], {}, { cwd: dir, bareEnvironment: true });
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect(fromFile.stdout).toContain("deleted 3 expired rows");

    await writeFile(join(dir, ".env"), `DATABASE_URL=postgres://nobody@127.0.0.1:1/none\n`);
    await seedKeys(db.pool, { count: 2, expired: true });
    const fromEnvironment = await txonceCli(["cleanup"], { DATABASE_URL: db.url }, { cwd: dir, bareEnvironment: true });
    expect(fromEnvironment.code, fromEnvironment.stderr).toBe(0);
    expect(fromEnvironment.stdout).toContain("deleted 2 expired rows");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("Prisma's ?schema= picks the schema the tables are in (quoted: a name with a space and capitals)", async () => {
  const schema = "Billing App";
  await db.pool.query(`CREATE SCHEMA "${schema}"`);
  const client = await db.pool.connect();
  try {
    await client.query(`SET search_path TO "${schema}"`);
    await client.query(schemaSql);
    await client.query(
      `INSERT INTO txonce_idempotency_keys (key, expires_at) SELECT 'k' || i, now() - interval '1 day' FROM generate_series(1, 4) i`,
    );
    await client.query("RESET search_path");
  } finally {
    client.release();
  }
  await seedKeys(db.pool, { count: 7, expired: true }); // in public: not this run's business

  const url = new URL(db.url);
  url.searchParams.set("schema", schema);
  const r = await txonceCli(["cleanup", "--json"], { DATABASE_URL: url.toString() });
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(lastLine(r.stdout)!).tables.txonce_idempotency_keys.deleted).toBe(4);
  expect(await countKeys(db.pool)).toBe(7);

  url.searchParams.set("schema", "nowhere");
  const missing = await txonceCli(["cleanup"], { DATABASE_URL: url.toString() });
  expect(missing.code).toBe(1);
  expect(lastLine(missing.stderr)).toMatch(/The txonce tables are not in schema "nowhere" of this database \(found in schema .*"public".*: pass \{ schema: "[^"]+" \}\)/);
  await db.pool.query(`DROP SCHEMA "${schema}" CASCADE`);
});

test("--schema names the schema the tables are in (over the URL's), and a name that is not a plain identifier is a usage error", async () => {
  const schema = "cli_billing";
  await db.pool.query(`CREATE SCHEMA ${schema}`);
  const client = await db.pool.connect();
  try {
    await client.query(`SET search_path TO ${schema}`);
    await client.query(schemaSql);
    await client.query(
      `INSERT INTO txonce_idempotency_keys (key, expires_at) SELECT 'k' || i, now() - interval '1 day' FROM generate_series(1, 3) i`,
    );
    await client.query("RESET search_path");
  } finally {
    client.release();
  }
  await seedKeys(db.pool, { count: 5, expired: true }); // in public: not this run's business
  try {
    const url = new URL(db.url);
    url.searchParams.set("schema", "elsewhere");
    const r = await txonceCli(["cleanup", "--json", "--schema", schema], { DATABASE_URL: url.toString() });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(lastLine(r.stdout)!).tables.txonce_idempotency_keys.deleted).toBe(3);
    expect(await countKeys(db.pool)).toBe(5);
    const bad = await txonceCli(["cleanup", "--schema", "a b"], { DATABASE_URL: db.url });
    expect(bad.code).toBe(2);
    expect(bad.stderr.split("\n")[0]).toMatch(/--schema: expected a schema name/);
  } finally {
    await db.pool.query(`DROP SCHEMA ${schema} CASCADE`);
    await db.pool.query("TRUNCATE txonce_idempotency_keys");
  }
});

test("--version prints the package's version", async () => {
  const r = await txonceCli(["--version"]);
  expect(r.code).toBe(0);
  expect(r.stdout).toBe(`${JSON.parse(await readFile(join(import.meta.dirname, "..", "package.json"), "utf8")).version}\n`);
});

test("--database-url wins over DATABASE_URL", async () => {
  await seedKeys(db.pool, { count: 3, expired: true });
  const r = await txonceCli(["cleanup", "--database-url", db.url], { DATABASE_URL: "postgres://nobody@127.0.0.1:1/none" });
  expect(r.code, r.stderr).toBe(0);
  expect(await countKeys(db.pool)).toBe(0);
});

test("--dry-run counts and deletes nothing", async () => {
  await seedKeys(db.pool, { count: 42, expired: true });
  const r = await txonceCli(["cleanup", "--dry-run"], { DATABASE_URL: db.url });
  expect(r.code).toBe(0);
  expect(r.stdout).toBe("txonce cleanup (dry run): 42 expired rows would be deleted\n");
  expect(await countKeys(db.pool)).toBe(42);
});

test("--json prints one JSON object on the last line of stdout", async () => {
  await seedKeys(db.pool, { count: 150, expired: true });
  const r = await txonceCli(["cleanup", "--json", "--batch-size", "100", "--max-duration", "30s"], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  const lines = r.stdout.trim().split("\n");
  const summary = JSON.parse(lines.at(-1)!);
  expect(summary).toEqual({
    deleted: 150,
    batches: 2,
    durationMs: expect.any(Number),
    finished: true,
    dryRun: false,
    tables: {
      txonce_idempotency_keys: { deleted: 150, batches: 2, finished: true },
      txonce_outbox_messages: { deleted: 0, batches: 0, finished: true },
    },
  });
});

test("--outbox-retention sets how long published messages are kept", async () => {
  await db.pool.query(`INSERT INTO txonce_outbox_messages (id, topic, payload, published_at)
    SELECT gen_random_uuid(), 't', 'p', now() - interval '2 hours' FROM generate_series(1, 5)
    UNION ALL SELECT gen_random_uuid(), 't', 'p', now() - interval '10 minutes' FROM generate_series(1, 3)`);
  const r = await txonceCli(["cleanup", "--json", "--outbox-retention", "1h"], { DATABASE_URL: db.url });
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(lastLine(r.stdout)!).tables.txonce_outbox_messages).toEqual({ deleted: 5, batches: 1, finished: true });
  const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages");
  expect(rows[0].n).toBe(3);
  await db.pool.query("TRUNCATE txonce_outbox_messages");
});

test("--help prints the options and exits 0", async () => {
  const r = await txonceCli(["cleanup", "--help"]);
  expect(r.code).toBe(0);
  for (const flag of ["--database-url", "--batch-size", "--max-duration", "--outbox-retention", "--dry-run", "--json", "--help"]) {
    expect(r.stdout).toContain(flag);
  }
});

test.each([
  [["cleanup", "--bogus"], /Unknown option '--bogus'/],
  [["cleanup", "--batch-size", "lots"], /--batch-size: expected a whole number/],
  [["cleanup", "--batch-size", "0"], /--batch-size: expected an integer from 1/],
  [["cleanup", "--max-duration", "soonish"], /--max-duration: "soonish" is not a duration/],
  [["cleanup", "--max-duration", "48"], /--max-duration: "48" has no unit: write "48ms", "48s", "48m" or "48h"/],
  [["cleanup", "--outbox-retention", "a while"], /--outbox-retention: "a while" is not a duration/],
  [["cleanup", "--database-url", "mysql://root@localhost/db"], /must start with postgres:\/\//],
  [["cleanup", "--database-url", "not a url"], /not a URL/],
  [["cleanup"], /no database: pass --database-url or set DATABASE_URL \(in the environment or in .env\)/],
  [["cleanup", "--database-url", "prisma+postgres://localhost:51213/?api_key=x"], /must start with postgres:\/\/ or postgresql:\/\/, not prisma\+postgres:\/\//],
  [["vacuum"], /unknown command "vacuum"/],
])("%j: exit 2 with the reason", async (args, reason) => {
  const r = await txonceCli(args);
  expect(r.code).toBe(2);
  expect(r.stderr.split("\n")[0]).toMatch(reason);
  expect(r.stdout).toBe("");
});

test("an unreachable database: exit 1 with a one-line reason", async () => {
  const r = await txonceCli(["cleanup", "--database-url", "postgres://postgres@127.0.0.1:1/postgres"]);
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^txonce cleanup: .*ECONNREFUSED/);
  expect(r.stderr).not.toMatch(/^\s+at /m); // a reason, not a stack trace
});

test("a database without the tables: exit 1 saying how to install them", async () => {
  const r = await txonceCli(["cleanup"], { DATABASE_URL: emptyDatabaseUrl });
  expect(r.code).toBe(1);
  expect(lastLine(r.stderr)).toMatch(/^txonce cleanup: The txonce tables are not in schema "public" \(the connection's search_path\) of this database\. With Prisma: `npx txonce init`/);
  expect(r.stderr).not.toMatch(/^\s+at /m);
});
