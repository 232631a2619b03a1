/**
 * Adapters benchmark (issue 10): for each adapter of the conformance suite (test/support/adapters.ts),
 * what withIdempotency costs against a bare transaction of the same client doing the same insert,
 * measured in one run.
 *
 *   npm run bench -- adapters
 *
 * Per adapter, a client with a pool of ADAPTER_POOL (8) connections, ADAPTER_CONCURRENCY (4)
 * workers calling back to back, in ADAPTER_ROUNDS (3) interleaved rounds of ADAPTER_SECONDS (1)
 * per case, after a warm-up:
 *   bare     the library's own transaction inserting a charge through its own API     1.00x
 *   floor    the same transaction with two raw `SELECT 1` through the library besides the
 *            insert: what any two statements more cost on this client
 *   first    withIdempotency(freshKey, tx => the same insert)
 *   replay   a completed key from an instance that has not seen it (replayCache: false: one
 *            claim that finds the key taken, a rollback and one poll; what a replay costs in a
 *            process that did not run the key)
 * A ratio is the median of the per-round ratios of calls/s to the bare case of the same round.
 * A first execution is the core's two statements (claim, save) in the transaction: first/floor
 * near 1.00 means the adapter adds nothing the core does not need on that client; "added ms" is
 * the latency a first execution adds to a bare call (per call, at this concurrency).
 */
import { randomBytes } from "node:crypto";
import { adapterRows, type AdapterRow, type Subject } from "../test/support/adapters.js";
import { env, fmt, loadavg, log, median, table, type BenchContext } from "./common.js";

const SECONDS = env("ADAPTER_SECONDS", 1);
const ROUNDS = Math.max(1, Math.round(env("ADAPTER_ROUNDS", 3)));
const CONCURRENCY = Math.max(1, Math.round(env("ADAPTER_CONCURRENCY", 4)));
const POOL = Math.max(CONCURRENCY, Math.round(env("ADAPTER_POOL", 8)));
const WARMUP_SECONDS = env("ADAPTER_WARMUP_SECONDS", 0.3);

/** `concurrency` workers calling `op` back to back for `seconds`; returns calls per second. */
async function rate(concurrency: number, seconds: number, op: () => Promise<unknown>): Promise<{ perSecond: number; errors: number; firstError?: string }> {
  let calls = 0;
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        try {
          await op();
          calls++;
        } catch (error) {
          errors++;
          firstError ??= String((error as Error)?.message ?? error).split("\n")[0];
        }
      }
    }),
  );
  return { perSecond: calls / ((performance.now() - t0) / 1000), errors, firstError };
}

async function measure(row: AdapterRow, url: string, runTag: string) {
  const subject: Subject = await row.open(url, POOL);
  try {
    const t = subject.txonce();
    const cold = subject.txonce({ replayCache: false });
    let serial = 0;
    const completed: string[] = [];
    let cursor = 0;
    const cases = {
      bare: () => subject.transaction((tx) => subject.charge(tx, 1)),
      floor: () =>
        subject.transaction(async (tx) => {
          await subject.select(tx, "SELECT 1");
          const charge = await subject.charge(tx, 1);
          await subject.select(tx, "SELECT 1");
          return charge;
        }),
      first: async () => {
        const key = `${runTag}-${row.name}-${++serial}`;
        await t.withIdempotency(key, (tx) => subject.charge(tx, 1));
        completed.push(key);
      },
      replay: () =>
        cold.withIdempotency(completed[cursor++ % completed.length]!, async () => {
          throw new Error("a replay ran the operation");
        }),
    };
    for (const op of Object.values(cases)) await rate(CONCURRENCY, WARMUP_SECONDS, op);
    const rounds: Record<keyof typeof cases, number>[] = [];
    let errors = 0;
    let firstError: string | undefined;
    for (let r = 0; r < ROUNDS; r++) {
      const round = {} as Record<keyof typeof cases, number>;
      for (const [name, op] of Object.entries(cases) as [keyof typeof cases, () => Promise<unknown>][]) {
        const result = await rate(CONCURRENCY, SECONDS, op);
        round[name] = result.perSecond;
        errors += result.errors;
        firstError ??= result.firstError;
      }
      rounds.push(round);
    }
    return {
      bare: median(rounds.map((r) => r.bare)),
      first: median(rounds.map((r) => r.first)),
      replay: median(rounds.map((r) => r.replay)),
      floorRatio: median(rounds.map((r) => r.floor / r.bare)),
      firstRatio: median(rounds.map((r) => r.first / r.bare)),
      firstToFloor: median(rounds.map((r) => r.first / r.floor)),
      addedMs: median(rounds.map((r) => (CONCURRENCY * 1000) / r.first - (CONCURRENCY * 1000) / r.bare)),
      replayRatio: median(rounds.map((r) => r.replay / r.bare)),
      errors,
      firstError,
    };
  } finally {
    await subject.close();
  }
}

export async function adaptersBench({ url, pool }: BenchContext) {
  log("Adapters (issue 10): first execution and cold replay against a bare transaction of the same client");
  log(`settings: ${SECONDS}s per case x ${ROUNDS} rounds (interleaved, median of per-round ratios), warm-up ${WARMUP_SECONDS}s, ` +
    `concurrency ${CONCURRENCY}, pool ${POOL} per client`);
  log(`load: ${loadavg()}`);
  await pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0) ON CONFLICT (id) DO NOTHING");
  const runTag = randomBytes(3).toString("hex");
  const rows: string[][] = [];
  for (const row of adapterRows) {
    const r = await measure(row, url, runTag);
    rows.push([
      row.name,
      fmt(r.bare),
      `${fmt(r.floorRatio, 2)}x`,
      `${fmt(r.firstRatio, 2)}x`,
      `${fmt(r.firstToFloor, 2)}`,
      fmt(r.addedMs, 2),
      `${fmt(r.replayRatio, 2)}x`,
      r.errors === 0 ? "0" : `${r.errors} (${r.firstError})`,
    ]);
  }
  log();
  table(["adapter", "bare calls/s", "floor", "first", "first/floor", "added ms", "cold replay", "errors"], rows);
  log(`load: ${loadavg()}`);
}
