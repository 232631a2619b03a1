/**
 * The retention job on a real PostgreSQL: batches, budgets, dry runs, cleanup under live
 * traffic, and the in-process scheduler.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { InvalidArgumentError, SchemaNotInstalledError, schemaSql, type CleanupResult } from "../src/index.js";
import { txonce } from "../src/adapters/prisma.js";
import * as sql from "../src/sql/postgres.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { countKeys, seedKeys } from "./support/seed.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query("TRUNCATE txonce_idempotency_keys");
});

describe("cleanup()", () => {
  test("100,000 expired and 100,000 live records: exactly the expired go, in several batches", async () => {
    await seedKeys(db.pool, { count: 100_000, expired: true, prefix: "old" });
    await seedKeys(db.pool, { count: 100_000, expired: false, prefix: "live" });
    const batches: number[] = [];
    const result = await txonce(db.prisma).cleanup({ batchSize: 7_000, onBatch: (p) => batches.push(p.batchDeleted) });
    expect(result).toMatchObject({ deleted: 100_000, batches: 15, finished: true, dryRun: false });
    expect(result.tables).toEqual({
      txonce_idempotency_keys: { deleted: 100_000, batches: 15, finished: true },
      // The outbox's published messages are the job's other table: nothing to prune here.
      txonce_outbox_messages: { deleted: 0, batches: 0, finished: true },
    });
    expect(batches.slice(0, 14).every((n) => n === 7_000)).toBe(true);
    expect(batches[14]).toBe(100_000 - 14 * 7_000);
    expect(await countKeys(db.pool, "key LIKE 'old-%'")).toBe(0);
    expect(await countKeys(db.pool, "key LIKE 'live-%'")).toBe(100_000);
    expect(await countKeys(db.pool, "expires_at <= now()")).toBe(0);
  });

  test("an exact multiple of the batch size: the statement that finds nothing left is not counted as a batch", async () => {
    await seedKeys(db.pool, { count: 3_000, expired: true });
    const progress: number[] = [];
    const result = await txonce(db.prisma).cleanup({ batchSize: 1_000, onBatch: (p) => progress.push(p.batchDeleted) });
    expect(result).toMatchObject({ deleted: 3_000, batches: 3, finished: true });
    expect(result.tables.txonce_idempotency_keys).toEqual({ deleted: 3_000, batches: 3, finished: true });
    expect(progress).toEqual([1_000, 1_000, 1_000]);
  });

  test("a dry run counts and deletes nothing", async () => {
    await seedKeys(db.pool, { count: 1234, expired: true });
    await seedKeys(db.pool, { count: 10, expired: false, prefix: "live" });
    const result = await txonce(db.prisma).cleanup({ dryRun: true });
    expect(result).toMatchObject({ deleted: 1234, batches: 0, dryRun: true, finished: true });
    expect(await countKeys(db.pool)).toBe(1244);
  });

  test("the time budget stops it between batches, and says it did not finish", async () => {
    await seedKeys(db.pool, { count: 20_000, expired: true });
    const result = await txonce(db.prisma).cleanup({ batchSize: 100, maxDuration: 1 });
    expect(result.finished).toBe(false);
    expect(result.batches).toBeGreaterThanOrEqual(1);
    expect(result.tables.txonce_idempotency_keys!.deleted).toBe(result.tables.txonce_idempotency_keys!.batches * 100);
    expect(result.tables.txonce_outbox_messages).toEqual({ deleted: 0, batches: 0, finished: false });
    expect(await countKeys(db.pool)).toBe(20_000 - result.deleted);
  });

  test("bad options are refused before any row is touched", async () => {
    await seedKeys(db.pool, { count: 5, expired: true });
    const { cleanup } = txonce(db.prisma);
    await expect(cleanup({ batchSize: 0 })).rejects.toMatchObject({ argument: "batchSize" });
    await expect(cleanup({ batchSize: 1.5 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(cleanup({ maxDuration: "forever" })).rejects.toMatchObject({ argument: "maxDuration" });
    expect(await countKeys(db.pool)).toBe(5);
  });

  test("missing tables give SchemaNotInstalledError", async () => {
    const bare = db.newPrisma({ max: 1 });
    await bare.$executeRawUnsafe("CREATE SCHEMA IF NOT EXISTS nothing_here");
    await bare.$executeRawUnsafe("SET search_path TO nothing_here");
    await expect(txonce(bare).cleanup()).rejects.toBeInstanceOf(SchemaNotInstalledError);
  });

  test("a batch is deleted by the addresses of the rows it locked, whatever the table's statistics say", async () => {
    // The statistics of a table analyzed when it held only dead rows (a cleanup had emptied it):
    // filled again, it looks empty to the planner. A batch that joined on the key then ran as a
    // nested loop over the whole table, for over a minute at 100,000 keys (a CI run's timeout).
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      await client.query("CREATE SCHEMA stale_statistics; SET search_path TO stale_statistics");
      await client.query(schemaSql);
      const fill = () =>
        client.query(
          `INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, result, created_at, expires_at)
           SELECT 's', 'k-' || i, '{"json":null}', now() - interval '3 days', now() - interval '1 day' - i * interval '1 millisecond'
           FROM generate_series(1, 20000) AS i;
           INSERT INTO ${sql.OUTBOX_TABLE} (id, topic, payload, headers, published_at)
           SELECT gen_random_uuid(), 't', '{}', '{}', now() - interval '30 days' FROM generate_series(1, 20000)`,
        );
      await fill();
      await client.query(`DELETE FROM ${sql.IDEMPOTENCY_TABLE}; DELETE FROM ${sql.OUTBOX_TABLE}`);
      await client.query(`ANALYZE ${sql.IDEMPOTENCY_TABLE}, ${sql.OUTBOX_TABLE}`);
      await fill();
      for (const [statement, params] of [[sql.deleteExpiredKeys, [2000]], [sql.deletePublishedBefore, [2000, 0]]] as const) {
        const plan = (await client.query(`EXPLAIN ${statement}`.replace("$1::integer", String(params[0])).replace("$2::double precision", "0"))).rows
          .map((row: Record<string, string>) => row["QUERY PLAN"])
          .join("\n");
        expect(plan).toContain("Tid Scan");
        expect(plan).not.toContain("Nested Loop");
        await client.query("BEGIN");
        expect((await client.query(statement, [...params])).rows[0].deleted).toBe(2000);
        await client.query("ROLLBACK");
      }
    } finally {
      await client.query("DROP SCHEMA IF EXISTS stale_statistics CASCADE").catch(() => {});
      await client.end();
    }
  });

  test("under live traffic: no errors, no lost records, each batch committed while calls go on", { timeout: 120_000 }, async () => {
    await seedKeys(db.pool, { count: 100_000, expired: true, scope: "traffic", prefix: "t" });
    const traffic = txonce(db.newPrisma({ max: 6 }), { lockTimeout: "4s" });
    const cleaner = txonce(db.newPrisma({ max: 2 }));
    const expiredLeft = () => countKeys(db.pool, "scope = 'traffic' AND key LIKE 't-%' AND expires_at <= now()");
    let cleanupDone = false;
    const batchMs: number[] = [];
    let lastBatchAt = 0;
    // What another connection sees once the first batch is reported, and whether the run was still going.
    let afterFirstBatch: Promise<{ left: number; runStillGoing: boolean }> | undefined;
    const cleanupRun = cleaner
      .cleanup({
        batchSize: 2_000,
        // Ends well before the test's timeout on a stalled machine (the run then says it did not
        // finish, and the diagnostics below say what it was waiting for).
        maxDuration: "45s",
        onBatch: (p) => {
          batchMs.push(p.elapsedMs - lastBatchAt);
          lastBatchAt = p.elapsedMs;
          afterFirstBatch ??= expiredLeft().then((left) => ({ left, runStillGoing: !cleanupDone }));
        },
      })
      .finally(() => {
        cleanupDone = true;
      });
    // On a machine where the run or the calls are slow, what each of the database's sessions is
    // doing (a CI run once timed out here without saying why).
    const watchdog = setTimeout(() => {
      void db.pool
        .query(
          `SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS in_transaction, left(query, 120) AS query
           FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
        )
        .then(({ rows }) =>
          console.log(`${cleanupDone ? "calls" : "cleanup"} still running after 20 s, ${batchMs.length} batches so far:`, rows),
        )
        .catch(() => {});
    }, 20_000);
    const latencies: number[] = [];
    const created: string[] = [];
    const worker = async (w: number) => {
      for (let i = 0; !cleanupDone || i < 20; i++) {
        // Alternate new keys, replays, and expired keys that cleanup is deleting at the same time.
        const key = i % 3 === 2 ? `t-${1 + ((w * 7919 + i * 104729) % 100_000)}` : `new-${w}-${i}`;
        const started = performance.now();
        await traffic.withIdempotency(key, async () => `${w}:${i}`, { scope: "traffic" });
        latencies.push(performance.now() - started);
        if (i % 3 !== 2) created.push(key);
        if (i % 3 === 1) await traffic.withIdempotency(`new-${w}-${i - 1}`, async () => "x", { scope: "traffic" });
      }
    };
    let result: CleanupResult;
    try {
      await Promise.all([0, 1, 2, 3].map(worker));
      result = await cleanupRun;
    } finally {
      clearTimeout(watchdog);
    }
    console.log(
      `cleanup ${result.batches} batches in ${result.durationMs} ms (slowest batch ${Math.round(Math.max(...batchMs))} ms); ` +
        `${latencies.length} live calls, slowest ${Math.round(Math.max(...latencies))} ms`,
    );
    expect(result.finished).toBe(true);
    expect(result.tables.txonce_idempotency_keys!.batches).toBeGreaterThan(40);
    expect(await expiredLeft()).toBe(0);
    const { rows } = await db.pool.query(
      "SELECT count(*)::integer AS n FROM txonce_idempotency_keys WHERE scope = 'traffic' AND key = ANY($1)",
      [created],
    );
    expect(rows[0].n).toBe(created.length);
    // Each batch is its own transaction: what the first one deleted was gone for every other
    // session while the run (many batches long) was still going, so a call waits at most for the
    // batch it ran into, never for the whole run.
    const seen = await afterFirstBatch!;
    expect(seen.runStillGoing).toBe(true);
    expect(seen.left).toBeLessThanOrEqual(100_000 - 2_000);
    expect(seen.left).toBeGreaterThan(0);
  });
});

describe("two cleanups at once, in two processes", () => {
  test("no deadlock, no error, every expired row deleted once", async () => {
    await seedKeys(db.pool, { count: 60_000, expired: true });
    await seedKeys(db.pool, { count: 1_000, expired: false, prefix: "live" });
    const run = () =>
      new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", join(import.meta.dirname, "..", "src", "cli", "main.ts"), "cleanup", "--json", "--batch-size", "1000"],
          { env: { ...process.env, DATABASE_URL: db.url } },
        );
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        child.on("close", (code) => resolve({ code, stdout, stderr }));
      });
    const [a, b] = await Promise.all([run(), run()]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const last = (s: string) => JSON.parse(s.trim().split("\n").at(-1)!) as CleanupResult;
    expect(last(a.stdout).deleted + last(b.stdout).deleted).toBe(60_000);
    expect(await countKeys(db.pool)).toBe(1_000);
  });
});

describe("scheduleCleanup()", () => {
  test("two schedulers on one database run one at a time", async () => {
    await seedKeys(db.pool, { count: 30_000, expired: true });
    // Every batch, in the order the batches ran. A run's batches all end before its lock is
    // released, and the next run's begin after it takes the lock, so with the lock working each
    // run's batches are contiguous in this list, whatever the machine's load (no clock involved).
    const batches: { who: string; batch: number }[] = [];
    let deleted = 0;
    let skips = 0;
    const schedule = (who: string) =>
      txonce(db.newPrisma({ max: 3 })).scheduleCleanup({
        every: 10,
        batchSize: 500,
        onBatch: (progress) => batches.push({ who, batch: progress.batches }),
        onRun: (r) => void (deleted += r.deleted),
        onSkip: () => skips++,
        onError: (e) => {
          throw e;
        },
      });
    const a = schedule("a");
    const b = schedule("b");
    // Until both have been seen (about 2 s here); the bound only matters on a stalled machine (a
    // CI run once took over 10 s), and stays under the test's timeout.
    for (let t = 0; t < 1_000 && (deleted < 30_000 || skips === 0); t++) await sleep(50);
    await Promise.all([a.stop(), b.stop()]);
    expect(deleted).toBe(30_000);
    expect(skips).toBeGreaterThan(0);
    expect(batches.length).toBeGreaterThanOrEqual(60);
    let owner: string | undefined;
    for (const { who, batch } of batches) {
      if (batch === 1) owner = who; // a run's first batch: it holds the lock now
      else expect(who, "a batch of another scheduler's run came in the middle of this run").toBe(owner);
    }
  });

  test("the lock is per schema: a run on schema app's tables holds app's lock, not public's", async () => {
    await db.pool.query("CREATE SCHEMA IF NOT EXISTS sched_app");
    const setup = await db.pool.connect();
    try {
      await setup.query("SET search_path TO sched_app");
      await setup.query(schemaSql);
    } finally {
      await setup.query("RESET search_path");
      setup.release();
    }
    const holder = await db.pool.connect();
    const lockOf = (schema: string) => `SELECT pg_advisory_xact_lock(hashtext('txonce.cleanup:' || current_database() || ':' || '${schema}'))`;
    try {
      await holder.query("BEGIN");
      await holder.query(lockOf("sched_app")); // another replica's run on sched_app
      const outcome = (options: { schema?: string }) =>
        new Promise<string>((resolve, reject) => {
          const schedule = txonce(db.prisma, options).scheduleCleanup({
            every: "1h",
            onRun: () => void schedule.stop().then(() => resolve("ran")),
            onSkip: () => void schedule.stop().then(() => resolve("skipped")),
            onError: reject,
          });
        });
      expect(await outcome({ schema: "sched_app" })).toBe("skipped");
      expect(await outcome({})).toBe("ran");
      await holder.query("ROLLBACK");
      await holder.query("BEGIN");
      await holder.query(lockOf("public")); // a run on public's tables
      expect(await outcome({ schema: "sched_app" })).toBe("ran");
      expect(await outcome({})).toBe("skipped");
    } finally {
      await holder.query("ROLLBACK");
      holder.release();
      await db.pool.query("DROP SCHEMA sched_app CASCADE");
    }
  });

  test("stop() stops it: no run starts afterwards", async () => {
    let runs = 0;
    const schedule = txonce(db.prisma).scheduleCleanup({ every: 5, onRun: () => runs++ });
    for (let t = 0; t < 100 && runs < 3; t++) await sleep(10);
    await schedule.stop();
    const after = runs;
    await sleep(150);
    expect(after).toBeGreaterThanOrEqual(3);
    expect(runs).toBe(after);
  });

  test("a failing run calls onError and the next run still happens", async () => {
    await seedKeys(db.pool, { count: 10, expired: true });
    const errors: unknown[] = [];
    const results: CleanupResult[] = [];
    await db.pool.query("ALTER TABLE txonce_idempotency_keys RENAME TO txonce_idempotency_keys_away");
    let schedule;
    try {
      schedule = txonce(db.prisma).scheduleCleanup({ every: 20, onError: (e) => errors.push(e), onRun: (r) => results.push(r) });
      for (let t = 0; t < 100 && errors.length < 2; t++) await sleep(10);
    } finally {
      await db.pool.query("ALTER TABLE txonce_idempotency_keys_away RENAME TO txonce_idempotency_keys");
    }
    for (let t = 0; t < 100 && results.length === 0; t++) await sleep(10);
    await schedule.stop();
    expect(errors.length).toBeGreaterThanOrEqual(2);
    expect(errors[0]).toBeInstanceOf(SchemaNotInstalledError);
    expect(results[0]).toMatchObject({ deleted: 10, finished: true });
  });

  test("its timer does not keep the process alive", async () => {
    const started = performance.now();
    const exit = await new Promise<number | null>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "schedule-and-exit.ts")], {
        env: { ...process.env, DATABASE_URL: db.url },
        stdio: "inherit",
      });
      child.on("close", resolve);
    });
    expect(exit).toBe(0);
    // The schedule's next run is an hour away; the process ended long before.
    expect(performance.now() - started).toBeLessThan(60_000);
  });

  test("bad options are refused when scheduling", () => {
    const { scheduleCleanup } = txonce(db.prisma);
    expect(() => scheduleCleanup({ every: "sometimes" })).toThrow(InvalidArgumentError);
    expect(() => scheduleCleanup({ batchSize: -1 })).toThrow(InvalidArgumentError);
  });
});
