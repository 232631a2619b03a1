/**
 * `doctor()` and `txonce doctor` against states the tests create on a real PostgreSQL: a missing
 * migration, a bloated table, an expired lease, dead letters, a long-open transaction, cleanup
 * that never ran and one that just did. The CI service runs with autovacuum off: the tests read
 * the server's setting instead of assuming it.
 */
import pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { pgDatabase, txonce } from "../src/adapters/pg.js";
import { doctor, type DoctorCheck, type DoctorCheckName, type DoctorReport } from "../src/doctor/doctor.js";
import { expectedSchema } from "../src/doctor/expected-schema.js";
import { InvalidArgumentError } from "../src/errors.js";
import { migrations } from "../src/sql/schema.js";
import { txonceCli } from "./support/cli.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { seedKeys } from "./support/seed.js";

let db: TestDatabase;
let serverAutovacuum: boolean;
beforeAll(async () => {
  db = await createTestDatabase();
  serverAutovacuum = (await db.pool.query("SHOW autovacuum")).rows[0].autovacuum === "on";
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query("TRUNCATE txonce_idempotency_keys, txonce_outbox_messages, txonce_cleanup_runs");
});

const check = (report: DoctorReport, name: DoctorCheckName): DoctorCheck => {
  const found = report.checks.find((c) => c.name === name);
  if (!found) throw new Error(`no ${name} check in ${JSON.stringify(report)}`);
  return found;
};

const insertMessage = (columns: string, values: string) =>
  db.pool.query(`INSERT INTO txonce_outbox_messages (id, topic, payload${columns}) VALUES (gen_random_uuid(), 'orders', '{"json":1}'${values})`);

test("a freshly migrated database: every check ok (autovacuum as the server has it)", async () => {
  const report = await doctor(pgDatabase(db.pool));
  expect(report.checks.map((c) => c.name)).toEqual(["schema", "cleanup", "tables", "autovacuum", "xmin-horizon", "outbox", "leases"]);
  for (const c of report.checks) {
    if (c.name === "autovacuum") continue;
    expect([c.name, c.verdict, c.action]).toEqual([c.name, "ok", null]);
  }
  expect(check(report, "schema").summary).toBe(`txonce's tables match its ${migrations.length} migrations`);
  expect(check(report, "autovacuum").verdict).toBe(serverAutovacuum ? "ok" : "warning");
  expect(report.verdict).toBe(serverAutovacuum ? "ok" : "warning");
  // The same from txonce(pool).doctor().
  expect((await txonce(db.pool).doctor({ skip: ["autovacuum"] })).verdict).toBe("ok");
});

test("the expected schema covers every shipped migration", () => {
  expect(expectedSchema.migrations.map((m) => m.name)).toEqual(migrations.map((m) => m.name));
});

test("bad options fail before any statement", async () => {
  const refuses = { query: () => Promise.reject(new Error("no statement expected")) };
  await expect(doctor(refuses, { skip: ["vacuum" as DoctorCheckName] })).rejects.toThrow(InvalidArgumentError);
  await expect(doctor(refuses, { thresholds: { outboxLag: { warning: "soon" } } })).rejects.toThrow(/thresholds.outboxLag.warning/);
  await expect(doctor(refuses, { thresholds: { deadTupleShare: { warning: 2 } } })).rejects.toThrow(/from 0 to 1/);
  await expect(doctor(refuses, { thresholds: { outboxLag: { warning: "1h", problem: "1m" } } })).rejects.toThrow(/must not be above/);
});

describe("missing migrations, in a database of their own", () => {
  let broken: TestDatabase;
  beforeAll(async () => {
    broken = await createTestDatabase();
  });
  afterAll(async () => {
    await broken?.drop();
  });

  test("the pg_cron procedure: absent is fine (prisma migrate dev does not make it), an old version is reported", async () => {
    const old = migrations.find((m) => m.name === "20261127181000_txonce_cleanup_procedure")!;
    await broken.pool.query("DROP PROCEDURE txonce_cleanup");
    await broken.pool.query(old.sql);
    let schema = check(await doctor(pgDatabase(broken.pool)), "schema");
    expect(schema.verdict).toBe("warning");
    expect(schema.summary).toMatch(/^1 of \d+ migrations missing or changed: 20261128033500_txonce_cleanup_procedure_schema \(routine txonce_cleanup is "[0-9a-f]+", expected "[0-9a-f]+"\)$/);
    await broken.pool.query("DROP PROCEDURE txonce_cleanup");
    schema = check(await doctor(pgDatabase(broken.pool)), "schema");
    expect(schema.verdict).toBe("ok");
  });

  test("a dropped column, table, index and storage parameters name their migrations; a breaking one is a problem", async () => {
    await broken.pool.query("ALTER TABLE txonce_outbox_messages RESET (autovacuum_vacuum_scale_factor)");
    let report = await doctor(pgDatabase(broken.pool));
    expect(check(report, "schema").verdict).toBe("warning");
    expect(check(report, "schema").detail.missing).toEqual([
      expect.objectContaining({ name: "20261128002600_txonce_outbox_autovacuum", breaking: false }),
    ]);

    await broken.pool.query("DROP INDEX txonce_outbox_messages_state_key_seq_idx");
    await broken.pool.query("ALTER TABLE txonce_outbox_messages DROP COLUMN trace_context");
    await broken.pool.query("DROP TABLE txonce_cleanup_runs");
    report = await doctor(pgDatabase(broken.pool));
    const schema = check(report, "schema");
    expect(schema.verdict).toBe("problem");
    expect((schema.detail.missing as { name: string }[]).map((m) => m.name)).toEqual([
      "20261127234523_txonce_outbox_claim_indexes",
      "20261128002600_txonce_outbox_autovacuum",
      "20261128014852_txonce_outbox_trace_context",
      "20261128032553_txonce_cleanup_runs",
    ]);
    expect(schema.summary).toContain("column txonce_outbox_messages.trace_context is missing");
    expect(schema.action).toMatch(/prisma migrate/);
    expect(report.verdict).toBe("problem");
    // Cleanup is still checked without its runs table.
    expect(check(report, "cleanup").summary).toContain("table txonce_cleanup_runs missing");

    const cli = await txonceCli(["doctor", "--json"], { DATABASE_URL: broken.url });
    expect(cli.code, cli.stderr).toBe(2);
    const json = JSON.parse(cli.stdout) as DoctorReport;
    expect(json.verdict).toBe("problem");
    expect(json.checks.find((c) => c.name === "schema")?.summary).toContain("20261128014852_txonce_outbox_trace_context");

    const human = await txonceCli(["doctor"], { DATABASE_URL: broken.url });
    expect(human.code).toBe(2);
    expect(human.stdout).toMatch(/^txonce doctor: problem\n/);
    expect(human.stdout).toMatch(/^problem +schema +4 of \d+ migrations missing or changed: 20261127234523_txonce_outbox_claim_indexes/m);
    expect(human.stdout).toMatch(/^ +-> Apply the missing migrations/m);
  });

  test("no tables at all: the schema is a problem and the checks that need the tables say so", async () => {
    await broken.pool.query("DROP TABLE txonce_idempotency_keys, txonce_outbox_messages CASCADE");
    await broken.pool.query("DROP TABLE IF EXISTS txonce_cleanup_runs");
    const report = await doctor(pgDatabase(broken.pool));
    expect(check(report, "schema").summary).toMatch(/not in this database/);
    expect(check(report, "outbox").summary).toBe("not checked: table txonce_outbox_messages is missing");
    expect(check(report, "cleanup").verdict).toBe("problem");
    expect(report.verdict).toBe("problem");
  });
});

describe("cleanup", () => {
  test("expired keys and no run recorded: a warning; past the problem threshold: a problem", async () => {
    await seedKeys(db.pool, { count: 3, expired: true }); // expired a day and a bit ago
    let c = check(await doctor(pgDatabase(db.pool)), "cleanup");
    expect(c.verdict).toBe("warning");
    expect(c.summary).toMatch(/^3 expired keys waiting, the oldest expired 24h 0m ago; no run recorded$/);
    expect(c.detail).toMatchObject({ expiredKeys: 3, lastRun: null });
    expect(c.action).toMatch(/txonce cleanup/);

    c = check(await doctor(pgDatabase(db.pool), { thresholds: { expiredKeys: { warning: "1h", problem: "12h" } } }), "cleanup");
    expect(c.verdict).toBe("problem");
  });

  test("a run just now (cleanup() and the pg_cron procedure) is recorded, and the verdict is ok", async () => {
    await seedKeys(db.pool, { count: 5, expired: true });
    const t = txonce(db.pool);
    await t.cleanup();
    let c = check(await t.doctor(), "cleanup");
    expect(c.verdict).toBe("ok");
    expect(c.detail.lastRun).toMatchObject({ deleted: 5, finished: true, runner: "job" });
    expect(c.summary).toMatch(/^no expired keys waiting; last run \d+ms ago \(job, deleted 5\)$/);

    await seedKeys(db.pool, { count: 2, expired: true });
    await db.pool.query("CALL txonce_cleanup()");
    c = check(await t.doctor(), "cleanup");
    expect(c.detail.lastRun).toMatchObject({ deleted: 2, finished: true, runner: "procedure" });

    // A dry run is not a run.
    await t.cleanup({ dryRun: true });
    expect((await db.pool.query("SELECT count(*)::integer AS n FROM txonce_cleanup_runs")).rows[0].n).toBe(2);
  });

  test("an old run while keys expired since: warning", async () => {
    await db.pool.query(
      "INSERT INTO txonce_cleanup_runs (started_at, finished_at, deleted, finished, runner) VALUES (now() - interval '3 days', now() - interval '3 days', 10, true, 'job')",
    );
    await seedKeys(db.pool, { count: 1, expired: true });
    const c = check(await doctor(pgDatabase(db.pool), { thresholds: { expiredKeys: { warning: "2d" } } }), "cleanup");
    expect(c.verdict).toBe("warning");
    expect(c.summary).toMatch(/last run 3d 0h ago \(job, deleted 10\)/);
  });

  test("only the latest 100 runs are kept", async () => {
    const t = txonce(db.pool);
    for (let i = 0; i < 103; i++) await t.cleanup();
    const { rows } = await db.pool.query("SELECT count(*)::integer AS n, max(id) - min(id) AS span FROM txonce_cleanup_runs");
    expect(rows[0]).toEqual({ n: 100, span: "99" });
  });
});

test("a bloated table: dead tuples past the thresholds are a problem, VACUUM clears them and the empty pages remain", async () => {
  await db.pool.query("ALTER TABLE txonce_idempotency_keys SET (autovacuum_enabled = false)");
  try {
    await seedKeys(db.pool, { count: 5_000, expired: false, scope: "bloat" });
    for (let i = 0; i < 4; i++) await db.pool.query("UPDATE txonce_idempotency_keys SET result = result WHERE scope = 'bloat'");
    await db.pool.query("ANALYZE txonce_idempotency_keys");
    const thresholds = { minDeadTuples: 1_000, minBloatBytes: 0 };
    const table = async () => {
      const c = check(await doctor(pgDatabase(db.pool), { thresholds }), "tables");
      return { check: c, keys: (c.detail.tables as Record<string, unknown>[]).find((t) => t.table === "txonce_idempotency_keys")! };
    };
    // The statistics reach the view a moment after the transactions (a backend flushes them at most once a
    // second), one update at a time: wait for the fourth, the same bound as the assertion below.
    let found = await table();
    for (let i = 0; i < 100 && Number(found.keys.deadTuples) <= 15_000; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      found = await table();
    }
    // Four updates of 5,000 rows: up to 20,000 dead versions (page pruning during the updates removes a few).
    expect(found.keys.deadTuples, JSON.stringify(found.keys)).toBeGreaterThan(15_000);
    expect(found.keys.deadShare, JSON.stringify(found.keys)).toBeGreaterThan(0.5); // live tuples are the statistics' estimate
    expect(found.keys.verdict, JSON.stringify(found.keys)).toBe("problem");
    expect(found.check.verdict, JSON.stringify(found.check)).toBe("problem");
    expect(found.check.summary).toMatch(/txonce_idempotency_keys [\d.]+ [kM]B \(table [\d.]+ [kM]B, indexes [\d.]+ [kM]B\), \d+% dead, ~\d+% bloat/);
    expect(found.check.action).toMatch(/^VACUUM \(ANALYZE\)/);

    const autovacuum = check(await doctor(pgDatabase(db.pool)), "autovacuum");
    expect(autovacuum.verdict, JSON.stringify(autovacuum)).toBe("warning");
    expect(autovacuum.summary).toContain("autovacuum_enabled=false on txonce_idempotency_keys");

    await db.pool.query("VACUUM txonce_idempotency_keys");
    found = await table();
    for (let i = 0; i < 50 && Number(found.keys.deadTuples) > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      found = await table();
    }
    expect(found.keys.deadTuples, JSON.stringify(found.keys)).toBe(0);
    // Five row versions per row, one live: about four fifths of the pages hold nothing live.
    expect(found.keys.bloatEstimate, JSON.stringify(found.keys)).toBeGreaterThan(0.6);
    expect(found.keys.verdict, JSON.stringify(found.keys)).not.toBe("ok");
    expect(found.check.action).toMatch(/pg_repack|VACUUM FULL/);
  } finally {
    await db.pool.query("ALTER TABLE txonce_idempotency_keys RESET (autovacuum_enabled)");
    await db.pool.query("TRUNCATE txonce_idempotency_keys");
    await db.pool.query("VACUUM txonce_idempotency_keys"); // resets the dead tuples counted
  }
});

test("a transaction left open in another session holds back the xmin horizon", async () => {
  const other = new pg.Client({ connectionString: db.url, application_name: "forgotten-psql" });
  await other.connect();
  try {
    await other.query("BEGIN");
    await other.query("SELECT txid_current()");
    await new Promise((resolve) => setTimeout(resolve, 300));
    const report = await doctor(pgDatabase(db.pool), { thresholds: { oldestTransaction: { warning: 200, problem: "1h" } } });
    const c = check(report, "xmin-horizon");
    expect(c.verdict).toBe("warning");
    const pid = (await other.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    expect((c.detail.holders as { id: string }[])[0]).toMatchObject({ kind: "transaction", id: String(pid), applicationName: "forgotten-psql" });
    expect(c.summary).toMatch(new RegExp(`session ${pid} \\(postgres, forgotten-psql\\), idle in transaction, open \\d+ms`));
    expect(c.action).toMatch(/pg_terminate_backend/);

    const cli = await txonceCli(["doctor", "--skip", "autovacuum", "--threshold", "oldestTransaction.problem=200", "--threshold", "oldestTransaction.warning=100"], {
      DATABASE_URL: db.url,
    });
    expect(cli.code, cli.stdout + cli.stderr).toBe(2);
    expect(cli.stdout).toMatch(/^problem +xmin-horizon +oldest holder of the xmin horizon: session \d+/m);
  } finally {
    await other.query("ROLLBACK");
    await other.end();
  }
  const after = await doctor(pgDatabase(db.pool), { thresholds: { oldestTransaction: { warning: 200, problem: "1h" } } });
  expect(check(after, "xmin-horizon").verdict).toBe("ok");
});

test("a stuck lease: warning a minute after it ended, problem after 15", async () => {
  await insertMessage(", lease_token, lease_until, available_at, attempts", ", gen_random_uuid(), now() - interval '2 minutes', now() - interval '2 minutes', 1");
  let c = check(await doctor(pgDatabase(db.pool)), "leases");
  expect(c.verdict).toBe("warning");
  expect(c.summary).toMatch(/^1 messages leased by a relay whose lease ended 2m \ds ago$/);
  await db.pool.query("UPDATE txonce_outbox_messages SET lease_until = now() - interval '20 minutes', available_at = now() - interval '20 minutes'");
  c = check(await doctor(pgDatabase(db.pool)), "leases");
  expect(c.verdict).toBe("problem");
  expect(c.action).toMatch(/relay/);
  // The message is due and waiting for a relay, too.
  expect(check(await doctor(pgDatabase(db.pool)), "outbox").verdict).toBe("problem");
});

test("dead letters: a warning from one, a problem at the threshold; exit codes through the CLI", async () => {
  await insertMessage(", dead_at, attempts, last_error", ", now(), 10, 'broker said no'");
  const report = await doctor(pgDatabase(db.pool));
  const c = check(report, "outbox");
  expect(c.verdict).toBe("warning");
  expect(c.summary).toBe("0 pending; 1 dead");
  expect(c.action).toMatch(/txonce dead list/);

  const warning = await txonceCli(["doctor", "--skip", "autovacuum,xmin-horizon"], { DATABASE_URL: db.url });
  expect(warning.code, warning.stdout + warning.stderr).toBe(1);
  expect(warning.stdout).toMatch(/^txonce doctor: warning\n/);
  expect(warning.stdout).toMatch(/^warning +outbox +0 pending; 1 dead$/m);
  expect(warning.stdout).not.toMatch(/autovacuum/);

  const problem = await txonceCli(["doctor", "--json", "--skip", "autovacuum", "--skip", "xmin-horizon", "--threshold", "deadLetters.problem=1"], {
    DATABASE_URL: db.url,
  });
  expect(problem.code).toBe(2);
  expect(JSON.parse(problem.stdout)).toMatchObject({ verdict: "problem", checks: expect.arrayContaining([expect.objectContaining({ name: "outbox", verdict: "problem", detail: { pending: 0, dead: 1, oldestDueMs: 0 } })]) });

  await db.pool.query("DELETE FROM txonce_outbox_messages");
  const ok = await txonceCli(["doctor", "--skip", "autovacuum,xmin-horizon"], { DATABASE_URL: db.url });
  expect(ok.code, ok.stdout).toBe(0);
  expect(ok.stdout).toMatch(/^txonce doctor: ok\n/);
});

test("pending messages waiting for a relay: the age of the oldest due one", async () => {
  await insertMessage(", available_at", ", now() - interval '3 minutes'");
  await insertMessage(", available_at", ", now() + interval '1 hour'"); // delayed: not due
  const c = check(await doctor(pgDatabase(db.pool)), "outbox");
  expect(c.verdict).toBe("warning");
  expect(c.detail.pending).toBe(2);
  expect(Number(c.detail.oldestDueMs)).toBeGreaterThanOrEqual(180_000);
});

test("CLI: usage errors exit 64; an unreachable database is a problem (exit 2)", async () => {
  const skip = await txonceCli(["doctor", "--skip", "vacuum"], { DATABASE_URL: db.url });
  expect(skip.code).toBe(64);
  expect(skip.stderr).toMatch(/unknown check "vacuum"/);
  const threshold = await txonceCli(["doctor", "--threshold", "outboxLag=5m"], { DATABASE_URL: db.url });
  expect(threshold.code).toBe(64);
  const duration = await txonceCli(["doctor", "--threshold", "outboxLag.warning=soon"], { DATABASE_URL: db.url });
  expect(duration.code).toBe(64);
  expect(duration.stderr).toMatch(/"soon" is not a duration/);
  const none = await txonceCli(["doctor"]);
  expect(none.code).toBe(64);

  const unreachable = await txonceCli(["doctor", "--json", "--database-url", "postgres://postgres@127.0.0.1:1/postgres"]);
  expect(unreachable.code).toBe(2);
  expect(JSON.parse(unreachable.stdout)).toMatchObject({ verdict: "problem", error: expect.stringMatching(/ECONNREFUSED/) });
});
