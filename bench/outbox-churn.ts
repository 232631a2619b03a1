/**
 * The outbox table under steady churn: a producer commits OUTBOX_CHURN_RATE (2,000) messages per
 * second (transactions of 10, on OUTBOX_CHURN_KEYS (200) keys, through txonce/pg) for
 * OUTBOX_CHURN_SECONDS (180) seconds on top of OUTBOX_CHURN_KEPT (200,000) published messages kept
 * for retention, while one relay (txonce/pg, defaults, no-op publisher) publishes them. Every
 * 10 s: the dead tuples of the table (pg_stat_user_tables), the autovacuums so far, and the
 * buffers one claim reads (EXPLAIN (ANALYZE, BUFFERS) from the first key, rolled back).
 *
 * Run twice: with the table's storage parameters as the migrations set them, and with
 * OUTBOX_CHURN_STORAGE=default (ALTER TABLE ... RESET first), to see what they change. Autovacuum
 * wakes up every autovacuum_naptime (1 min by default), so a run shorter than a few minutes shows
 * little.
 */
import pg from "pg";
import { txonce } from "../src/adapters/pg.js";
import { KEYS_WALKED_PER_MESSAGE } from "../src/outbox/relay.js";
import * as sql from "../src/sql/postgres.js";
import { env, loadavg, log, num, sleep, table } from "./common.js";

const RATE = env("OUTBOX_CHURN_RATE", 2_000);
const KEYS = Math.round(env("OUTBOX_CHURN_KEYS", 200));
const SECONDS = env("OUTBOX_CHURN_SECONDS", 180);
const KEPT = Math.round(env("OUTBOX_CHURN_KEPT", 200_000));
const STORAGE = process.env.OUTBOX_CHURN_STORAGE ?? "migrations";

export async function churnBench(pool: pg.Pool, url: string) {
  const storage = async () =>
    (await pool.query("SELECT coalesce(array_to_string(reloptions, ', '), '(none)') AS o FROM pg_class WHERE relname = $1", [sql.OUTBOX_TABLE])).rows[0].o as string;
  if (STORAGE === "default") {
    await pool.query(`ALTER TABLE ${sql.OUTBOX_TABLE} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)`);
  }
  log(`Outbox table under churn: ${num(RATE)} msg/s on ${num(KEYS)} keys for ${SECONDS} s over ${num(KEPT)} published messages kept; storage parameters: ${await storage()}`);
  const setting = async (name: string) => (await pool.query(`SHOW ${name}`)).rows[0][name] as string;
  log(`load: ${loadavg()}; autovacuum ${await setting("autovacuum")}, autovacuum_naptime ${await setting("autovacuum_naptime")}`);
  if ((await setting("autovacuum")) !== "on") log("  autovacuum is off on this server: no table settings can make it run");
  await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
  if (KEPT > 0) {
    await pool.query(
      `INSERT INTO ${sql.OUTBOX_TABLE} (id, topic, key, payload, published_at, attempts)
       SELECT gen_random_uuid(), 'bench', 'key-' || (i % $2::integer), '{"json":"' || repeat('x', 120) || '"}', now() - interval '1 hour', 1
       FROM generate_series(1, $1::integer) AS i`,
      [KEPT, KEYS],
    );
  }
  await pool.query(`VACUUM ANALYZE ${sql.OUTBOX_TABLE}`);
  const producerPool = new pg.Pool({ connectionString: url, max: 4 });
  const relayPool = new pg.Pool({ connectionString: url, max: 4 });
  const t = txonce(producerPool);
  let published = 0;
  const relay = txonce(relayPool).outbox.relay({ publisher: async () => {}, pollInterval: 100, onPublished: (m) => (published += m.length) });
  await relay.start();
  const samples: string[][] = [];
  const stats = async () =>
    (await pool.query("SELECT n_live_tup::int AS live, n_dead_tup::int AS dead, autovacuum_count::int AS autovacuums FROM pg_stat_user_tables WHERE relname = $1", [sql.OUTBOX_TABLE])).rows[0];
  const claimBuffers = async () => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const plan = (await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql.claimMessages}`, [100, 30_000, crypto.randomUUID(), "", 100 * KEYS_WALKED_PER_MESSAGE, 1000])).rows[0]["QUERY PLAN"][0];
      await client.query("ROLLBACK");
      return { buffers: Number(plan.Plan["Shared Hit Blocks"]) + Number(plan.Plan["Shared Read Blocks"]), leased: Number(plan.Plan["Actual Rows"]) };
    } finally {
      client.release();
    }
  };
  const av0 = (await stats()).autovacuums;
  let enqueued = 0;
  let stop = false;
  const t0 = performance.now();
  const producing = (async () => {
    while (!stop) {
      const due = t0 + (enqueued / RATE) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      const messages = Array.from({ length: 10 }, (_, i) => ({ topic: "bench", key: `key-${(enqueued + i) % KEYS}`, payload: { n: enqueued + i } }));
      await t.transaction((tx) => t.outbox.enqueueMany(tx, messages));
      enqueued += 10;
    }
  })();
  try {
    for (let at = 10; at <= SECONDS; at += 10) {
      await sleep(t0 + at * 1000 - performance.now());
      const s = await stats();
      const c = await claimBuffers();
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${sql.OUTBOX_TABLE} WHERE published_at IS NULL AND dead_at IS NULL`);
      samples.push([`${at} s`, num(enqueued), num(published), num(rows[0].n), num(s.dead), String(s.autovacuums - av0), num(c.buffers)]);
      log(`  ${at} s: pending ${num(rows[0].n)}, dead tuples ${num(s.dead)}, autovacuums ${s.autovacuums - av0}, claim buffers ${num(c.buffers)}`);
    }
  } finally {
    stop = true;
    await producing;
    await relay.stop();
    await producerPool.end();
    await relayPool.end();
  }
  const size = (await pool.query("SELECT pg_size_pretty(pg_total_relation_size($1)) AS s", [sql.OUTBOX_TABLE])).rows[0].s as string;
  log();
  log(`Churn (${await storage()}): claim buffers = one claim of 100 from the first key, EXPLAIN (ANALYZE, BUFFERS), rolled back; table + indexes at the end ${size}`);
  table(["time", "enqueued", "published", "pending", "dead tuples", "autovacuums", "claim buffers"], samples);
  log(`load: ${loadavg()}`);
  log();
}
