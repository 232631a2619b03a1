/**
 * What a claim design gets wrong under concurrency, counted over plain pg (one database of its
 * own); a side measurement for docs/benchmarks.md:
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/claim-races.ts
 *
 * 1. Duplicate runs: KEYS keys (2000) x 5 callers, each caller a "process" of its own (a pool of
 *    its own), 20 keys at a time, all callers of a key at once, the protocol of the core by hand
 *    (claim; run and save, or roll back and poll until the record is there or the lock is free,
 *    then claim again). Counts how often the operation ran for a key that another caller had
 *    already committed: the run rolls back at the save, but it ran. Shipped claim (INSERT ...
 *    ON CONFLICT DO NOTHING after the lock) against the claim that writes nothing
 *    (bench/designs.ts: a SELECT, whose snapshot is taken before its lock).
 * 2. SERIALIZABLE: 8 connections making first executions (claim, save, COMMIT; no operation) of
 *    distinct keys with neighbouring values back to back for SSI_SECONDS (3) per design, twice,
 *    on an empty table and on one of 100,000 rows: how many fail with 40001. Shipped (save by
 *    ctid), the first pass's save by (scope, key), and the claim that writes nothing.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import * as sql from "../src/sql/postgres.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl } from "../test/support/postgres-server.js";
import { env, loadavg, log, sleep, table } from "./common.js";
import { insertSave, selectClaim } from "./designs.js";

const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error("set DATABASE_URL");
const KEYS = env("KEYS", 2000);
const SSI_SECONDS = env("SSI_SECONDS", 3);
const RETENTION = 3600_000;
const RESULT = '{"json":1}';

const name = `txonce_claimraces_${randomBytes(4).toString("hex")}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const url = databaseUrl(serverUrl, name);
const pools: pg.Pool[] = [];
const newPool = (max: number) => {
  const pool = new pg.Pool({ connectionString: url, max });
  pool.on("error", () => {});
  pools.push(pool);
  return pool;
};
try {
  const setup = newPool(1);
  await setup.query(schemaSql);
  log(`claim-races: ${KEYS} keys x 5 callers; SERIALIZABLE ${SSI_SECONDS}s per design and round; load average ${loadavg()}`);

  // 1. Duplicate runs
  type Design = "shipped" | "select-claim";
  const duplicateRuns = async (design: Design) => {
    const callers = Array.from({ length: 5 }, () => newPool(4));
    const stats = { runs: 0, committed: 0, rolledBackAtSave: 0, replays: 0 };
    const call = async (pool: pg.Pool, key: string, lock: string) => {
      for (;;) {
        const client = await pool.connect();
        let done = false;
        try {
          await client.query("BEGIN");
          if (design === "select-claim") {
            const { rows: [claim] } = await client.query(selectClaim, ["", key, lock]);
            if (claim.created_at) {
              stats.replays++;
              done = true;
              await client.query("ROLLBACK");
            } else if (!claim.free) {
              await client.query("ROLLBACK");
            } else {
              stats.runs++;
              const { rows } = await client.query(insertSave, ["", key, null, RETENTION, RESULT]);
              if (rows.length === 0) {
                stats.rolledBackAtSave++;
                await client.query("ROLLBACK");
              } else {
                await client.query("COMMIT");
                stats.committed++;
                done = true;
              }
            }
          } else {
            const { rows: [claimed] } = await client.query(sql.claimKey, ["", key, null, RETENTION, lock]);
            if (!claimed) {
              await client.query("ROLLBACK");
            } else {
              stats.runs++;
              await client.query(sql.saveResult, [claimed.ctid, RESULT]);
              await client.query("COMMIT");
              stats.committed++;
              done = true;
            }
          }
        } finally {
          client.release();
        }
        if (done) return;
        for (;;) {
          await sleep(1 + Math.random() * 2);
          const { rows: [row] } = await pool.query(sql.pollKey, ["", key, lock]);
          if (row.created_at) {
            stats.replays++;
            return;
          }
          if (row.free) break;
        }
      }
    };
    const tag = randomBytes(3).toString("hex");
    for (let first = 0; first < KEYS; first += 20) {
      await Promise.all(
        Array.from({ length: Math.min(20, KEYS - first) }, (_, j) =>
          Promise.all(callers.map((pool) => call(pool, `${design}-${tag}-${first + j}`, String(first + j + 1)))),
        ),
      );
    }
    return stats;
  };
  const runRows: string[][] = [];
  for (const design of ["shipped", "select-claim", "shipped", "select-claim"] as const) {
    const s = await duplicateRuns(design);
    runRows.push([design, String(KEYS), String(s.runs), String(s.committed), String(s.rolledBackAtSave), String(s.replays)]);
  }
  log();
  log("1. Duplicate runs: the operation ran for a key another caller had committed (rolled back at the save)");
  table(["claim", "keys", "operation runs", "committed", "ran again, rolled back", "replays"], runRows);

  // 2. SERIALIZABLE
  type SsiDesign = "shipped (save by ctid)" | "first pass (save by key)" | "select-claim";
  const pool = newPool(8);
  let serial = 0;
  const ssiRound = async (design: SsiDesign) => {
    let committed = 0;
    let failed = 0;
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (Date.now() - t0 < SSI_SECONDS * 1000) {
          const n = ++serial;
          const key = `ssi-${String(n).padStart(9, "0")}`;
          const client = await pool.connect();
          try {
            await client.query("BEGIN ISOLATION LEVEL SERIALIZABLE");
            if (design === "select-claim") {
              await client.query(selectClaim, ["", key, String(n)]);
              await client.query(insertSave, ["", key, null, RETENTION, RESULT]);
            } else {
              const { rows: [claimed] } = await client.query(sql.claimKey, ["", key, null, RETENTION, String(n)]);
              if (design === "shipped (save by ctid)") await client.query(sql.saveResult, [claimed.ctid, RESULT]);
              else await client.query(sql.saveResultByKey, ["", key, RESULT]);
            }
            await client.query("COMMIT");
            committed++;
          } catch (error) {
            if ((error as { code?: string }).code !== "40001") throw error;
            failed++;
            await client.query("ROLLBACK").catch(() => {});
          } finally {
            client.release();
          }
        }
      }),
    );
    return { committed, failed };
  };
  const ssiRows: string[][] = [];
  for (const rows of [0, 100_000]) {
    await pool.query(`TRUNCATE ${sql.IDEMPOTENCY_TABLE}`);
    if (rows > 0) {
      await pool.query(
        `INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, result, expires_at)
         SELECT '', 'pre-' || g, '1', now() + interval '1 day' FROM generate_series(1, $1::integer) g`,
        [rows],
      );
      await pool.query(`VACUUM ANALYZE ${sql.IDEMPOTENCY_TABLE}`);
    }
    for (let round = 0; round < 2; round++) {
      for (const design of ["shipped (save by ctid)", "first pass (save by key)", "select-claim"] as const) {
        const { committed, failed } = await ssiRound(design);
        ssiRows.push([design, String(rows), String(round + 1), String(committed), String(failed), `${Math.round((100 * failed) / Math.max(1, committed + failed))}%`]);
      }
    }
  }
  log();
  log("2. SERIALIZABLE: first executions of distinct, neighbouring keys, 8 at a time; failures with 40001");
  table(["design", "rows before", "round", "committed", "40001", "share"], ssiRows);
  log(`load average after: ${loadavg()}`);
} finally {
  await Promise.allSettled(pools.map((p) => p.end()));
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
