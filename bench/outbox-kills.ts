/**
 * Drain throughput while relays are killed: OUTBOX_KILL_MESSAGES (100,000) messages on
 * OUTBOX_KILL_KEYS (200) keys, inserted as a backlog, drained by OUTBOX_KILL_RELAYS (3) relay
 * processes (bench/relay-process.ts: txonce/pg, a publisher that logs the hand-off and takes
 * OUTBOX_KILL_PUBLISH_MS (1) ms, like a broker's confirm, batchSize
 * OUTBOX_KILL_BATCH (100), 1 worker, lease OUTBOX_KILL_LEASE_MS (5,000), publishTimeout half of it); every
 * OUTBOX_KILL_EVERY_SECONDS (2) one of them, drawn at random, is SIGKILLed and a new one started.
 * Timed until nothing is pending or leased (at most OUTBOX_KILL_CAP_SECONDS, 180), then: the
 * hand-offs to the publisher (= publishes started), messages handed off more than once (the
 * duplicates a broker without dedupe would see), attempts charged, and the table's dead tuples.
 * The same with no kills, for reference.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { env, fmt, loadavg, log, num, sleep, table } from "./common.js";

const TABLE = "txonce_outbox_messages";
const MESSAGES = Math.round(env("OUTBOX_KILL_MESSAGES", 100_000));
const KEYS = Math.round(env("OUTBOX_KILL_KEYS", 200));
const RELAYS = Math.round(env("OUTBOX_KILL_RELAYS", 3));
const BATCH = Math.round(env("OUTBOX_KILL_BATCH", 100));
const LEASE_MS = Math.round(env("OUTBOX_KILL_LEASE_MS", 5_000));
const EVERY_SECONDS = env("OUTBOX_KILL_EVERY_SECONDS", 2);
const CAP_SECONDS = env("OUTBOX_KILL_CAP_SECONDS", 180);
const PUBLISH_MS = env("OUTBOX_KILL_PUBLISH_MS", 1);

function startRelay(url: string, logFile: string) {
  const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "relay-process.ts")], {
    env: { ...process.env, DATABASE_URL: url, RELAY_LEASE_MS: String(LEASE_MS), RELAY_BATCH_SIZE: String(BATCH), RELAY_WORKERS: "1", RELAY_PUBLISH_LOG: logFile, RELAY_PUBLISH_MS: String(PUBLISH_MS) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => d.toString().includes("started") && resolve());
    child.on("exit", (code, signal) => reject(new Error(`relay exited (${code ?? signal}) before it started`)));
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  return { child, ready, exited };
}

async function drain(pool: pg.Pool, url: string, kill: boolean) {
  await pool.query(`TRUNCATE ${TABLE}`);
  await pool.query(
    `INSERT INTO ${TABLE} (id, topic, key, payload)
     SELECT gen_random_uuid(), 'bench', 'key-' || (i % $2::integer), '{"json":"' || repeat('x', 120) || '"}' FROM generate_series(1, $1::integer) AS i`,
    [MESSAGES, KEYS],
  );
  await pool.query(`VACUUM ANALYZE ${TABLE}`);
  const stats0 = (await pool.query(`SELECT autovacuum_count::int AS n FROM pg_stat_user_tables WHERE relname = $1`, [TABLE])).rows[0];
  const dir = mkdtempSync(join(tmpdir(), "txonce-kills-"));
  let serial = 0;
  const relays = Array.from({ length: RELAYS }, () => startRelay(url, join(dir, `${++serial}.log`)));
  let kills = 0;
  let maxDead = 0;
  try {
    await Promise.all(relays.map((r) => r.ready));
    const t0 = performance.now();
    let lastKill = t0;
    for (;;) {
      const { rows } = await pool.query(
        `SELECT count(*) FILTER (WHERE published_at IS NULL AND dead_at IS NULL)::int AS pending, count(*) FILTER (WHERE lease_token IS NOT NULL)::int AS leased,
           (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1)::int AS dead FROM ${TABLE}`,
        [TABLE],
      );
      maxDead = Math.max(maxDead, rows[0].dead);
      if (rows[0].pending === 0 && rows[0].leased === 0) break;
      if ((performance.now() - t0) / 1000 > CAP_SECONDS) {
        log(`  stopped after ${CAP_SECONDS} s with ${num(rows[0].pending)} pending`);
        break;
      }
      if (kill && performance.now() - lastKill > EVERY_SECONDS * 1000) {
        const i = Math.floor(Math.random() * RELAYS);
        relays[i]!.child.kill("SIGKILL");
        await relays[i]!.exited;
        kills++;
        relays[i] = startRelay(url, join(dir, `${++serial}.log`));
        await relays[i]!.ready;
        lastKill = performance.now();
      }
      await sleep(50);
    }
    const seconds = (performance.now() - t0) / 1000;
    const handOffs = new Map<string, number>();
    for (const file of readdirSync(dir)) {
      for (const id of readFileSync(join(dir, file), "utf8").split("\n")) if (id) handOffs.set(id, (handOffs.get(id) ?? 0) + 1);
    }
    const { rows: a } = await pool.query(
      `SELECT sum(attempts)::int AS charged, max(attempts)::int AS max, count(*) FILTER (WHERE attempts > 1)::int AS over_one,
         count(*) FILTER (WHERE published_at IS NOT NULL)::int AS published FROM ${TABLE}`,
    );
    const { rows: s } = await pool.query(`SELECT n_dead_tup::int AS dead, autovacuum_count::int AS autovacuums FROM pg_stat_user_tables WHERE relname = $1`, [TABLE]);
    const handed = [...handOffs.values()].reduce((x, y) => x + y, 0);
    return {
      kills, seconds, rate: a[0].published / seconds, handed, twice: [...handOffs.values()].filter((n) => n > 1).length,
      charged: a[0].charged, maxAttempts: a[0].max, overOne: a[0].over_one, dead: s[0].dead, maxDead, autovacuums: s[0].autovacuums - stats0.n,
    };
  } finally {
    for (const r of relays) r.child.kill("SIGKILL");
    await Promise.all(relays.map((r) => r.exited));
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function killBench(pool: pg.Pool, url: string, label = "") {
  log(`Drain with relays killed (${num(MESSAGES)} messages on ${num(KEYS)} keys, ${RELAYS} relay processes, batchSize ${BATCH}, publish ${PUBLISH_MS} ms, lease ${LEASE_MS} ms, ` +
    `one SIGKILLed every ${EVERY_SECONDS} s)${label}`);
  log(`load: ${loadavg()}`);
  const rows: string[][] = [];
  for (const kill of [false, true]) {
    const d = await drain(pool, url, kill);
    rows.push([
      kill ? `killed every ${EVERY_SECONDS} s` : "no kills", String(d.kills), fmt(d.seconds, 1), num(d.rate), num(d.handed), num(d.twice),
      num(d.charged), String(d.maxAttempts), num(d.overOne), num(d.maxDead), num(d.dead), String(d.autovacuums),
    ]);
  }
  table(["relays", "kills", "seconds", "msg/s", "hand-offs", "handed twice+", "attempts charged", "max attempts", "attempts > 1", "max dead tuples", "dead at end", "autovacuums"], rows);
  log(`load: ${loadavg()}`);
  log();
}
