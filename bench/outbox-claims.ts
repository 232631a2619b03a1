/**
 * What one claim of the relay costs as the backlog grows: buffers read (EXPLAIN (ANALYZE,
 * BUFFERS), rolled back) and latency, at each backlog size of OUTBOX_CLAIM_SIZES (default
 * "10000,100000"; "10000,100000,1000000" for the docs: 1M takes a few minutes on 2 cores), for
 * three shapes of backlog: unkeyed, 10 hot keys, and many keys (size / 10 keys of 10 messages).
 *
 * Each case fills the table with INSERT ... generate_series (codec text of 130 bytes), VACUUM
 * ANALYZEs it, then runs claim rounds like a relay with a no-op publisher: the claim (timed, over
 * plain pg), then the relay's recordProgress marking what it leased published. Before each
 * claim, the same claim under EXPLAIN (ANALYZE, BUFFERS) in a rolled-back transaction gives its
 * buffers (shared hit + read). OUTBOX_CLAIM_ROUNDS (200) rounds or OUTBOX_CLAIM_SECONDS (10)
 * seconds per case, whichever ends first, and never more than half the backlog (so every claim
 * finds a full batch). batchSize 100 and claimLimit 1,000 (the defaults).
 *
 * OUTBOX_CLAIM_BEFORE=1 also measures the relay of main before issue 13 (its claim statement,
 * its run claim, its mark statement and its two indexes, inlined below), on the same backlogs.
 */
import type pg from "pg";
import * as sql from "../src/sql/postgres.js";
import { KEYS_WALKED_PER_MESSAGE } from "../src/outbox/relay.js";
import { env, fmt, loadavg, log, num, percentile, sorted, table } from "./common.js";

const SIZES = (process.env.OUTBOX_CLAIM_SIZES ?? "10000,100000").split(",").map(Number);
const ROUNDS = Math.round(env("OUTBOX_CLAIM_ROUNDS", 200));
const SECONDS = env("OUTBOX_CLAIM_SECONDS", 10);
const BEFORE = process.env.OUTBOX_CLAIM_BEFORE === "1";
const BATCH = 100;
const CLAIM_LIMIT = 10 * BATCH;
const LEASE_MS = 30_000;

interface Strategy {
  name: string;
  /** Puts the strategy's indexes in place (and takes the others away). */
  indexes(pool: pg.Pool): Promise<void>;
  /** What one claim would cost now: EXPLAIN (ANALYZE, BUFFERS), rolled back. */
  explain(client: pg.PoolClient, token: string, cursor: string): Promise<{ buffers: number; serverMs: number }>;
  /** One claim: the leased rows, and the cursor for the next. */
  claim(client: pg.PoolClient, token: string, cursor: string): Promise<{ ids: string[]; cursor: string }>;
  markPublished(client: pg.PoolClient, ids: string[], token: string): Promise<unknown>;
}

const NEW_INDEXES = [
  `CREATE INDEX IF NOT EXISTS txonce_outbox_messages_state_key_seq_idx ON ${sql.OUTBOX_TABLE} (published_at, dead_at, key, seq)`,
  `CREATE INDEX IF NOT EXISTS txonce_outbox_messages_state_key_available_at_idx ON ${sql.OUTBOX_TABLE} (published_at, dead_at, key, available_at)`,
];
const OLD_INDEXES = [
  `CREATE INDEX IF NOT EXISTS txonce_outbox_messages_published_at_dead_at_seq_idx ON ${sql.OUTBOX_TABLE} (published_at, dead_at, seq)`,
  `CREATE INDEX IF NOT EXISTS txonce_outbox_messages_key_published_at_dead_at_seq_idx ON ${sql.OUTBOX_TABLE} (key, published_at, dead_at, seq)`,
];
const dropIndexes = (names: string[]) => names.map((n) => `DROP INDEX IF EXISTS ${n.match(/EXISTS (\S+)/)![1]}`);

async function explained(client: pg.PoolClient, text: string, params: unknown[]) {
  await client.query("BEGIN");
  try {
    const plan = (await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`, params)).rows[0]["QUERY PLAN"][0];
    return { buffers: Number(plan.Plan["Shared Hit Blocks"]) + Number(plan.Plan["Shared Read Blocks"]), serverMs: Number(plan["Execution Time"]) };
  } finally {
    await client.query("ROLLBACK");
  }
}

const shipped: Strategy = {
  name: "this branch",
  async indexes(pool) {
    for (const s of [...dropIndexes(OLD_INDEXES), ...NEW_INDEXES]) await pool.query(s);
  },
  explain: (client, token, cursor) => explained(client, sql.claimMessages, [BATCH, LEASE_MS, token, cursor, BATCH * KEYS_WALKED_PER_MESSAGE, CLAIM_LIMIT]),
  async claim(client, token, cursor) {
    const rows = (await client.query(sql.claimMessages, [BATCH, LEASE_MS, token, cursor, BATCH * KEYS_WALKED_PER_MESSAGE, CLAIM_LIMIT])).rows;
    const ids = rows.filter((r) => r.id !== null).map((r) => r.id as string);
    return { ids, cursor: rows[0]?.walked_to_end === false ? String(rows[0].resume_after) : "" };
  },
  markPublished: (client, ids, token) =>
    client.query(sql.recordProgress, [JSON.stringify(ids.map((id) => ({ id, token, charge: 1, outcome: "published" }))), false]),
};

// main before issue 13 (commit 06a1ea1): the claim, the run claim sent when heads were claimed, the mark.
const OLD_CLAIM = `
WITH due AS (
  SELECT m.id FROM ${sql.OUTBOX_TABLE} m
  WHERE m.published_at IS NULL AND m.dead_at IS NULL AND m.available_at <= now()
    AND (m.lease_until IS NULL OR m.lease_until < now())
    AND (m.key IS NULL OR NOT EXISTS (
      SELECT 1 FROM ${sql.OUTBOX_TABLE} p
      WHERE p.key = m.key AND p.published_at IS NULL AND p.dead_at IS NULL AND p.seq < m.seq))
  ORDER BY m.published_at, m.dead_at, m.seq
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
)
UPDATE ${sql.OUTBOX_TABLE} m
SET lease_until = now() + $2::double precision * interval '1 millisecond', lease_token = $3::uuid, attempts = m.attempts + 1
FROM due WHERE m.id = due.id
RETURNING m.id::text AS id, m.key`;
const OLD_RUNS = `
WITH runs AS (
  SELECT next.id, bool_and(next.available_at <= now() AND (next.lease_until IS NULL OR next.lease_until < now()))
    OVER (PARTITION BY heads.key ORDER BY next.seq) AS unbroken
  FROM unnest($1::text[]) AS heads(key),
  LATERAL (
    SELECT p.id, p.seq, p.available_at, p.lease_until FROM ${sql.OUTBOX_TABLE} p
    WHERE p.key = heads.key AND p.published_at IS NULL AND p.dead_at IS NULL
    ORDER BY p.key, p.published_at, p.dead_at, p.seq
    OFFSET 1 LIMIT $2::integer
  ) AS next
)
UPDATE ${sql.OUTBOX_TABLE} m
SET lease_until = now() + $3::double precision * interval '1 millisecond', lease_token = $4::uuid, attempts = m.attempts + 1
FROM runs WHERE m.id = runs.id AND runs.unbroken
RETURNING m.id::text AS id`;
const OLD_MARK = `
UPDATE ${sql.OUTBOX_TABLE} SET published_at = now(), lease_until = NULL, lease_token = NULL
WHERE id = ANY($1::uuid[]) AND lease_token = $2::uuid`;

const before: Strategy = {
  name: "main before issue 13",
  async indexes(pool) {
    for (const s of [...dropIndexes(NEW_INDEXES), ...OLD_INDEXES]) await pool.query(s);
  },
  async explain(client, token) {
    // The run claim as it would follow: explained inside the same rolled-back transaction as the claim.
    await client.query("BEGIN");
    try {
      const plan = async (text: string, params: unknown[]) => (await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`, params)).rows[0]["QUERY PLAN"][0];
      const claim = await plan(OLD_CLAIM, [BATCH, LEASE_MS, token]);
      const keys = (await client.query("SELECT DISTINCT key FROM txonce_outbox_messages WHERE lease_token = $1 AND key IS NOT NULL", [token])).rows.map((r) => r.key as string);
      const runs = keys.length > 0 ? await plan(OLD_RUNS, [keys, BATCH, LEASE_MS, token]) : undefined;
      const buffers = (p: { Plan: Record<string, number> } | undefined) => (p ? Number(p.Plan["Shared Hit Blocks"]) + Number(p.Plan["Shared Read Blocks"]) : 0);
      return { buffers: buffers(claim) + buffers(runs), serverMs: Number(claim["Execution Time"]) + Number(runs?.["Execution Time"] ?? 0) };
    } finally {
      await client.query("ROLLBACK");
    }
  },
  async claim(client, token) {
    const heads = (await client.query(OLD_CLAIM, [BATCH, LEASE_MS, token])).rows;
    const keys = [...new Set(heads.flatMap((r) => (r.key ? [r.key as string] : [])))];
    const ids = heads.map((r) => r.id as string);
    if (keys.length > 0) ids.push(...(await client.query(OLD_RUNS, [keys, BATCH, LEASE_MS, token])).rows.map((r) => r.id as string));
    return { ids, cursor: "" };
  },
  markPublished: (client, ids, token) => client.query(OLD_MARK, [ids, token]),
};

export async function claimBench(pool: pg.Pool) {
  log(`Claim cost by backlog (batchSize ${BATCH}, claimLimit ${CLAIM_LIMIT}; sizes ${SIZES.map(num).join(", ")}; ${ROUNDS} rounds or ${SECONDS} s per case${BEFORE ? "; with main before issue 13" : ""})`);
  log(`load: ${loadavg()}`);
  const shapes: [string, (n: number) => number][] = [
    ["unkeyed", () => 0],
    ["10 hot keys", () => 10],
    ["many keys (n/10)", (n) => n / 10],
  ];
  const rows: string[][] = [];
  const strategies = BEFORE ? [before, shipped] : [shipped];
  try {
    for (const strategy of strategies) {
      await strategy.indexes(pool);
      for (const size of SIZES) {
        for (const [shape, keysFor] of shapes) {
          const keys = keysFor(size);
          await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
          await pool.query(
            `INSERT INTO ${sql.OUTBOX_TABLE} (id, topic, key, payload)
             SELECT gen_random_uuid(), 'bench', CASE WHEN $2::integer = 0 THEN NULL ELSE 'key-' || (i % $2::integer) END, '{"json":"' || repeat('x', 120) || '"}'
             FROM generate_series(1, $1::integer) AS i`,
            [size, keys],
          );
          await pool.query(`VACUUM ANALYZE ${sql.OUTBOX_TABLE}`);
          const client = await pool.connect();
          const latencies: number[] = [];
          const buffers: number[] = [];
          let leased = 0;
          let cursor = "";
          try {
            const deadline = performance.now() + SECONDS * 1000;
            for (let round = 0; round < Math.min(ROUNDS, size / CLAIM_LIMIT / 2) && performance.now() < deadline; round++) {
              const token = crypto.randomUUID();
              const cost = await strategy.explain(client, token, cursor);
              const t0 = performance.now();
              const from = cursor;
              const claimed = await strategy.claim(client, token, cursor);
              const ms = performance.now() - t0;
              cursor = claimed.cursor;
              if (claimed.ids.length === 0) {
                if (from === "") break; // drained (main's claims lease far more than batchSize)
                continue; // the walk reached the last key: it starts again from the first
              }
              buffers.push(cost.buffers);
              latencies.push(ms);
              leased += claimed.ids.length;
              await strategy.markPublished(client, claimed.ids, token);
            }
          } finally {
            client.release();
          }
          const dead = (await pool.query(`SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1`, [sql.OUTBOX_TABLE])).rows[0]?.n_dead_tup;
          const l = sorted(latencies);
          const b = sorted(buffers);
          rows.push([
            strategy.name, num(size), shape, String(latencies.length), fmt(leased / Math.max(1, latencies.length), 0),
            fmt(percentile(l, 50), 1), fmt(percentile(l, 99), 1), num(buffers[0] ?? NaN), num(percentile(b, 50)), num(percentile(b, 99)), num(Number(dead)),
          ]);
          log(`  ${strategy.name}, ${num(size)} ${shape}: claim p50 ${fmt(percentile(l, 50), 1)} ms, buffers p50 ${num(percentile(b, 50))}`);
        }
      }
    }
  } finally {
    await shipped.indexes(pool);
    await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
  }
  log();
  log("Claim cost: latency = the claim statement's wall time over plain pg; buffers = shared hit + read of the same claim under EXPLAIN (ANALYZE, BUFFERS), rolled back;");
  log("dead = n_dead_tup of the table after the rounds (statistics, approximate):");
  table(["relay", "pending", "backlog", "claims", "leased/claim", "p50 ms", "p99 ms", "buffers first", "buffers p50", "buffers p99", "dead"], rows);
  log(`load: ${loadavg()}`);
  log();
}
