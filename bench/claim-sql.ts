/**
 * What txonce's idempotency statements cost on the server, over plain pg (one connection, one call
 * at a time), next to the claim that waited on the row lock (before issue 8), a claim that also
 * returned the live record (the first design of issue 8, not shipped) and simpler SQL; the
 * WAL each path writes, with the table's default fillfactor and with a lower one (does the result
 * UPDATE stay HOT?); and what EXPLAIN ANALYZE says about the claim. A side measurement for
 * docs/benchmarks.md:
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/claim-sql.ts
 *
 * Knobs: CLAIM_SQL_CALLS (per statement, default 3000), CLAIM_SQL_ROUNDS (interleaved rounds, 3).
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import pg from "pg";
import * as sql from "../src/sql/postgres.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl } from "../test/support/postgres-server.js";
import { env, fmt, loadavg, log, median, table } from "./common.js";
import { claimOrRecord, claimReturningRecord, insertSave, plainUpsert, pollKeyCte, selectClaim, waitingClaim } from "./designs.js";

const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error("set DATABASE_URL");
const CALLS = env("CLAIM_SQL_CALLS", 3000);
const ROUNDS = Math.max(1, Math.round(env("CLAIM_SQL_ROUNDS", 3)));
const RETENTION = 48 * 3600_000;
const RESULT = JSON.stringify({ json: { id: 1, accountId: "bench", amount: "1.00", createdAt: new Date().toISOString() } });

const findLive = `SELECT fingerprint, result, created_at, expires_at FROM ${sql.IDEMPOTENCY_TABLE}
WHERE scope = $1::text AND key = $2::text AND expires_at > now()`;

const name = `txonce_claimsql_${randomBytes(4).toString("hex")}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const c = new pg.Client({ connectionString: databaseUrl(serverUrl, name) });
try {
  await c.connect();
  await c.query(schemaSql);
  const version = (await c.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v;
  log(`claim-sql: PostgreSQL ${version}, ${CALLS} calls x ${ROUNDS} rounds per row; load average ${loadavg()}`);

  let tag = 0;
  const k = (p: string, i: number) => `${p}${tag}.${i}`;
  /** A lock id per key (any bigint will do here; the core hashes the scope and key). */
  const lockId = (key: string) => String(BigInt.asIntN(64, BigInt("0x" + Buffer.from(key).toString("hex").slice(-15))));
  // The backend's CPU time, from /proc (when the server runs on this machine and it is readable).
  const pid = (await c.query<{ p: number }>("SELECT pg_backend_pid() AS p")).rows[0]!.p;
  const serverTicks = () => {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      return Number(fields[11]) + Number(fields[12]);
    } catch {
      return undefined;
    }
  };
  const tx = async (q: () => Promise<unknown>, end = "COMMIT") => {
    await c.query("BEGIN");
    await q();
    await c.query(end);
  };
  const claim = (key: string) => c.query(sql.claimKey, ["", key, null, RETENTION, lockId(key)]);
  /** claimKey then saveResult (by the claim's ctid), as shipped. */
  const claimAndSave = async (key: string, result = RESULT) => {
    const { rows: [row] } = await claim(key);
    await c.query(sql.saveResult, [row.ctid, result]);
  };
  /** claimKey then the save by (scope, key), as the first pass of issue 8 shipped it. */
  const claimAndSaveByKey = async (key: string) => {
    await claim(key);
    await c.query(sql.saveResultByKey, ["", key, RESULT]);
  };
  const selectClaimOf = (key: string) => c.query(selectClaim, ["", key, lockId(key)]);
  const insertSaveOf = (key: string) => c.query(insertSave, ["", key, null, RETENTION, RESULT]);
  // Keys that are completed, for the replay paths.
  for (let i = 0; i < 1000; i++) await tx(() => claimAndSave(`done.${i}`));

  // The claims end with ROLLBACK, so that the WAL flush of COMMIT (the same for all) stays out.
  const rows: [string, (i: number) => Promise<unknown>][] = [
    ["tx: nothing (BEGIN, ROLLBACK)", () => tx(async () => {}, "ROLLBACK")],
    ["tx: claim as before issue 8 (lock_timeout CTEs)", (i) => tx(() => c.query(waitingClaim, ["", k("w", i), null, RETENTION, "2000ms"]), "ROLLBACK")],
    ["tx: plain upsert (no lock, no live record)", (i) => tx(() => c.query(plainUpsert, ["", k("u", i), null, RETENTION]), "ROLLBACK")],
    ["tx: claimKey, new key", (i) => tx(() => claim(k("a", i)), "ROLLBACK")],
    ["tx: claimExpiredKey, new key", (i) => tx(() => c.query(sql.claimExpiredKey, ["", k("x", i), null, RETENTION, lockId(k("x", i))]), "ROLLBACK")],
    ["tx: claimKey, named (prepared) statement", (i) =>
      tx(() => c.query({ name: "claim", text: sql.claimKey, values: ["", k("p", i), null, RETENTION, lockId(k("p", i))] }), "ROLLBACK")],
    ["tx: claim returning the live record (CTEs, UNION; not shipped)", (i) =>
      tx(() => c.query(claimReturningRecord, ["", k("r", i), null, RETENTION, lockId(k("r", i))]), "ROLLBACK")],
    ["tx: the same, named (prepared) statement", (i) =>
      tx(() => c.query({ name: "claimr", text: claimReturningRecord, values: ["", k("n", i), null, RETENTION, lockId(k("n", i))] }), "ROLLBACK")],
    ["tx: claimKey, saveResult by ctid (shipped)", (i) => tx(() => claimAndSave(k("s", i)), "ROLLBACK")],
    ["tx: claimKey, save by (scope, key) (first pass)", (i) => tx(() => claimAndSaveByKey(k("sk", i)), "ROLLBACK")],
    ["tx: claimKey on a completed key (cold replay)", (i) => tx(() => claim(`done.${i % 1000}`), "ROLLBACK")],
    ["tx: claimOrRecord, new key", (i) => tx(() => c.query(claimOrRecord, ["", k("cr", i), null, RETENTION, lockId(k("cr", i))]), "ROLLBACK")],
    ["tx: claimOrRecord on a completed key (cold replay)", (i) => tx(() => c.query(claimOrRecord, ["", `done.${i % 1000}`, null, RETENTION, lockId(`done.${i % 1000}`)]), "ROLLBACK")],
    ["tx: selectClaim, new key", (i) => tx(() => selectClaimOf(k("sc", i)), "ROLLBACK")],
    ["tx: selectClaim on a completed key (cold replay)", (i) => tx(() => selectClaimOf(`done.${i % 1000}`), "ROLLBACK")],
    ["tx: selectClaim, insertSave", (i) => tx(async () => { await selectClaimOf(k("ss", i)); await insertSaveOf(k("ss", i)); }, "ROLLBACK")],
    ["tx: first execution, committed (claimKey, saveResult by ctid, COMMIT)", (i) => tx(() => claimAndSave(k("f", i)))],
    ["tx: first execution, committed (claimKey, save by key, COMMIT)", (i) => tx(() => claimAndSaveByKey(k("fk", i)))],
    ["tx: first execution, committed (selectClaim, insertSave, COMMIT)", (i) => tx(async () => { await selectClaimOf(k("fs", i)); await insertSaveOf(k("fs", i)); })],
    ["findLiveRecord (no tx; the replay before issue 8)", (i) => c.query(findLive, ["", `done.${i % 1000}`])],
    ["pollKey, completed key (no tx)", (i) => c.query(sql.pollKey, ["", `done.${i % 1000}`, lockId(`done.${i % 1000}`)])],
    ["pollKey, unknown key (no tx)", (i) => c.query(sql.pollKey, ["", k("none", i), lockId(k("none", i))])],
    ["pollKey with a CTE (first pass), completed key (no tx)", (i) => c.query(pollKeyCte, ["", `done.${i % 1000}`, lockId(`done.${i % 1000}`)])],
    ["pollKey with a CTE (first pass), unknown key (no tx)", (i) => c.query(pollKeyCte, ["", k("nonej", i), lockId(k("nonej", i))])],
  ];
  const timings = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const [label, f] of rows) {
      tag++;
      for (let i = 0; i < 200; i++) await f(-i - 1);
      const ticks0 = serverTicks();
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) await f(i);
      timings.set(label, [...(timings.get(label) ?? []), ((performance.now() - t0) / CALLS) * 1000]);
      const ticks1 = serverTicks();
      // Linux counts CPU time in ticks of 10 ms (USER_HZ 100).
      if (ticks0 !== undefined && ticks1 !== undefined) cpu.set(label, [...(cpu.get(label) ?? []), ((ticks1 - ticks0) * 10_000) / CALLS]);
    }
  }
  log();
  log("Per call, plain pg, one connection (µs, median of rounds): round trip, and the backend's CPU time (/proc)");
  table(["call", "wall µs", "server CPU µs"], rows.map(([label]) => [label, fmt(median(timings.get(label)!)), cpu.has(label) ? fmt(median(cpu.get(label)!)) : "-"]));

  log();
  log("EXPLAIN ANALYZE of claimKey (new key, then a completed key), 20 runs each, median ms:");
  const explainOf = async (key: string) => {
    const plan = await c.query(`EXPLAIN (ANALYZE, TIMING OFF) ${sql.claimKey}`, ["", key, null, RETENTION, lockId(key)]);
    const text = plan.rows.map((r) => r["QUERY PLAN"] as string).join("\n");
    return { planning: Number(/Planning Time: ([\d.]+)/.exec(text)?.[1]), execution: Number(/Execution Time: ([\d.]+)/.exec(text)?.[1]) };
  };
  for (const [label, key] of [["new key", (i: number) => k("explain", i)], ["completed key", (i: number) => `done.${i}`]] as const) {
    const runs: { planning: number; execution: number }[] = [];
    for (let i = 0; i < 20; i++) {
      await c.query("BEGIN");
      runs.push(await explainOf(key(i)));
      await c.query("ROLLBACK");
    }
    log(`  ${label.padEnd(14)} planning ${fmt(median(runs.map((r) => r.planning)), 3)} ms, execution ${fmt(median(runs.map((r) => r.execution)), 3)} ms`);
  }

  log();
  log("WAL bytes per first execution by design (claim, save, COMMIT, no business row; 500 calls each, least and median):");
  const walOf = async (first: (key: string) => Promise<unknown>) => {
    tag++;
    const wal: number[] = [];
    for (let i = 0; i < 500; i++) {
      const lsn0 = (await c.query<{ l: string }>("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0]!.l;
      await tx(() => first(k("wd", i)));
      wal.push(Number((await c.query<{ b: string }>("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn) AS b", [lsn0])).rows[0]!.b));
    }
    return [fmt(Math.min(...wal)), fmt(median(wal))];
  };
  table(["design", "WAL bytes min", "median"], [
    ["claimKey (INSERT), saveResult (UPDATE by ctid)", ...(await walOf((key) => claimAndSave(key)))],
    ["selectClaim (SELECT), insertSave (INSERT)", ...(await walOf(async (key) => { await selectClaimOf(key); await insertSaveOf(key); }))],
  ]);
  if (env("CLAIM_SQL_FILLFACTOR", 1)) await fillfactorSection();
  log(`load average after: ${loadavg()}`);

  async function fillfactorSection() {
    log();
    log("WAL bytes per first execution (claimKey + saveResult, COMMIT, no business row), and HOT updates, by fillfactor:");
    const walRows: string[][] = [];
    for (const [fillfactor, result] of [100, 90, 80].flatMap((f) => [[f, RESULT], [f, "x".repeat(1500)]] as const)) {
      await c.query(`ALTER TABLE ${sql.IDEMPOTENCY_TABLE} SET (fillfactor = ${fillfactor})`);
      await c.query(`TRUNCATE ${sql.IDEMPOTENCY_TABLE}`);
      await c.query("CHECKPOINT");
      const stats = async () => (await c.query<{ upd: string; hot: string }>(
        `SELECT n_tup_upd AS upd, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relname = $1`, [sql.IDEMPOTENCY_TABLE])).rows[0]!;
      await c.query("SELECT pg_stat_clear_snapshot()");
      const before = await stats();
      const n = 2000;
      tag++;
      const wal: number[] = [];
      for (let i = 0; i < n; i++) {
        const lsn0 = (await c.query<{ l: string }>("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0]!.l;
        await tx(() => claimAndSave(k("wal", i), result));
        wal.push(Number((await c.query<{ b: string }>("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn) AS b", [lsn0])).rows[0]!.b));
      }
      // The statistics collector lags: wait for the counters of this backend to be flushed.
      await new Promise((r) => setTimeout(r, 1500));
      await c.query("SELECT pg_stat_clear_snapshot()");
      const after = await stats();
      const updates = Number(after.upd) - Number(before.upd);
      const hot = Number(after.hot) - Number(before.hot);
      walRows.push([String(fillfactor), String(result.length), fmt(Math.min(...wal)), fmt(median(wal)), `${fmt((100 * hot) / Math.max(1, updates))}%`]);
    }
    table(["fillfactor", "result chars", "WAL bytes/call min", "median", "HOT updates"], walRows);
    log("(2000 calls after TRUNCATE and CHECKPOINT; WAL is the whole server's, so the least per-call difference is the call's own)");
  }
} finally {
  await c.end();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
