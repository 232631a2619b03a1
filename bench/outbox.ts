/**
 * Outbox benchmark (issues 4 and 13): relay throughput with a no-op publisher, commit-to-publish
 * latency with NOTIFY and with polling, and the same work done with pg-boss 10 on the same
 * database; then what a claim costs as the backlog grows (bench/outbox-claims.ts) and drains with
 * relays killed every few seconds (bench/outbox-kills.ts). OUTBOX_PARTS picks among "throughput",
 * "claims" and "kills" (default: all three).
 *
 *   npm run bench -- outbox
 *
 * Throughput: OUTBOX_GRID_MESSAGES (20,000) messages pre-enqueued with outbox.enqueueMany (1,000
 * per transaction, through Prisma), then the relay (txonce(prisma).outbox.relay, no-op publisher)
 * is started and timed until onPublished has seen them all (claimed, published, marked), for
 * batchSize 100/500/1000 x workers 1/2/4; then the default (batchSize 100, 1 worker) and the
 * best of the grid again on OUTBOX_MESSAGES (100,000). The outbox table is truncated before each
 * case. pg-boss: the same messages inserted into a queue of their own, `boss.work()` workers with
 * a no-op handler (pg-boss marks the jobs completed), timed until all are `completed` in the
 * database, or for at most OUTBOX_BOSS_CAP_SECONDS (2) in the grid: pg-boss 10 workers poll
 * (at least every 0.5 s) and sleep between fetches even when the queue is full, so its rate is
 * bounded by workers x batchSize / pollingInterval.
 *
 * Latency: a producer commits OUTBOX_LATENCY_RATE (100) transactions per second for
 * OUTBOX_LATENCY_SECONDS (3), each `prisma.$transaction(tx => outbox.enqueue(tx, ...))` (pg-boss:
 * `boss.send(queue, data, { db: <the Prisma transaction> })`); the latency of a message is from
 * the moment its producer's $transaction resolved to the moment the publisher (pg-boss: the
 * handler) is called with it. OUTBOX_LATENCY_ROUNDS (2) interleaved rounds; percentiles over all
 * messages.
 *
 * Then where the relay's time goes: statements per batch and their wall time (the relay run over
 * an instrumented executor), the relay over plain pg (txonce/pg) instead of Prisma, EXPLAIN
 * ANALYZE of claimMessages, per-key ordering (keyed messages) and a CPU profile of a drain.
 */
import { Session } from "node:inspector/promises";
import { readFileSync } from "node:fs";
import PgBoss from "pg-boss";
import pg from "pg";
import { txonce } from "../src/adapters/prisma.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { createRelay, KEYS_WALKED_PER_MESSAGE, type RelayOptions } from "../src/outbox/relay.js";
import type { Row, SqlExecutor } from "../src/executor.js";
import * as sql from "../src/sql/postgres.js";
import { claimBench } from "./outbox-claims.js";
import { churnBench } from "./outbox-churn.js";
import { killBench } from "./outbox-kills.js";
import {
  env, fmt, hostBusySince, hostCpu, loadavg, log, median, num, pct, percentile, sleep, sorted, table,
  type BenchContext,
} from "./common.js";

const GRID_MESSAGES = Math.round(env("OUTBOX_GRID_MESSAGES", 20_000));
const MESSAGES = Math.round(env("OUTBOX_MESSAGES", 100_000));
const BOSS_CAP_SECONDS = env("OUTBOX_BOSS_CAP_SECONDS", 2);
const LAT_RATE = env("OUTBOX_LATENCY_RATE", 100);
const LAT_SECONDS = env("OUTBOX_LATENCY_SECONDS", 3);
const LAT_ROUNDS = Math.max(1, Math.round(env("OUTBOX_LATENCY_ROUNDS", 2)));
const BATCH_SIZES = (process.env.OUTBOX_BATCH_SIZES ?? "100,500,1000").split(",").map(Number);
const WORKERS = (process.env.OUTBOX_WORKERS ?? "1,2,4").split(",").map(Number);
/** "0": none; "1" (default): EXPLAIN of the claim and what-if drains; "full": also statement timings, Prisma vs pg, keyed messages, a CPU profile. */
const ANALYSIS = process.env.OUTBOX_ANALYSIS ?? "1";
/**
 * Which parts run: "throughput" (grid, full backlog, latency and the analysis), "claims"
 * (bench/outbox-claims.ts), "kills" (bench/outbox-kills.ts), "churn" (bench/outbox-churn.ts,
 * minutes long: not in the default).
 */
const PARTS = (process.env.OUTBOX_PARTS ?? "throughput,claims,kills").split(",");
const ENQUEUE_CHUNK = 1000;
const KEYED_CAP_SECONDS = env("OUTBOX_KEYED_CAP_SECONDS", 5);
const TOPIC = "bench.order-paid";

/** The claim's parameters for an EXPLAIN: batch size, lease, a token, the walk from the first key. */
const claimParams = (batchSize: number) => [batchSize, 30_000, "00000000-0000-4000-8000-000000000000", "", batchSize * KEYS_WALKED_PER_MESSAGE, batchSize * 10];

const payload = (i: number) => ({ orderId: i, customerId: `c-${i % 997}`, amount: "12.50", currency: "EUR", status: "paid" });

interface Drain {
  done: number;
  seconds: number;
  rate: number;
  cpuUsPerMsg: number;
  busy: number | undefined;
}

export async function outboxBench(context: BenchContext) {
  for (const part of PARTS) if (!["throughput", "claims", "kills", "churn"].includes(part)) throw new Error(`OUTBOX_PARTS: unknown part ${part}`);
  if (PARTS.includes("throughput")) await throughputBench(context);
  if (PARTS.includes("claims")) await claimBench(context.pool);
  if (PARTS.includes("kills")) await killBench(context.pool, context.url);
  if (PARTS.includes("churn")) await churnBench(context.pool, context.url);
}

async function throughputBench({ prisma, pool, url }: BenchContext) {
  const t = txonce(prisma);
  const tPg = txoncePg(pool);
  log("Outbox (issue 4)");
  log(`settings: grid ${num(GRID_MESSAGES)} messages per case (batchSize ${BATCH_SIZES.join("/")} x workers ${WORKERS.join("/")}), ` +
    `default and best on ${num(MESSAGES)}; latency ${LAT_RATE} commits/s x ${LAT_SECONDS}s x ${LAT_ROUNDS} rounds`);
  log(`pg-boss ${bossVersion()} (schema pgboss in the same database, supervise/schedule off, its own pg pool max 10)`);
  log(`load: ${loadavg()}`);

  // -------------------------------------------------------------------------------------------
  // Helpers: backlogs, drains.
  const resetOutbox = () => pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
  /** Enqueues n messages with enqueueMany, ENQUEUE_CHUNK per Prisma transaction, 4 transactions at a time. */
  const enqueue = async (n: number, keyOf?: (i: number) => string) => {
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (next < n) {
          const from = next;
          next = Math.min(n, next + ENQUEUE_CHUNK);
          const messages = Array.from({ length: next - from }, (_, j) => ({
            topic: TOPIC, payload: payload(from + j), key: keyOf?.(from + j),
          }));
          await prisma.$transaction((tx) => t.outbox.enqueueMany(tx, messages));
        }
      }),
    );
    return n / ((performance.now() - t0) / 1000);
  };

  type RelayFactory = (options: RelayOptions) => { start(): Promise<void>; stop(): Promise<void> };
  const overPrisma: RelayFactory = (o) => t.outbox.relay(o);
  const overPg: RelayFactory = (o) => tPg.outbox.relay(o);
  /** Starts a relay on the backlog and times it until `n` messages were published and marked. */
  const drainTxonce = async (n: number, options: Partial<RelayOptions>, factory: RelayFactory = overPrisma, capSeconds = 120): Promise<Drain> => {
    await pool.query("CHECKPOINT");
    let done = 0;
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const relay = factory({
      publisher: async () => {},
      ...options,
      onPublished: (messages) => {
        done += messages.length;
        if (done >= n) finish();
      },
      onError: (error) => log(`  relay error: ${String(error).split("\n")[0]}`),
    });
    const cpu0 = process.cpuUsage();
    const host0 = hostCpu();
    const t0 = performance.now();
    await relay.start();
    await Promise.race([finished, sleep(capSeconds * 1000)]);
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const busy = hostBusySince(host0);
    await relay.stop();
    return { done, seconds, rate: done / seconds, cpuUsPerMsg: (cpu.user + cpu.system) / Math.max(1, done), busy };
  };

  // pg-boss on the same database.
  const boss = new PgBoss({ connectionString: url, max: 10, supervise: false, schedule: false, migrate: true });
  boss.on("error", (error) => log(`  pg-boss error: ${String(error).split("\n")[0]}`));
  await boss.start();
  let queueSerial = 0;
  const newQueue = async () => {
    const name = `bench_${++queueSerial}`;
    await boss.createQueue(name);
    return name;
  };
  const bossInsert = async (queue: string, n: number) => {
    const t0 = performance.now();
    for (let from = 0; from < n; from += ENQUEUE_CHUNK) {
      const jobs = Array.from({ length: Math.min(ENQUEUE_CHUNK, n - from) }, (_, j) => ({ name: queue, data: payload(from + j) }));
      await boss.insert(jobs);
    }
    return n / ((performance.now() - t0) / 1000);
  };
  const completed = async (queue: string) =>
    Number((await pool.query("SELECT count(*) AS n FROM pgboss.job WHERE name = $1 AND state = 'completed'", [queue])).rows[0].n);
  /** `workers` x boss.work() with a no-op handler on a backlog of n; timed until n are completed (or the cap). */
  const drainBoss = async (n: number, o: { batchSize?: number; workers: number; pollingIntervalSeconds?: number }, capSeconds: number): Promise<Drain> => {
    const queue = await newQueue();
    await bossInsert(queue, n);
    await pool.query("CHECKPOINT");
    const cpu0 = process.cpuUsage();
    const host0 = hostCpu();
    const t0 = performance.now();
    const workOptions: PgBoss.WorkOptions = {};
    if (o.batchSize !== undefined) workOptions.batchSize = o.batchSize;
    if (o.pollingIntervalSeconds !== undefined) workOptions.pollingIntervalSeconds = o.pollingIntervalSeconds;
    for (let w = 0; w < o.workers; w++) await boss.work(queue, workOptions, async () => {});
    let done = 0; // completed in the database, as last counted within the window
    while ((performance.now() - t0) / 1000 < capSeconds) {
      done = await completed(queue);
      if (done >= n) break;
      await sleep(20);
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const busy = hostBusySince(host0);
    await boss.offWork(queue);
    return { done, seconds, rate: done / seconds, cpuUsPerMsg: (cpu.user + cpu.system) / Math.max(1, done), busy };
  };
  /** pg-boss without its worker loop: fetch a batch, complete it, repeat, in `workers` loops. */
  const drainBossFetchLoop = async (n: number, batchSize: number, workers: number): Promise<Drain> => {
    const queue = await newQueue();
    await bossInsert(queue, n);
    await pool.query("CHECKPOINT");
    const cpu0 = process.cpuUsage();
    const host0 = hostCpu();
    const t0 = performance.now();
    let done = 0;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        for (;;) {
          const jobs = await boss.fetch(queue, { batchSize });
          if (jobs.length === 0) break;
          await boss.complete(queue, jobs.map((j) => j.id));
          done += jobs.length;
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { done, seconds, rate: done / seconds, cpuUsPerMsg: (cpu.user + cpu.system) / Math.max(1, done), busy: hostBusySince(host0) };
  };

  const row = (name: string, d: Drain, extra: string[] = []) => [
    name, num(d.done), fmt(d.seconds, 2), num(d.rate), num(d.cpuUsPerMsg), pct(d.busy), ...extra,
  ];
  const drainHeader = ["case", "messages", "seconds", "msg/s", "node CPU µs/msg", "host busy"];

  try {
    // -----------------------------------------------------------------------------------------
    // 1. Throughput grid.
    await resetOutbox();
    const enqueueRates: number[] = [];
    await enqueue(2000);
    await drainTxonce(2000, { batchSize: 500 }); // warm-up: connections, JIT
    const grid = new Map<string, { txonce: Drain; boss: Drain }>();
    for (const batchSize of BATCH_SIZES) {
      for (const workers of WORKERS) {
        await resetOutbox();
        enqueueRates.push(await enqueue(GRID_MESSAGES));
        const a = await drainTxonce(GRID_MESSAGES, { batchSize, workers });
        const b = await drainBoss(GRID_MESSAGES, { batchSize, workers, pollingIntervalSeconds: 0.5 }, BOSS_CAP_SECONDS);
        grid.set(`${batchSize}x${workers}`, { txonce: a, boss: b });
        log(`  batch ${batchSize} x ${workers} workers: txonce ${num(a.rate)} msg/s, pg-boss ${num(b.rate)} msg/s`);
      }
    }
    log();
    log(`Throughput grid, ${num(GRID_MESSAGES)} pre-enqueued messages per case, no-op publisher / handler ` +
      `(pg-boss: work() with pollingIntervalSeconds 0.5, timed until all completed or ${BOSS_CAP_SECONDS}s):`);
    table(
      ["batchSize x workers", "txonce msg/s", "s", "node µs/msg", "host", "pg-boss msg/s", "done", "s", "txonce / pg-boss"],
      [...grid].map(([k, { txonce: a, boss: b }]) => [
        k, num(a.rate), fmt(a.seconds, 2), num(a.cpuUsPerMsg), pct(a.busy), num(b.rate), num(b.done), fmt(b.seconds, 2), `${fmt(a.rate / b.rate, 1)}x`,
      ]),
    );
    log(`  enqueue rate while building the backlogs (enqueueMany, ${ENQUEUE_CHUNK}/transaction, 4 at a time): median ${num(median(enqueueRates))} msg/s`);
    log();
    const best = (pick: (v: { txonce: Drain; boss: Drain }) => Drain) =>
      [...grid].reduce((x, y) => (pick(y[1]).rate > pick(x[1]).rate ? y : x))[0].split("x").map(Number) as [number, number];
    const [bestBatch, bestWorkers] = best((v) => v.txonce);
    const [bossBatch, bossWorkers] = best((v) => v.boss);

    // -----------------------------------------------------------------------------------------
    // 2. Default and best on the full backlog.
    const full: string[][] = [];
    await resetOutbox();
    await enqueue(MESSAGES);
    const txDefault = await drainTxonce(MESSAGES, {});
    full.push(row("txonce relay, default (batchSize 100, 1 worker)", txDefault));
    await resetOutbox();
    await enqueue(MESSAGES);
    const txBest = await drainTxonce(MESSAGES, { batchSize: bestBatch, workers: bestWorkers });
    full.push(row(`txonce relay, best of grid (batchSize ${bestBatch}, ${bestWorkers} workers)`, txBest));
    const bossBest = await drainBoss(MESSAGES, { batchSize: bossBatch, workers: bossWorkers, pollingIntervalSeconds: 0.5 }, 60);
    full.push(row(`pg-boss work(), best of grid (batchSize ${bossBatch}, ${bossWorkers} workers, poll 0.5s)`, bossBest));
    const bossDefault = await drainBoss(GRID_MESSAGES, { workers: 1 }, 4);
    full.push(row("pg-boss work(), defaults (batchSize 1, poll 2s), 4s window", bossDefault));
    const bossLoop = await drainBossFetchLoop(GRID_MESSAGES, bossBatch, bossWorkers);
    full.push(row(`pg-boss fetch()+complete() loop, no sleep (batchSize ${bossBatch}, ${bossWorkers} loops)`, bossLoop));
    log(`Relay throughput, no-op publisher (txonce: ${num(MESSAGES)} messages drained; pg-boss as noted):`);
    table(drainHeader, full);
    log(`  ratio txonce / pg-boss: best vs best ${fmt(txBest.rate / bossBest.rate, 1)}x, default vs default ${fmt(txDefault.rate / bossDefault.rate, 0)}x, ` +
      `txonce best vs pg-boss fetch loop ${fmt(txBest.rate / bossLoop.rate, 1)}x`);
    log(`  target >= 10,000 msg/s: default ${num(txDefault.rate)} (${txDefault.rate >= 10_000 ? "meets" : "misses"}), ` +
      `best ${num(txBest.rate)} (${txBest.rate >= 10_000 ? "meets" : "misses"})`);
    log();

    // -----------------------------------------------------------------------------------------
    // 3. Commit-to-publish latency.
    await resetOutbox();
    type Mode = { name: string; run(): Promise<number[]> };
    const producer = async (send: (i: number) => Promise<string>, commits: Map<string, number>) => {
      const n = Math.round(LAT_RATE * LAT_SECONDS);
      const t0 = performance.now();
      for (let i = 0; i < n; i++) {
        const due = t0 + (i * 1000) / LAT_RATE;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        const id = await send(i);
        commits.set(id, performance.now());
      }
      return n;
    };
    const collect = async (commits: Map<string, number>, published: Map<string, number>, n: number, waitMs: number) => {
      const deadline = performance.now() + waitMs;
      while (published.size < n && performance.now() < deadline) await sleep(10);
      const latencies: number[] = [];
      for (const [id, at] of commits) {
        const p = published.get(id);
        if (p !== undefined) latencies.push(p - at);
      }
      if (latencies.length < n) log(`  warning: ${n - latencies.length} of ${n} messages not seen in time`);
      return latencies;
    };
    const txonceMode = (name: string, options: Partial<RelayOptions>, waitMs: number): Mode => ({
      name,
      async run() {
        const commits = new Map<string, number>();
        const published = new Map<string, number>();
        const relay = t.outbox.relay({ publisher: async (m) => void published.set(m.id, performance.now()), ...options });
        await relay.start();
        await sleep(200);
        try {
          const n = await producer((i) => prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: TOPIC, payload: payload(i) })), commits);
          return await collect(commits, published, n, waitMs);
        } finally {
          await relay.stop();
        }
      },
    });
    const bossDb = (tx: { $queryRawUnsafe<T>(q: string, ...v: unknown[]): Promise<T> }) => ({
      executeSql: async (text: string, values: unknown[]) => ({ rows: await tx.$queryRawUnsafe<unknown[]>(text, ...values.map((v) => v ?? null)) }),
    });
    const bossMode = (name: string, options: PgBoss.WorkOptions, waitMs: number): Mode => ({
      name,
      async run() {
        const queue = await newQueue();
        const commits = new Map<string, number>();
        const published = new Map<string, number>();
        await boss.work(queue, options, async (jobs) => {
          const now = performance.now();
          for (const j of jobs) published.set(j.id, now);
        });
        await sleep(200);
        try {
          const n = await producer(async (i) => {
            const id = await prisma.$transaction((tx) => boss.send(queue, payload(i), { db: bossDb(tx) }));
            if (!id) throw new Error("pg-boss send returned no id");
            return id;
          }, commits);
          return await collect(commits, published, n, waitMs);
        } finally {
          await boss.offWork(queue);
        }
      },
    });
    const modes: Mode[] = [
      txonceMode("txonce, NOTIFY (listen), default poll 1s", { listen: { connectionString: url } }, 3000),
      txonceMode("txonce, poll only, pollInterval 1s (default)", {}, 3000),
      txonceMode("txonce, poll only, pollInterval 100ms", { pollInterval: 100 }, 2000),
      bossMode("pg-boss work(), pollingInterval 0.5s (its minimum), batchSize 100", { pollingIntervalSeconds: 0.5, batchSize: 100 }, 3000),
      bossMode("pg-boss work(), pollingInterval 2s (default), batchSize 100", { batchSize: 100 }, 5000),
    ];
    const latencies = new Map<string, number[]>();
    for (let round = 0; round < LAT_ROUNDS; round++) {
      const order = round % 2 === 0 ? modes : [...modes].reverse();
      for (const m of order) latencies.set(m.name, [...(latencies.get(m.name) ?? []), ...(await m.run())]);
    }
    log(`Commit-to-publish latency (${LAT_RATE} producer commits/s, one message each, ${LAT_SECONDS}s x ${LAT_ROUNDS} rounds; ` +
      "from the producer's $transaction resolving to the publisher / handler call):");
    const latRows = modes.map((m) => {
      const l = sorted(latencies.get(m.name)!);
      return [m.name, String(l.length), fmt(percentile(l, 50), 1), fmt(percentile(l, 99), 1), fmt(l[l.length - 1]!, 1)];
    });
    table(["mode", "messages", "p50 ms", "p99 ms", "max ms"], latRows);
    const p = (name: string, q: number) => percentile(sorted(latencies.get(name)!), q);
    const notifyP50 = p(modes[0]!.name, 50);
    log(`  ratio pg-boss (0.5s poll) / txonce NOTIFY: p50 ${fmt(p(modes[3]!.name, 50) / notifyP50, 0)}x, ` +
      `p99 ${fmt(p(modes[3]!.name, 99) / p(modes[0]!.name, 99), 0)}x; pg-boss (0.5s) / txonce poll 100ms: p50 ${fmt(p(modes[3]!.name, 50) / p(modes[2]!.name, 50), 1)}x`);
    log(`  target p50 < 10 ms with NOTIFY: ${fmt(notifyP50, 1)} ms, ${notifyP50 < 10 ? "meets" : "misses"} it`);
    log();

    if (ANALYSIS !== "0") await analysis({ t, tPg, prisma, pool, url, enqueue, resetOutbox, drainTxonce, overPg, bestBatch, bestWorkers, txDefault });
  } finally {
    await boss.stop({ graceful: false, wait: true, close: true }).catch(() => {});
  }
}

function bossVersion() {
  const { version } = JSON.parse(readFileSync(new URL("../node_modules/pg-boss/package.json", import.meta.url), "utf8")) as { version: string };
  return `pg-boss ${version}`;
}

// ---------------------------------------------------------------------------------------------
// Where the relay's time goes.

interface AnalysisContext {
  t: ReturnType<typeof txonce>;
  tPg: ReturnType<typeof txoncePg>;
  prisma: BenchContext["prisma"];
  pool: pg.Pool;
  enqueue(n: number, keyOf?: (i: number) => string): Promise<number>;
  resetOutbox(): Promise<unknown>;
  drainTxonce(n: number, options: Partial<RelayOptions>, factory?: (o: RelayOptions) => { start(): Promise<void>; stop(): Promise<void> }, capSeconds?: number): Promise<Drain>;
  overPg: (o: RelayOptions) => { start(): Promise<void>; stop(): Promise<void> };
  bestBatch: number;
  bestWorkers: number;
  url: string;
  txDefault: Drain;
}

async function analysis(c: AnalysisContext) {
  const { t, prisma, pool } = c;
  const N = GRID_MESSAGES;
  log("Where the relay's time goes");

  // c. The claim on the server: EXPLAIN ANALYZE on a full backlog, as shipped and with JIT off,
  //    then a what-if drain with JIT off. (The ORDER BY what-if of earlier runs is now shipped:
  //    the claim orders by the index's columns; see docs/benchmarks.md.)
  await c.resetOutbox();
  await c.enqueue(MESSAGES);
  await pool.query(`VACUUM ANALYZE ${sql.OUTBOX_TABLE}`);
  const client = await pool.connect();
  const explainClaim = async (text: string, batchSize: number, jitOff = false) => {
    await client.query("BEGIN");
    if (jitOff) await client.query("SET LOCAL jit = off");
    const plan = (await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${text}`, claimParams(batchSize))).rows
      .map((r) => r["QUERY PLAN"] as string);
    await client.query("ROLLBACK");
    const grab = (re: RegExp) => plan.find((l) => re.test(l))?.match(/([\d.]+) ms/)?.[1] ?? "-";
    const jit = plan.find((l) => /Timing: Generation/.test(l))?.match(/Total ([\d.]+) ms/)?.[1] ?? "-";
    const sort = plan.find((l) => /Sort Method/.test(l))?.trim().replace("Sort Method: ", "") ?? "no sort";
    const scan = plan.filter((l) => /Scan on txonce_outbox_messages/.test(l)).map((l) => l.trim().replace(/\s*\(.*$/, "").replace("->  ", "").replace(/ on txonce_outbox_messages.*/, "")).filter((v, i, all) => all.indexOf(v) === i).join(", ") || "?";
    const cost = plan[0]?.match(/cost=[\d.]+\.\.([\d.]+)/)?.[1] ?? "?";
    return [grab(/Execution Time/), jit, cost, scan, sort];
  };
  const explained: string[][] = [];
  for (const batchSize of [100, 1000]) {
    explained.push([`as shipped, batch ${batchSize}`, ...(await explainClaim(sql.claimMessages, batchSize))]);
    explained.push([`SET LOCAL jit = off, batch ${batchSize}`, ...(await explainClaim(sql.claimMessages, batchSize, true))]);
  }
  client.release();
  log(`EXPLAIN ANALYZE of claimMessages (rolled back) on ${num(MESSAGES)} pending unkeyed messages (jit_above_cost ${(await pool.query("SHOW jit_above_cost")).rows[0].jit_above_cost}, jit ${(await pool.query("SHOW jit")).rows[0].jit}):`);
  table(["claim", "execution ms", "of which JIT ms", "est. cost", "scan", "sort"], explained);

  // What-if drain: the same relay over connections with jit = off, against the shipped default
  // drained above.
  const { PrismaPg } = await import("@prisma/adapter-pg");
  const { PrismaClient } = await import("../generated/prisma/client.js");
  const noJit = new PrismaClient({ adapter: new PrismaPg({ connectionString: c.url, max: 8, options: "-c jit=off" }) });
  const whatIf: string[][] = [["as shipped (section above)", "100 x 1", num(c.txDefault.rate)]];
  try {
    const tNoJit = txonce(noJit);
    for (const [label, factory, batchSize, workers] of [
      ["jit = off on the relay's connections", (o: RelayOptions) => tNoJit.outbox.relay(o), 100, 1],
    ] as const) {
      await c.resetOutbox();
      await c.enqueue(MESSAGES);
      const d = await c.drainTxonce(MESSAGES, { batchSize, workers }, factory);
      whatIf.push([label, `${batchSize} x ${workers}`, num(d.rate)]);
    }
  } finally {
    await noJit.$disconnect();
  }
  log(`What-if: the relay draining ${num(MESSAGES)} messages with jit = off:`);
  table(["claim", "batch x workers", "msg/s"], whatIf);
  if (ANALYSIS !== "full") {
    log("  (OUTBOX_ANALYSIS=full adds statement timings per batch, the relay over plain pg, keyed messages and a CPU profile)");
    log();
    return;
  }
  log();

  // a. Statements per batch and their wall time, seen from the relay (same relay code, the
  //    Prisma executor wrapped to count and time each statement).
  const kinds = new Map<string, { n: number; ms: number[]; rows: number }>();
  const kindOf = (text: string) =>
    text === sql.claimMessages || text === sql.claimUnkeyedMessages ? "claimMessages" : text === sql.recordProgress ? "recordProgress" : text.trim().slice(0, 30);
  const timed: SqlExecutor = {
    async query(text: string, params: readonly unknown[]): Promise<Row[]> {
      const t0 = performance.now();
      const rows = await prisma.$queryRawUnsafe<Row[]>(text, ...params);
      const k = kinds.get(kindOf(text)) ?? { n: 0, ms: [], rows: 0 };
      k.n++;
      k.ms.push(performance.now() - t0);
      k.rows += rows.length;
      kinds.set(kindOf(text), k);
      return rows;
    },
  };
  const instrumented = (o: RelayOptions) => createRelay(timed, t.codec, false, o);
  const breakdown: string[][] = [];
  for (const [batchSize, workers] of [[100, 1], [c.bestBatch, c.bestWorkers]] as const) {
    await c.resetOutbox();
    await c.enqueue(N);
    kinds.clear();
    const d = await c.drainTxonce(N, { batchSize, workers }, instrumented);
    const claim = kinds.get("claimMessages")!;
    const mark = kinds.get("recordProgress")!;
    const batches = claim.n;
    breakdown.push([
      `batchSize ${batchSize}, ${workers} worker(s)`, num(d.rate), String(batches), fmt((claim.n + mark.n) / batches, 2),
      fmt(median(claim.ms), 1), fmt(median(mark.ms), 1),
      fmt(((claim.ms.reduce((a, b) => a + b, 0) + mark.ms.reduce((a, b) => a + b, 0)) / 1000 / d.seconds / workers) * 100, 0) + "%",
    ]);
  }
  log(`Statements per batch, seen from the relay (${num(N)} messages; wall times include Prisma; share = time in these statements / (drain time x workers)):`);
  table(["relay", "msg/s", "batches", "stmts/batch", "claim p50 ms", "mark p50 ms", "share in SQL"], breakdown);

  // b. The same relay over plain pg (txonce/pg) instead of Prisma.
  const rows: string[][] = [];
  for (const [batchSize, workers] of [[100, 1], [c.bestBatch, c.bestWorkers]] as const) {
    await c.resetOutbox();
    await c.enqueue(N);
    const viaPrisma = await c.drainTxonce(N, { batchSize, workers });
    await c.resetOutbox();
    await c.enqueue(N);
    const viaPg = await c.drainTxonce(N, { batchSize, workers }, c.overPg);
    rows.push([`batchSize ${batchSize}, ${workers} worker(s)`, num(viaPrisma.rate), num(viaPrisma.cpuUsPerMsg), num(viaPg.rate), num(viaPg.cpuUsPerMsg), `${fmt(viaPg.rate / viaPrisma.rate, 2)}x`]);
  }
  log();
  log(`The relay over Prisma (txonce(prisma)) vs over plain pg (txonce/pg, same SQL), ${num(N)} messages:`);
  table(["relay", "Prisma msg/s", "node µs/msg", "pg msg/s", "node µs/msg", "pg / Prisma"], rows);

  // d. Keyed messages: the claim walks the pending keys (one index probe per key) and leases runs
  //    behind their heads; with 10 keys, with 1,000, and with 1,000 plus published rows kept for
  //    retention (which the walk's index keeps apart from the pending ones).
  log();
  const explainKeyed = async () => {
    const cl = await pool.connect();
    try {
      await cl.query("BEGIN");
      const plan = (await cl.query(`EXPLAIN (ANALYZE, BUFFERS) ${sql.claimMessages}`, claimParams(c.bestBatch))).rows
        .map((r) => r["QUERY PLAN"] as string);
      await cl.query("ROLLBACK");
      return plan.find((l) => /Execution Time/.test(l))?.match(/([\d.]+) ms/)?.[1] ?? "?";
    } finally {
      cl.release();
    }
  };
  const keyedCase = async (keys: number, published: number) => {
    await c.resetOutbox();
    if (published > 0) {
      await c.enqueue(published, (i) => `k${i % keys}`);
      await pool.query(`UPDATE ${sql.OUTBOX_TABLE} SET published_at = now()`);
    }
    await c.enqueue(N, (i) => `k${i % keys}`);
    await pool.query(`VACUUM ANALYZE ${sql.OUTBOX_TABLE}`);
    const explainMs = await explainKeyed();
    const d = await c.drainTxonce(N, { batchSize: c.bestBatch, workers: c.bestWorkers }, undefined, KEYED_CAP_SECONDS);
    return [num(d.done), fmt(d.seconds, 2), num(d.rate), explainMs];
  };
  const keyedCases: [number, number][] = [[1000, 0], [10, 0], [1000, MESSAGES]];
  const keyed: string[][] = [];
  for (const [keys, published] of keyedCases) keyed.push([`${num(keys)} keys, ${num(published)} published kept`, "as shipped", ...(await keyedCase(keys, published))]);
  log(`Keyed messages (${num(N)} messages, key = one of K values; batchSize ${c.bestBatch}, ${c.bestWorkers} workers; at most ${KEYED_CAP_SECONDS} s;`);
  log(`claim ms = EXPLAIN ANALYZE execution of one claim on the backlog before the drain):`);
  table(["messages", "index", "published", "seconds", "msg/s", "claim ms"], keyed);

  // e. CPU profile of a drain (this process only), self time by origin.
  await c.resetOutbox();
  await c.enqueue(N);
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: 200 });
  await session.post("Profiler.start");
  const pd = await c.drainTxonce(N, { batchSize: c.bestBatch, workers: c.bestWorkers });
  const { profile } = await session.post("Profiler.stop");
  session.disconnect();
  const self = new Map<string, number>();
  const byFn = new Map<string, number>();
  const ids = new Map(profile.nodes.map((n) => [n.id, n]));
  const counts = new Map<number, number>();
  for (const s of profile.samples ?? []) counts.set(s, (counts.get(s) ?? 0) + 1);
  const total = profile.samples?.length ?? 1;
  const origin = (u: string, fn: string) =>
    !u ? (fn === "(idle)" ? "(idle)" : fn === "(garbage collector)" ? "(garbage collector)" : "(program / native)")
    : u.includes("@prisma/client") || u.includes("/generated/prisma") ? "@prisma/client runtime"
    : u.includes("@prisma/adapter-pg") || u.includes("@prisma/driver-adapter") ? "@prisma/adapter-pg"
    : u.includes("node_modules/pg") || u.includes("pg-protocol") || u.includes("pg-types") ? "pg driver"
    : u.includes("superjson") || u.includes("copy-anything") ? "superjson (payload decode)"
    : u.includes("/src/") ? "txonce src"
    : u.startsWith("node:") ? "node internals"
    : "other";
  for (const [id, n] of counts) {
    const node = ids.get(id)!;
    const o = origin(node.callFrame.url, node.callFrame.functionName);
    self.set(o, (self.get(o) ?? 0) + n);
    if (o !== "(idle)") {
      const f = `${node.callFrame.functionName || "(anonymous)"} ${node.callFrame.url.split("/").slice(-2).join("/")}`;
      byFn.set(f, (byFn.get(f) ?? 0) + n);
    }
  }
  log();
  log(`CPU profile of this process during a drain (${num(N)} messages, batchSize ${c.bestBatch}, ${c.bestWorkers} workers, ${num(pd.rate)} msg/s), self time by origin:`);
  table(["origin", "share"], [...self].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, `${fmt((v / total) * 100, 1)}%`]));
  log("  top functions (self time):");
  for (const [f, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, 8)) log(`    ${fmt((v / total) * 100, 1).padStart(5)}%  ${f}`);
  log();
}
