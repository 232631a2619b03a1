/**
 * Cleanup benchmark (issue 3): how fast `txonce(prisma).cleanup()` prunes expired idempotency
 * records, and what it does to live `withIdempotency` traffic while it runs.
 *
 *   npm run bench -- cleanup
 *
 * 1. Live traffic with and without cleanup: CLEANUP_CONCURRENCY (4) workers calling
 *    withIdempotency back to back, each call a first execution that inserts a charge; one call in
 *    CLEANUP_REPLACE_EVERY (5) uses the key of a seeded expired record (the claim replaces it,
 *    or inserts it when cleanup already got it). CLEANUP_ROUNDS (4) rounds of two windows of
 *    CLEANUP_WINDOW_SECONDS (2): one without cleanup, one while cleanup() (default batch size)
 *    runs on the seeded rows; the order alternates per round. The ratio is p(with) / p(without)
 *    over all calls of all rounds (target: p99 ratio <= 2).
 * 2. Rows pruned per second: the expired rows topped up to CLEANUP_ROWS (1,000,000) with
 *    generate_series (then VACUUM ANALYZE, CHECKPOINT), pruned by cleanup() alone at batch size
 *    1000 (the default); then CLEANUP_ROWS seeded again and pruned at 10,000. Reports rows/s and
 *    the duration of one batch (p50 / max): a batch is one statement, so it is also the longest
 *    a live call can wait on cleanup.
 */
import { randomBytes } from "node:crypto";
import { txonce } from "../src/adapters/prisma.js";
import { IDEMPOTENCY_TABLE } from "../src/sql/postgres.js";
import {
  env, fmt, hostBusySince, hostCpu, loadavg, log, median, num, pct, percentile, sorted, table,
  type BenchContext,
} from "./common.js";

const ROWS = Math.round(env("CLEANUP_ROWS", 1_000_000));
const CONCURRENCY = Math.max(1, Math.round(env("CLEANUP_CONCURRENCY", 4)));
const ROUNDS = Math.max(1, Math.round(env("CLEANUP_ROUNDS", 4)));
const WINDOW_SECONDS = env("CLEANUP_WINDOW_SECONDS", 2);
const REPLACE_EVERY = Math.max(1, Math.round(env("CLEANUP_REPLACE_EVERY", 5)));
const BATCH_SIZES = (process.env.CLEANUP_BATCH_SIZES ?? "1000,10000").split(",").map(Number);

/** A stored result of realistic size (an encoded charge, ~150 bytes). */
const RESULT = JSON.stringify({
  json: { id: 123456, accountId: "bench", amount: "12.50", createdAt: "2026-11-25T10:00:00.000Z" },
  meta: { values: { amount: [["custom", "Prisma.Decimal"]], createdAt: ["Date"] } },
});

export async function cleanupBench({ prisma, pool }: BenchContext) {
  const t = txonce(prisma);
  log("Cleanup (issue 3)");
  log(`settings: ${num(ROWS)} expired rows per run, batch sizes ${BATCH_SIZES.join(", ")}; traffic: ${CONCURRENCY} workers, ` +
    `1 call in ${REPLACE_EVERY} replaces an expired key, ${ROUNDS} rounds x (${WINDOW_SECONDS}s without + ${WINDOW_SECONDS}s with cleanup)`);
  log(`load: ${loadavg()}`);

  /** Seeds `n` expired rows named `${prefix}${i}`, expired 1-2 days ago (spread), and returns how long it took. */
  const seed = async (prefix: string, n: number) => {
    await pool.query(`VACUUM ${IDEMPOTENCY_TABLE}`);
    const t0 = performance.now();
    await pool.query(
      `INSERT INTO ${IDEMPOTENCY_TABLE} (scope, key, fingerprint, result, created_at, expires_at)
       SELECT '', $1::text || g, NULL, $2::text,
              now() - interval '4 days' + g * interval '100 ms', now() - interval '2 days' + g * interval '100 ms' * 0.864
       FROM generate_series(1, $3::integer) AS g`,
      [prefix, RESULT, n],
    );
    const seconds = (performance.now() - t0) / 1000;
    await pool.query(`VACUUM ANALYZE ${IDEMPOTENCY_TABLE}`);
    await pool.query("CHECKPOINT");
    return seconds;
  };

  // 1. withIdempotency latency with and without cleanup running.
  // Traffic first, on ROWS expired rows; what it deletes is then topped up, so the first solo
  // run below starts from exactly ROWS expired rows again.
  const seedSeconds = await seed("live-exp-", ROWS);
  log(`  seeded ${num(ROWS)} expired rows in ${fmt(seedSeconds, 1)}s (generate_series, one INSERT)`);
  const tag = randomBytes(3).toString("hex");
  let serial = 0;
  let calls = 0;
  // Expired keys to replace, picked in a scattered order (cleanup deletes oldest first).
  const stride = 7919; // prime, coprime to ROWS unless ROWS is a multiple of it
  let replaceCursor = 0;
  const nextExpiredKey = () => `live-exp-${((replaceCursor++ * stride) % ROWS) + 1}`;
  const call = () => {
    const key = ++calls % REPLACE_EVERY === 0 ? nextExpiredKey() : `${tag}-c-${++serial}`;
    return t.withIdempotency(key, (tx) => tx.charge.create({ data: { accountId: "bench", amount: 1 } }));
  };

  const window = async (seconds: number) => {
    const latencies: number[] = [];
    let errors = 0;
    let firstError: string | undefined;
    const deadline = performance.now() + seconds * 1000;
    const host0 = hostCpu();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() < deadline) {
          const start = performance.now();
          try {
            await call();
            latencies.push(performance.now() - start);
          } catch (error) {
            errors++;
            firstError ??= String((error as Error)?.message ?? error).split("\n")[0];
          }
        }
      }),
    );
    return { latencies, errors, firstError, busy: hostBusySince(host0), seconds };
  };
  type Window = Awaited<ReturnType<typeof window>> & { deleted?: number; batches?: number; batchMs?: number[] };
  const without: Window[] = [];
  const withCleanup: Window[] = [];
  const runWith = async () => {
    const abort = new AbortController();
    const batchMs: number[] = [];
    let last = performance.now();
    const cleanup = t.cleanup({
      maxDuration: WINDOW_SECONDS * 1000,
      signal: abort.signal,
      onBatch: () => {
        const now = performance.now();
        batchMs.push(now - last);
        last = now;
      },
    });
    const w = await window(WINDOW_SECONDS);
    abort.abort();
    const r = await cleanup;
    withCleanup.push({ ...w, deleted: r.deleted, batches: r.batches, batchMs });
    if (r.finished) log("  warning: cleanup ran out of expired rows during a window; raise CLEANUP_ROWS");
  };
  const runWithout = async () => void without.push(await window(WINDOW_SECONDS));

  await window(0.5); // warm-up
  for (let round = 0; round < ROUNDS; round++) {
    await pool.query("CHECKPOINT");
    if (round % 2 === 0) {
      await runWithout();
      await runWith();
    } else {
      await runWith();
      await runWithout();
    }
  }

  const sum = (ws: Window[]) => {
    const l = sorted(ws.flatMap((w) => w.latencies));
    const rates = ws.map((w) => w.latencies.length / w.seconds);
    return {
      calls: l.length, rate: median(rates), p50: percentile(l, 50), p99: percentile(l, 99), max: l[l.length - 1]!,
      errors: ws.reduce((a, w) => a + w.errors, 0), firstError: ws.find((w) => w.firstError)?.firstError,
      busy: median(ws.map((w) => w.busy ?? NaN)),
    };
  };
  const a = sum(without);
  const b = sum(withCleanup);
  const deleted = withCleanup.reduce((s, w) => s + (w.deleted ?? 0), 0);
  const batchMs = sorted(withCleanup.flatMap((w) => w.batchMs ?? []));
  const rowsPerSecond = deleted / (withCleanup.length * WINDOW_SECONDS);
  log(`withIdempotency latency with and without cleanup (${CONCURRENCY} workers, first executions, 1 in ${REPLACE_EVERY} on an expired key; ` +
    `calls/s: median of rounds; percentiles over all calls of ${ROUNDS} rounds):`);
  table(
    ["traffic", "calls", "calls/s", "p50 ms", "p99 ms", "max ms", "errors", "host busy"],
    [
      ["without cleanup", String(a.calls), fmt(a.rate), fmt(a.p50, 2), fmt(a.p99, 2), fmt(a.max, 1), String(a.errors), pct(a.busy)],
      ["while cleanup runs", String(b.calls), fmt(b.rate), fmt(b.p50, 2), fmt(b.p99, 2), fmt(b.max, 1), String(b.errors), pct(b.busy)],
      ["ratio", "", `${fmt(b.rate / a.rate, 2)}x`, `${fmt(b.p50 / a.p50, 2)}x`, `${fmt(b.p99 / a.p99, 2)}x`, `${fmt(b.max / a.max, 2)}x`, "", ""],
    ],
  );
  if (a.firstError || b.firstError) log(`  first error: ${a.firstError ?? b.firstError}`);
  const perRound = withCleanup.map((w, i) => {
    const x = sorted(w.latencies);
    const y = sorted(without[i]!.latencies);
    return percentile(x, 99) / percentile(y, 99);
  });
  log(`  per-round p99 ratios: ${perRound.map((r) => fmt(r, 2)).join(", ")} (median ${fmt(median(perRound), 2)})`);
  log(`  cleanup meanwhile: ${num(deleted)} rows deleted in ${withCleanup.reduce((s, w) => s + (w.batches ?? 0), 0)} batches, ` +
    `${num(rowsPerSecond)} rows/s under traffic; batch p50 ${fmt(percentile(batchMs, 50), 1)} ms, max ${fmt(batchMs[batchMs.length - 1]!, 1)} ms`);
  const p99Ratio = b.p99 / a.p99;
  log(`  target p99 ratio <= 2: ${fmt(p99Ratio, 2)}x, ${p99Ratio <= 2 ? "meets" : "misses"} it`);
  log();
  // 2. Rows pruned per second, cleanup alone.
  const solo: string[][] = [];
  for (const [i, batchSize] of BATCH_SIZES.entries()) {
    const expired = Number((await pool.query(`SELECT count(*) AS n FROM ${IDEMPOTENCY_TABLE} WHERE expires_at <= now()`)).rows[0].n);
    const seedSeconds = await seed(`exp${batchSize}-${i}-`, ROWS - expired);
    const batchMs: number[] = [];
    let last = performance.now();
    const host0 = hostCpu();
    const result = await t.cleanup({
      batchSize,
      maxDuration: "10m",
      onBatch: () => {
        const now = performance.now();
        batchMs.push(now - last);
        last = now;
      },
    });
    const busy = hostBusySince(host0);
    const left = (await pool.query(`SELECT count(*)::int AS n FROM ${IDEMPOTENCY_TABLE} WHERE expires_at <= now()`)).rows[0].n;
    const b = sorted(batchMs);
    solo.push([
      String(batchSize), num(result.deleted), String(result.batches), fmt(result.durationMs / 1000, 2),
      num(result.deleted / (result.durationMs / 1000)), fmt(percentile(b, 50), 1), fmt(b[b.length - 1]!, 1),
      pct(busy), String(left), fmt(seedSeconds, 1),
    ]);
    log(`  batch ${batchSize}: ${num(result.deleted)} rows in ${fmt(result.durationMs / 1000, 2)}s (seeded in ${fmt(seedSeconds, 1)}s), finished=${result.finished}`);
  }
  log();
  log(`Rows pruned per second, cleanup alone on ${num(ROWS)} expired rows (one batch = one DELETE statement):`);
  table(["batch size", "deleted", "batches", "seconds", "rows/s", "batch p50 ms", "batch max ms", "host busy", "expired left", "seed/top-up s"], solo);
  log();
}
