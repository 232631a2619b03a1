/**
 * Idempotency benchmark (issue 8): what withIdempotency costs on top of a bare transaction, for
 * txonce/prisma against a bare Prisma interactive transaction and for txonce/pg against a bare pg
 * transaction, and what a retry storm does to the rest of the traffic.
 *
 *   npm run bench -- idempotency
 *
 * 1. Throughput, each case at BENCH_CONCURRENCY (1 and 8) workers calling back to back, after a
 *    warm-up, in BENCH_ROUNDS (5) interleaved rounds of BENCH_SECONDS (1.5) per case:
 *      bare            prisma.$transaction(tx => tx.charge.create(...))       the reference, 1.00x
 *      first           withIdempotency(freshKey, tx => tx.charge.create(...))
 *      replay, same process    a key this instance completed (its replay cache holds it)
 *      replay, cold process    a completed key, from an instance that has not seen it
 *                              (`replayCache: false`: what every replay costs in a process
 *                              that did not run or replay the key before)
 *      retry storm     STORM_CALLERS (8) callers per key at once, new keys each round
 *      txonceAdapter: ...      the same on a client whose driver adapter is wrapped by
 *                              txonceAdapter (the README's set-up), against the same bare
 *                              transaction; and that client's own bare transaction
 *    and the same for txonce/pg against BEGIN / INSERT / COMMIT on a pg pool. Rates are medians
 *    of the rounds; a ratio is the median of the per-round ratios to the bare case of the same
 *    round and concurrency. With BENCH_WHAT_IF (1; 0 leaves them out), designs measured beside the
 *    shipped one in the same rounds: the shipped statements by hand (without txonce's JavaScript),
 *    the claim that writes nothing (bench/designs.ts) and its cold replay, txonce/pg with
 *    `preparedStatements: true`, and a Prisma client whose application names every statement
 *    (PrismaPg's `statementNameGenerator`), against its own bare transaction.
 * 2. Storm beside traffic (the issue's scenario): one Prisma client with a pool of 10. TRAFFIC
 *    workers (4) make unrelated first executions back to back; then, while they keep going,
 *    STORM_WAVES (4) waves of 3 hot keys x 60 callers whose operation holds the key 1.2 s,
 *    half of the callers on a second txonce instance (another process's share, polling).
 *    Unrelated calls/s and p50 with and without the storm, in STORM_ROUNDS (2) alternating rounds.
 *    Targets: at least 0.5x the rate, at most 3x the p50, no P2028 anywhere.
 * 3. Waiting for another process: the wake-up latency after the holder's commit against the
 *    polls per second, for backoff caps of 10 to 200 ms (the poll statement, with the backoff
 *    policy the core uses), and for the core itself (cap 50 ms).
 * 4. Cost per call, one call at a time: statements (round trips, counted under the pool), Node
 *    CPU, and WAL bytes (pg_current_wal_insert_lsn before and after each call: the least of 50,
 *    since other sessions of a shared server write WAL too, and the median).
 */
import { createHash, randomBytes } from "node:crypto";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { Codec } from "../src/codec.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { prismaDecimalType, txonce, txonceAdapter } from "../src/adapters/prisma.js";
import { backoffPolicy } from "../src/outbox/backoff.js";
import * as sql from "../src/sql/postgres.js";
import { env, fmt, loadavg, log, median, percentile, sleep, sorted, table, type BenchContext } from "./common.js";
import * as designs from "./designs.js";

const SECONDS = env("BENCH_SECONDS", 1.5);
const ROUNDS = Math.max(1, Math.round(env("BENCH_ROUNDS", 5)));
const WARMUP_SECONDS = env("BENCH_WARMUP_SECONDS", 0.5);
const STORM_CALLERS = Math.max(2, Math.round(env("STORM_CALLERS", 8)));
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? "1,8").split(",").map((s) => Math.max(1, Number(s)));
const TRAFFIC = Math.max(1, Math.round(env("TRAFFIC", 4)));
const STORM_WAVES = Math.max(1, Math.round(env("STORM_WAVES", 4)));
const STORM_ROUNDS = Math.max(1, Math.round(env("STORM_ROUNDS", 2)));
/** 0 leaves out the "what if" cases (designs measured beside the shipped one). */
const WHAT_IF = env("BENCH_WHAT_IF", 1) !== 0;
const RETENTION_MS = 48 * 3600_000;

const ACCOUNT = "bench";
const STORM_ACCOUNT = "storm";
const PG_INSERT = "INSERT INTO charges (account_id, amount) VALUES ($1, $2) RETURNING *";

interface Sample {
  calls: number;
  /** Business transactions committed (storm: keys). */
  units: number;
  seconds: number;
  latenciesMs: number[];
  nodeCpuUs: number;
  errors: number;
  firstError?: string;
}

/** `concurrency` workers each calling `op` back to back until `seconds` have passed. */
async function closedLoop(concurrency: number, seconds: number, op: () => Promise<unknown>): Promise<Sample> {
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const cpu0 = process.cpuUsage();
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
          firstError ??= describe(error);
        }
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  return {
    calls: latenciesMs.length,
    units: latenciesMs.length,
    seconds: (performance.now() - t0) / 1000,
    latenciesMs,
    nodeCpuUs: cpu.user + cpu.system,
    errors,
    firstError,
  };
}

const describe = (error: unknown) => {
  const e = error as { code?: unknown; message?: unknown };
  return `${typeof e?.code === "string" ? `${e.code}: ` : ""}${String(e?.message ?? error).split("\n").filter(Boolean)[0]}`;
};
const codeOf = (error: unknown) => (error as { code?: unknown })?.code;

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

/** Thrown to roll a transaction back with what its claim found. */
class Replay {
  constructor(readonly result: string | null) {}
}

const normalized = (text: string) => text.replace(/\s+/g, " ").trim();
/** txonce's statements by their text: `claimKey`, `saveResult`, `pollKey`, ... */
const statementNames = new Map(
  Object.entries(sql).filter(([, text]) => typeof text === "string").map(([name, text]) => [normalized(text as string), name]),
);

/** txonce's statements by their text up to the first parameter: a statement sent with its values written in. */
const statementHeads = [...statementNames].map(([text, name]) => [text.split("$")[0]!, name] as const);

function shortSql(text: string): string {
  // Several statements in one query (txonce's with BEGIN, COMMIT or ROLLBACK): each named, joined by " + ".
  const parts = text.split(/;\s*\n/);
  if (parts.length > 1) return parts.map(shortSql).join(" + ");
  const t = normalized(text);
  const name = statementNames.get(t) ?? statementHeads.find(([head]) => head.length > 20 && t.startsWith(head))?.[1];
  if (name) return name;
  if (/^INSERT INTO "?(public"?\.)?"?charges/i.test(t)) return "INSERT charge";
  const m = /^(SELECT 1|BEGIN|COMMIT|ROLLBACK|\w+)/i.exec(t);
  return m ? m[1]! : t.slice(0, 40);
}

export async function idempotencyBench(context: BenchContext) {
  const atEnd: (() => Promise<unknown>)[] = [];
  try {
    await throughputAndTheRest(context, atEnd);
  } finally {
    await Promise.allSettled(atEnd.map((f) => f()));
  }
}

async function throughputAndTheRest({ url, prisma, pool }: BenchContext, atEnd: (() => Promise<unknown>)[]) {
  log("Idempotency (issue 8)");
  log(`settings: ${SECONDS}s per case x ${ROUNDS} rounds (interleaved, median), warm-up ${WARMUP_SECONDS}s, ` +
    `concurrency ${CONCURRENCY.join(",")}, storm ${STORM_CALLERS} callers/key`);
  log(`load: ${loadavg()}`);
  log();
  const runTag = randomBytes(3).toString("hex");
  let serial = 0;
  const freshKey = () => `${runTag}-${++serial}`;

  // ------------------------------------------------------------------------------------------
  // 1. Throughput

  const t = txonce(prisma);
  const cold = txonce(prisma, { replayCache: false });
  // The same client but with its driver adapter wrapped by txonceAdapter (txonce's statements
  // through the adapter, the save with the COMMIT): the way the README sets Prisma up.
  const wrapped = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString: url, max: Math.max(...CONCURRENCY) + 16 })) });
  atEnd.push(() => wrapped.$disconnect());
  const tw = txonce(wrapped);
  const twCold = txonce(wrapped, { replayCache: false });
  const completedWrapped: string[] = [];
  const tp = txoncePg(pool);
  const tpCold = txoncePg(pool, { replayCache: false });
  const completed: string[] = [];
  const completedPg: string[] = [];
  let cursor = 0;
  /** The most recent keys (well within the replay cache), round robin. */
  const recent = (keys: string[]) => keys[keys.length - 1 - (cursor++ % Math.min(keys.length, 500))]!;
  const any = (keys: string[]) => keys[cursor++ % keys.length]!;
  const mustNotRun = async (): Promise<never> => {
    throw new Error("a replay ran the operation");
  };
  const insertCharge = (tx: Pick<PrismaClient, "charge">) => tx.charge.create({ data: { accountId: ACCOUNT, amount: 1 } });
  const pgInsert = async (client: pg.PoolClient) => (await client.query(PG_INSERT, [ACCOUNT, 1])).rows[0] as unknown;

  let stormSerial = 0;
  const storm = { keys: 0, rows: 0, once: 0, mismatched: 0 };
  const stormRound = async (concurrency: number, seconds: number): Promise<Sample> => {
    const latenciesMs: number[] = [];
    let errors = 0;
    let keys = 0;
    let firstError: string | undefined;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const first = stormSerial + 1;
    const ran = new Map<number, number>();
    while (performance.now() < t0 + seconds * 1000) {
      const round = Array.from({ length: concurrency }, () => ++stormSerial);
      keys += round.length;
      const ids = await Promise.all(
        round.flatMap((n) =>
          Array.from({ length: STORM_CALLERS }, async () => {
            const start = performance.now();
            try {
              const outcome = await t.withIdempotencyOutcome(`${runTag}-storm-${n}`, (tx) =>
                tx.charge.create({ data: { accountId: STORM_ACCOUNT, amount: n } }),
              );
              latenciesMs.push(performance.now() - start);
              if (!outcome.replayed) ran.set(n, (ran.get(n) ?? 0) + 1);
              return outcome.value.id;
            } catch (error) {
              errors++;
              firstError ??= describe(error);
              return undefined;
            }
          }),
        ),
      );
      for (let k = 0; k < round.length; k++) {
        if (new Set(ids.slice(k * STORM_CALLERS, (k + 1) * STORM_CALLERS).filter((id) => id !== undefined)).size > 1) storm.mismatched++;
      }
    }
    const cpu = process.cpuUsage(cpu0);
    const seconds_ = (performance.now() - t0) / 1000;
    const { rows } = await pool.query<{ rows: string; keys: string }>(
      "SELECT count(*) AS rows, count(DISTINCT amount) AS keys FROM charges WHERE account_id = $1 AND amount BETWEEN $2 AND $3",
      [STORM_ACCOUNT, first, stormSerial],
    );
    storm.keys += keys;
    storm.rows += Number(rows[0]!.rows);
    storm.once += [...ran.values()].filter((n) => n === 1).length;
    return { calls: latenciesMs.length, units: keys, seconds: seconds_, latenciesMs, nodeCpuUs: cpu.user + cpu.system, errors, firstError };
  };

  interface Case {
    name: string;
    group: "prisma" | "prisma-named" | "pg";
    run(concurrency: number, seconds: number): Promise<Sample>;
  }
  const loop = (op: () => Promise<unknown>) => (c: number, s: number) => closedLoop(c, s, op);
  const cases: Case[] = [
    { name: "bare $transaction + insert", group: "prisma", run: loop(() => prisma.$transaction((tx) => insertCharge(tx))) },
    {
      name: "withIdempotency, first execution",
      group: "prisma",
      run: loop(async () => {
        const key = freshKey();
        await t.withIdempotency(key, insertCharge);
        completed.push(key);
      }),
    },
    { name: "replay, same process", group: "prisma", run: loop(() => t.withIdempotency(recent(completed), mustNotRun)) },
    { name: "replay, cold process", group: "prisma", run: loop(() => cold.withIdempotency(any(completed), mustNotRun)) },
    { name: `retry storm (${STORM_CALLERS} callers/key)`, group: "prisma", run: stormRound },
    { name: "txonceAdapter: bare $transaction + insert", group: "prisma", run: loop(() => wrapped.$transaction((tx) => insertCharge(tx))) },
    {
      name: "txonceAdapter: withIdempotency, first execution",
      group: "prisma",
      run: loop(async () => {
        const key = freshKey();
        await tw.withIdempotency(key, insertCharge);
        completedWrapped.push(key);
      }),
    },
    { name: "txonceAdapter: replay, same process", group: "prisma", run: loop(() => tw.withIdempotency(recent(completedWrapped), mustNotRun)) },
    { name: "txonceAdapter: replay, cold process", group: "prisma", run: loop(() => twCold.withIdempotency(any(completedWrapped), mustNotRun)) },
    {
      name: "bare + 2 x SELECT 1 in tx (the floor)",
      group: "prisma",
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
      name: "pg: bare BEGIN/insert/COMMIT",
      group: "pg",
      run: loop(async () => {
        const client = await pool.connect();
        try {
          await client.query("BEGIN");
          await client.query(PG_INSERT, [ACCOUNT, 1]);
          await client.query("COMMIT");
        } finally {
          client.release();
        }
      }),
    },
    {
      name: "pg: withIdempotency, first execution",
      group: "pg",
      run: loop(async () => {
        const key = freshKey();
        await tp.withIdempotency(key, pgInsert);
        completedPg.push(key);
      }),
    },
    { name: "pg: replay, same process", group: "pg", run: loop(() => tp.withIdempotency(recent(completedPg), mustNotRun)) },
    { name: "pg: replay, cold process", group: "pg", run: loop(() => tpCold.withIdempotency(any(completedPg), mustNotRun)) },
  ];

  if (WHAT_IF) cases.push(...whatIfCases());
  /**
   * Designs measured beside the shipped one (docs/benchmarks.md, "tried and dropped"): the
   * statement sequences by hand, without txonce's JavaScript, so that the shipped sequence by hand
   * is their reference; and txonce/pg with `preparedStatements: true` (its statements prepared once
   * per connection).
   */
  function whatIfCases(): Case[] {
    const codec = new Codec([prismaDecimalType]);
    const lockIdOf = (key: string) => String(BigInt.asIntN(64, BigInt(`0x${createHash("sha256").update(key).digest("hex").slice(0, 16)}`)));
    type Raw = { $queryRawUnsafe<T = unknown>(query: string, ...values: unknown[]): Promise<T> };
    const shippedByHand = (tx: Pick<PrismaClient, "charge"> & Raw, key: string) => async () => {
      const [claimed] = await tx.$queryRawUnsafe<{ ctid: string }[]>(sql.claimKey, "", key, null, RETENTION_MS, lockIdOf(key));
      const charge = await insertCharge(tx);
      await tx.$queryRawUnsafe(sql.saveResult, claimed!.ctid, codec.encode(charge, "result"));
      return charge;
    };
    const selectClaimByHand = (tx: Pick<PrismaClient, "charge"> & Raw, key: string) => async () => {
      const [claim] = await tx.$queryRawUnsafe<{ free: boolean; created_at: Date | null }[]>(designs.selectClaim, "", key, lockIdOf(key));
      if (!claim!.free || claim!.created_at) throw new Error("taken");
      const charge = await insertCharge(tx);
      const saved = await tx.$queryRawUnsafe<unknown[]>(designs.insertSave, "", key, null, RETENTION_MS, codec.encode(charge, "result"));
      if (saved.length === 0) throw new Error("taken");
      return charge;
    };
    const pgTx = async <T>(work: (client: pg.PoolClient) => Promise<T>, end = "COMMIT") => {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const result = await work(client);
        await client.query(end);
        return result;
      } finally {
        client.release();
      }
    };
    const nameOf = (query: { sql: string }) => `s_${createHash("sha256").update(query.sql).digest("hex").slice(0, 20)}`;
    const namedPrisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 24 }, { statementNameGenerator: nameOf }) });
    atEnd.push(() => namedPrisma.$disconnect());
    const tNamed = txonce(namedPrisma);
    const tNamedCold = txonce(namedPrisma, { replayCache: false });
    const completedNamed: string[] = [];
    const named = txoncePg(pool, { preparedStatements: true });
    const namedCold = txoncePg(pool, { preparedStatements: true, replayCache: false });
    return [
      {
        name: "what if: shipped statements by hand (no txonce JS)",
        group: "prisma",
        run: loop(() => prisma.$transaction((tx) => shippedByHand(tx, freshKey())())),
      },
      {
        name: "what if: claim writes nothing (SELECT claim, INSERT save)",
        group: "prisma",
        run: loop(() => prisma.$transaction((tx) => selectClaimByHand(tx, freshKey())())),
      },
      {
        name: "what if: its cold replay (BEGIN, SELECT claim, ROLLBACK)",
        group: "prisma",
        run: loop(async () => {
          const key = any(completed);
          const record = await prisma.$transaction(async (tx) => {
            const [claim] = await tx.$queryRawUnsafe<{ result: string | null }[]>(designs.selectClaim, "", key, lockIdOf(key));
            throw new Replay(claim!.result);
          }).catch((error: unknown) => (error instanceof Replay ? error.result : Promise.reject(error)));
          if (record === null) throw new Error("no record");
          return codec.decode(record);
        }),
      },
      {
        name: "statementNameGenerator: bare $transaction + insert",
        group: "prisma-named",
        run: loop(() => namedPrisma.$transaction((tx) => insertCharge(tx))),
      },
      {
        name: "statementNameGenerator: withIdempotency, first execution",
        group: "prisma-named",
        run: loop(async () => {
          const key = freshKey();
          await tNamed.withIdempotency(key, insertCharge);
          completedNamed.push(key);
        }),
      },
      {
        name: "statementNameGenerator: replay, cold process",
        group: "prisma-named",
        run: loop(() => tNamedCold.withIdempotency(any(completedNamed.length > 0 ? completedNamed : completed), mustNotRun)),
      },
      {
        name: "pg what if: shipped statements by hand (no txonce JS)",
        group: "pg",
        run: loop(() => pgTx(async (client) => {
          const key = freshKey();
          const { rows: [claimed] } = await client.query(sql.claimKey, ["", key, null, RETENTION_MS, lockIdOf(key)]);
          const charge = await pgInsert(client);
          await client.query(sql.saveResult, [claimed.ctid, codec.encode(charge, "result")]);
          return charge;
        })),
      },
      {
        name: "pg what if: claim writes nothing (SELECT claim, INSERT save)",
        group: "pg",
        run: loop(() => pgTx(async (client) => {
          const key = freshKey();
          const { rows: [claim] } = await client.query(designs.selectClaim, ["", key, lockIdOf(key)]);
          if (!claim.free || claim.created_at) throw new Error("taken");
          const charge = await pgInsert(client);
          const { rows } = await client.query(designs.insertSave, ["", key, null, RETENTION_MS, codec.encode(charge, "result")]);
          if (rows.length === 0) throw new Error("taken");
          return charge;
        })),
      },
      {
        name: "pg what if: its cold replay (BEGIN, SELECT claim, ROLLBACK)",
        group: "pg",
        run: loop(() => pgTx(async (client) => {
          const key = any(completedPg);
          const { rows: [claim] } = await client.query(designs.selectClaim, ["", key, lockIdOf(key)]);
          return codec.decode(claim.result as string);
        }, "ROLLBACK")),
      },
      {
        name: "pg: preparedStatements, first execution",
        group: "pg",
        run: loop(() => named.withIdempotency(freshKey(), pgInsert)),
      },
      {
        name: "pg: preparedStatements, replay cold process",
        group: "pg",
        run: loop(() => namedCold.withIdempotency(any(completedPg), mustNotRun)),
      },
    ];
  }

  log(`warming up (${cases.length} cases x ${WARMUP_SECONDS}s)...`);
  for (const c of cases) await c.run(Math.max(...CONCURRENCY), WARMUP_SECONDS);
  Object.assign(storm, { keys: 0, rows: 0, once: 0, mismatched: 0 });
  const samples = new Map<string, Sample[]>();
  for (let round = 1; round <= ROUNDS; round++) {
    log(`round ${round}/${ROUNDS}...`);
    for (const concurrency of CONCURRENCY) {
      for (const c of cases) {
        await pool.query("CHECKPOINT").catch(() => {}); // keep checkpoints out of the measurements
        const id = `${c.name}@${concurrency}`;
        samples.set(id, [...(samples.get(id) ?? []), await c.run(concurrency, SECONDS)]);
      }
    }
  }
  log();
  const bareOf = (group: Case["group"]) => cases.find((c) => c.group === group)!.name;
  const ratio = (name: string, group: Case["group"], concurrency: number, units = false) => {
    const bare = samples.get(`${bareOf(group)}@${concurrency}`)!;
    return median(samples.get(`${name}@${concurrency}`)!.map((s, i) => (units ? s.units : s.calls) / s.seconds / (bare[i]!.calls / bare[i]!.seconds)));
  };
  const ratios = new Map<string, number>();
  const titles: Record<Case["group"], string> = {
    prisma: "Throughput, txonce/prisma against a bare Prisma interactive transaction (calls/s: median of rounds; ratio: median of per-round ratios)",
    "prisma-named": "What if the application names its statements (PrismaPg's statementNameGenerator, every statement prepared once per connection): both sides on that client",
    pg: "Throughput, txonce/pg against a bare pg transaction (BEGIN, INSERT, COMMIT on a pg.Pool client)",
  };
  for (const group of ["prisma", "prisma-named", "pg"] as const) {
    if (!cases.some((c) => c.group === group)) continue;
    log(titles[group]);
    const rows: string[][] = [];
    for (const concurrency of CONCURRENCY) {
      for (const c of cases.filter((x) => x.group === group)) {
        const all = samples.get(`${c.name}@${concurrency}`)!;
        const rates = all.map((s) => s.calls / s.seconds);
        const latencies = sorted(all.flatMap((s) => s.latenciesMs));
        const calls = all.reduce((a, s) => a + s.calls, 0);
        const r = ratio(c.name, group, concurrency);
        ratios.set(`${c.name}@${concurrency}`, r);
        const errors = all.reduce((a, s) => a + s.errors, 0);
        rows.push([
          c.name, String(concurrency), fmt(median(rates)), `${fmt(Math.min(...rates))}-${fmt(Math.max(...rates))}`, `${fmt(r, 2)}x`,
          fmt(percentile(latencies, 50), 2), fmt(percentile(latencies, 99), 2),
          fmt(all.reduce((a, s) => a + s.nodeCpuUs, 0) / Math.max(1, calls)), String(errors),
        ]);
        const firstError = all.find((s) => s.firstError)?.firstError;
        if (firstError) rows.push([`  first error: ${firstError}`]);
        if (c.run === stormRound) {
          rows.push([`  = ${fmt(median(all.map((s) => s.units / s.seconds)))} keys/s (business transactions), ${fmt(ratio(c.name, group, concurrency, true), 2)}x bare`]);
        }
      }
    }
    table(["case", "conc", "calls/s", "min-max", "ratio", "p50 ms", "p99 ms", "CPU µs", "errors"], rows);
    log();
  }
  log(`Retry storm check: ${storm.keys} keys x ${STORM_CALLERS} callers -> ${storm.rows} business rows, operation ran exactly once ` +
    `for ${storm.once} keys, ${storm.mismatched} keys whose callers got different values ` +
    (storm.rows === storm.keys && storm.once === storm.keys && storm.mismatched === 0 ? "(OK)" : "(MISMATCH)"));
  log();
  log("Targets (ratios to the bare transaction of the same client, measured in this run):");
  for (const concurrency of CONCURRENCY) {
    const r = (name: string) => ratios.get(`${name}@${concurrency}`)!;
    const check = (value: number, target: number) => `${fmt(value, 2)}x (${value >= target ? "meets" : "MISSES"} ${target}x)`;
    log(`  c=${concurrency}  txonce/prisma: first ${check(r("withIdempotency, first execution"), 0.6)}, ` +
      `replay same process ${check(r("replay, same process"), 1.5)}, replay cold process ${check(r("replay, cold process"), 1.5)}`);
    log(`        txonce/prisma, txonceAdapter: first ${check(r("txonceAdapter: withIdempotency, first execution"), 0.6)}, ` +
      `replay same process ${check(r("txonceAdapter: replay, same process"), 1.5)}, replay cold process ${check(r("txonceAdapter: replay, cold process"), 1.5)}; ` +
      `its client's own bare transaction ${fmt(r("txonceAdapter: bare $transaction + insert"), 2)}x`);
    log(`        txonce/pg:     first ${check(r("pg: withIdempotency, first execution"), 0.6)}, ` +
      `replay same process ${check(r("pg: replay, same process"), 1.5)}, replay cold process ${check(r("pg: replay, cold process"), 1.5)}`);
    if (WHAT_IF) {
      log(`        txonce/prisma, statementNameGenerator: first ${check(r("statementNameGenerator: withIdempotency, first execution"), 0.6)}, ` +
        `replay cold process ${check(r("statementNameGenerator: replay, cold process"), 1.5)}`);
      log(`        txonce/pg, preparedStatements: first ${check(r("pg: preparedStatements, first execution"), 0.6)}, ` +
        `replay cold process ${check(r("pg: preparedStatements, replay cold process"), 1.5)}`);
    }
  }
  log();

  // ------------------------------------------------------------------------------------------
  // 2. Storm beside traffic

  await stormBesideTraffic(url, runTag);

  // ------------------------------------------------------------------------------------------
  // 3. Waiting for another process

  await wakeUp(url, pool, runTag);

  // ------------------------------------------------------------------------------------------
  // 4. Cost per call

  await costPerCall(url, pool, runTag, completed, completedPg);
}

async function stormBesideTraffic(url: string, runTag: string) {
  const HOT_KEYS = 3;
  const CALLERS = 60;
  const HOLD_MS = 1200;
  log(`Storm beside traffic: one Prisma client, pool of 10; ${TRAFFIC} workers make unrelated first executions; ` +
    `the storm is ${STORM_WAVES} waves of ${HOT_KEYS} hot keys x ${CALLERS} callers (half on a second instance), ` +
    `operation holding its key ${HOLD_MS} ms; ${STORM_ROUNDS} rounds of (without, with)`);
  const client = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 10 }) });
  try {
    const traffic = txonce(client);
    const stormers = [txonce(client, { lockTimeout: "5s" }), txonce(client, { lockTimeout: "5s" })];
    const codes = new Map<string, number>();
    const count = (error: unknown) => {
      const code = String(codeOf(error) ?? (error as Error)?.name ?? "error");
      codes.set(code, (codes.get(code) ?? 0) + 1);
    };
    let keySerial = 0;
    /** Unrelated calls back to back until `until` resolves. */
    const runTraffic = async (until: Promise<unknown>) => {
      let done = false;
      void until.finally(() => (done = true));
      const latencies: number[] = [];
      let errors = 0;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: TRAFFIC }, async () => {
          while (!done) {
            const start = performance.now();
            try {
              await traffic.withIdempotency(`${runTag}-traffic-${++keySerial}`, (tx) =>
                tx.charge.create({ data: { accountId: ACCOUNT, amount: 2 } }),
              );
              latencies.push(performance.now() - start);
            } catch (error) {
              errors++;
              count(error);
            }
          }
        }),
      );
      return { rate: latencies.length / ((performance.now() - t0) / 1000), p50: median(latencies), errors };
    };
    let stormSerial = 0;
    const check = { keys: 0, once: 0, sameValue: 0, errors: 0 };
    const runStorm = async () => {
      for (let wave = 0; wave < STORM_WAVES; wave++) {
        const keys = Array.from({ length: HOT_KEYS }, () => `${runTag}-hot-${++stormSerial}`);
        const runs = new Map<string, number>();
        const outcomes = await Promise.all(
          keys.flatMap((key) =>
            Array.from({ length: CALLERS }, (_, c) =>
              stormers[c % 2]!.withIdempotencyOutcome(key, async (tx) => {
                runs.set(key, (runs.get(key) ?? 0) + 1);
                const charge = await tx.charge.create({ data: { accountId: STORM_ACCOUNT, amount: 3 } });
                await sleep(HOLD_MS);
                return charge.id;
              }).catch((error: unknown) => {
                check.errors++;
                count(error);
                return undefined;
              }),
            ),
          ),
        );
        for (const [k, key] of keys.entries()) {
          check.keys++;
          if (runs.get(key) === 1) check.once++;
          const values = new Set(outcomes.slice(k * CALLERS, (k + 1) * CALLERS).map((o) => o?.value));
          if (values.size === 1 && !values.has(undefined)) check.sameValue++;
        }
      }
    };
    await runTraffic(sleep(1000)); // warm-up: opens the pool's connections
    const results: { without: Awaited<ReturnType<typeof runTraffic>>; with: Awaited<ReturnType<typeof runTraffic>>; stormSeconds: number }[] = [];
    for (let round = 0; round < STORM_ROUNDS; round++) {
      const t0 = performance.now();
      const stormDone = runStorm();
      const withStorm = await runTraffic(stormDone);
      const stormSeconds = (performance.now() - t0) / 1000;
      const without = await runTraffic(sleep(stormSeconds * 1000));
      results.push({ without, with: withStorm, stormSeconds });
    }
    const rows = results.map((r, i) => [
      String(i + 1), fmt(r.stormSeconds, 1), fmt(r.without.rate), fmt(r.with.rate), `${fmt(r.with.rate / r.without.rate, 2)}x`,
      fmt(r.without.p50, 1), fmt(r.with.p50, 1), `${fmt(r.with.p50 / r.without.p50, 2)}x`, String(r.without.errors + r.with.errors),
    ]);
    table(["round", "storm s", "calls/s without", "with", "ratio", "p50 ms without", "with", "ratio", "errors"], rows);
    const rateRatio = median(results.map((r) => r.with.rate / r.without.rate));
    const p50Ratio = median(results.map((r) => r.with.p50 / r.without.p50));
    const p2028 = codes.get("P2028") ?? 0;
    log(`  storm: ${check.keys} hot keys, operation ran exactly once for ${check.once}, all ${CALLERS} callers got the same value for ${check.sameValue}; ` +
      `${check.errors} storm errors`);
    log(`  errors by code (traffic and storm): ${codes.size === 0 ? "none" : [...codes].map(([c, n]) => `${c} x${n}`).join(", ")}`);
    log(`  targets: rate ${fmt(rateRatio, 2)}x (${rateRatio >= 0.5 ? "meets" : "MISSES"} >= 0.5x), p50 ${fmt(p50Ratio, 2)}x ` +
      `(${p50Ratio <= 3 ? "meets" : "MISSES"} <= 3x), P2028: ${p2028} (${p2028 === 0 ? "meets" : "MISSES"} none)`);
    log();
  } finally {
    await client.$disconnect();
  }
}

async function wakeUp(url: string, pool: pg.Pool, runTag: string) {
  const TRIALS = 20;
  log(`Waiting for another process: ${TRIALS} holders at once, each holding its own key 200-700 ms, each with one waiter; ` +
    "latency = waiter's answer after the holder's COMMIT returned");
  const caps = [10, 25, 50, 100, 200];
  const rows: string[][] = [];
  let serial = 0;
  const holdThenCommit = async (key: string, lockId: string, holdMs: number) => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const { rows: [claimed] } = await client.query(sql.claimKey, ["", key, null, 3600_000, lockId]);
      await sleep(holdMs);
      await client.query(sql.saveResult, [claimed.ctid, '{"json":1}']);
      await client.query("COMMIT");
      return performance.now();
    } finally {
      client.release();
    }
  };
  for (const cap of caps) {
    const delay = backoffPolicy({ initial: 4, max: cap });
    const trials = await Promise.all(
      Array.from({ length: TRIALS }, async (_, i) => {
        const key = `${runTag}-wake-${cap}-${++serial}`;
        const lockId = String(BigInt(serial) * 7919n + BigInt(cap));
        const committed = holdThenCommit(key, lockId, 200 + ((i * 37) % 500));
        await sleep(20);
        const started = performance.now();
        let polls = 0;
        for (;;) {
          polls++;
          await sleep(delay(polls));
          const { rows: [row] } = await pool.query(sql.pollKey, ["", key, lockId]);
          if (row.created_at) break;
        }
        const seen = performance.now();
        return { latency: seen - (await committed), pollsPerSecond: polls / ((seen - started) / 1000) };
      }),
    );
    const latencies = sorted(trials.map((x) => x.latency));
    rows.push([`${cap} ms`, fmt(percentile(latencies, 50), 1), fmt(percentile(latencies, 95), 1), fmt(median(trials.map((x) => x.pollsPerSecond)), 1)]);
  }
  // The core itself: holder and waiter are two txonce instances (two processes' worth).
  const holderClient = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: TRIALS }) });
  const holder = txonce(holderClient, { transaction: { timeout: 30_000, maxWait: 30_000 } });
  const countingPool = new pg.Pool({ connectionString: url, max: TRIALS, Client: CountingClient as typeof pg.Client });
  countingPool.on("error", () => {});
  const waiterClient = new PrismaClient({ adapter: new PrismaPg(countingPool) });
  const waiter = txonce(waiterClient);
  try {
    recording.statements = [];
    recording.on = true;
    let waitingSeconds = 0;
    const trials = await Promise.all(
      Array.from({ length: TRIALS }, async (_, i) => {
        const key = `${runTag}-wake-core-${i}`;
        let committedAt = 0;
        const first = holder.withIdempotency(key, async () => {
          await sleep(200 + ((i * 37) % 500));
          return "done";
        }).then((v) => {
          committedAt = performance.now();
          return v;
        });
        await sleep(20);
        const started = performance.now();
        await waiter.withIdempotency(key, async () => "must not run");
        const seen = performance.now();
        waitingSeconds += (seen - started) / 1000;
        await first;
        return seen - committedAt;
      }),
    );
    recording.on = false;
    const polls = recording.statements.filter((s) => shortSql(s) === "pollKey").length;
    const latencies = sorted(trials);
    rows.push(["txonce (initial 4, cap 50 ms)", fmt(percentile(latencies, 50), 1), fmt(percentile(latencies, 95), 1),
      fmt(polls / waitingSeconds, 1)]);
  } finally {
    recording.on = false;
    await holderClient.$disconnect();
    await waiterClient.$disconnect();
    await countingPool.end();
  }
  table(["backoff cap", "latency p50 ms", "p95 ms", "polls/s per waiting key"], rows);
  log("  (one poller per key per process: the calls of a process that wait on the same key share it)");
  log();
}

async function costPerCall(url: string, pool: pg.Pool, runTag: string, completed: string[], completedPg: string[]) {
  const CALLS = 200;
  log(`Cost per call, one call at a time (${CALLS} calls per path): statements (= round trips, counted under the pool), ` +
    "Node CPU, WAL bytes (pg_current_wal_insert_lsn before and after each of 50 calls)");
  const countingPool = new pg.Pool({ connectionString: url, max: 4, Client: CountingClient as typeof pg.Client });
  countingPool.on("error", () => {});
  const counted = new PrismaClient({ adapter: new PrismaPg(countingPool) });
  const t = txonce(counted);
  const cold = txonce(counted, { replayCache: false });
  const countedWrapped = new PrismaClient({ adapter: txonceAdapter(new PrismaPg(countingPool)) });
  const tw = txonce(countedWrapped);
  const twCold = txonce(countedWrapped, { replayCache: false });
  const mineWrapped: string[] = [];
  const tp = txoncePg(countingPool);
  const tpCold = txoncePg(countingPool, { replayCache: false });
  let n = 0;
  const insert = (tx: Pick<PrismaClient, "charge">) => tx.charge.create({ data: { accountId: ACCOUNT, amount: 4 } });
  const pgInsert = async (client: pg.PoolClient) => (await client.query(PG_INSERT, [ACCOUNT, 4])).rows[0] as unknown;
  const mine: string[] = [];
  const minePg: string[] = [];
  try {
    await counted.$transaction((tx) => insert(tx)); // connect, load the engine
    const paths: [string, () => Promise<unknown>][] = [
      ["prisma: bare $transaction + insert", () => counted.$transaction((tx) => insert(tx))],
      ["prisma: first execution", async () => { const k = `${runTag}-cost-${++n}`; await t.withIdempotency(k, insert); mine.push(k); }],
      ["prisma: replay, same process", () => t.withIdempotency(mine[n++ % mine.length]!, insert)],
      ["prisma: replay, cold process", () => cold.withIdempotency(completed[n++ % completed.length]!, insert)],
      ["prisma txonceAdapter: first execution", async () => { const k = `${runTag}-costw-${++n}`; await tw.withIdempotency(k, insert); mineWrapped.push(k); }],
      ["prisma txonceAdapter: replay, cold process", () => twCold.withIdempotency(completed[n++ % completed.length]!, insert)],
      ["pg: bare BEGIN/insert/COMMIT", async () => {
        const client = await countingPool.connect();
        try {
          await client.query("BEGIN");
          await client.query(PG_INSERT, [ACCOUNT, 4]);
          await client.query("COMMIT");
        } finally {
          client.release();
        }
      }],
      ["pg: first execution", async () => { const k = `${runTag}-costpg-${++n}`; await tp.withIdempotency(k, pgInsert); minePg.push(k); }],
      ["pg: replay, same process", () => tp.withIdempotency(minePg[n++ % minePg.length]!, pgInsert)],
      ["pg: replay, cold process", () => tpCold.withIdempotency(completedPg[n++ % completedPg.length]!, pgInsert)],
    ];
    const lsn = async () => (await pool.query<{ l: string }>("SELECT pg_current_wal_insert_lsn()::text AS l")).rows[0]!.l;
    const walDiff = async (from: string, to: string) =>
      Number((await pool.query<{ b: string }>("SELECT pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn) AS b", [from, to])).rows[0]!.b);
    const rows: string[][] = [];
    for (const [name, op] of paths) {
      for (let i = 0; i < 20; i++) await op(); // warm-up (and keys for the replays)
      recording.statements = [];
      recording.on = true;
      const cpu0 = process.cpuUsage();
      for (let i = 0; i < CALLS; i++) await op();
      const cpu = process.cpuUsage(cpu0);
      recording.on = false;
      const perCall = recording.statements.length / CALLS;
      const kinds = new Map<string, number>();
      for (const s of recording.statements) kinds.set(shortSql(s), (kinds.get(shortSql(s)) ?? 0) + 1);
      const sequence = recording.statements.slice(0, Math.round(perCall)).map(shortSql).join(", ");
      const wal: number[] = [];
      for (let i = 0; i < 50; i++) {
        const before = await lsn();
        await op();
        wal.push(await walDiff(before, await lsn()));
      }
      rows.push([name, fmt(perCall, 2), fmt((cpu.user + cpu.system) / CALLS), fmt(Math.min(...wal)), fmt(median(wal)),
        perCall === 0 ? "(none: from memory)" : sequence]);
    }
    table(["path", "statements", "Node CPU µs", "WAL bytes min", "median", "sequence (first call)"], rows);
    log("  (WAL is the whole server's: another session's writes add to a call's difference, so the least of 50 calls is this path's own;");
    log("  it includes the charge row and its index entries for bare and first)");
    log();

    // A storm round of one key on one instance: what all its callers cost together.
    const rounds = 10;
    recording.statements = [];
    recording.on = true;
    for (let r = 0; r < rounds; r++) {
      await Promise.all(Array.from({ length: STORM_CALLERS }, () => t.withIdempotency(`${runTag}-coststorm-${r}`, insert)));
    }
    recording.on = false;
    const kinds = new Map<string, number>();
    for (const s of recording.statements) kinds.set(shortSql(s), (kinds.get(shortSql(s)) ?? 0) + 1);
    log(`  storm of ${STORM_CALLERS} callers on one key in one process: ${fmt(recording.statements.length / rounds, 1)} statements per key ` +
      `(${[...kinds].map(([k, v]) => `${fmt(v / rounds, 1)} ${k}`).join(", ")})`);
    log();
  } finally {
    await counted.$disconnect();
    await countedWrapped.$disconnect();
    await countingPool.end();
  }
}
