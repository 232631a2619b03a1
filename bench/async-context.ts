/**
 * What an AsyncLocalStorage in use costs a Prisma application, by itself: txonceAdapter opens one
 * around each of txonce's transactions, and on Node 20 and 22 a storage in use makes Node track
 * every promise of the process (async_hooks); Node 24 keeps the context without them
 * (AsyncContextFrame). Bare Prisma interactive transactions (one insert), at concurrency 1 and 8,
 * in interleaved rounds with a storage in use (one `enterWith`) and not (`disable()`), in one
 * process that imports nothing of txonce.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/async-context.ts
 *
 * The database needs the benchmark's `charges` table and an account `bench` (npm run bench
 * creates them in its own database; this script creates them if missing).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { env, fmt, loadavg, log, median, table } from "./common.js";

const url = process.env.DATABASE_URL;
if (!url) throw new Error("DATABASE_URL is required");
const SECONDS = env("BENCH_SECONDS", 1.5);
const ROUNDS = Math.max(1, Math.round(env("BENCH_ROUNDS", 5)));
const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 24 }) });
await prisma.$executeRawUnsafe("CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, balance numeric(12,2) NOT NULL)");
await prisma.$executeRawUnsafe(
  `CREATE TABLE IF NOT EXISTS charges (id serial PRIMARY KEY, account_id text NOT NULL REFERENCES accounts (id),
     amount numeric(12,2) NOT NULL, created_at timestamptz(3) NOT NULL DEFAULT now())`,
);
await prisma.$executeRawUnsafe("INSERT INTO accounts (id, balance) VALUES ('bench', 0) ON CONFLICT DO NOTHING");

const insert = () => prisma.$transaction((tx) => tx.charge.create({ data: { accountId: "bench", amount: 1 } }));
async function closedLoop(concurrency: number) {
  let calls = 0;
  const end = performance.now() + SECONDS * 1000;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      await insert();
      calls++;
    }
  }));
  return calls / SECONDS;
}

log(`AsyncLocalStorage in use, on bare Prisma transactions: Node ${process.version}, ${ROUNDS} rounds x ${SECONDS}s, load ${loadavg()}`);
const storage = new AsyncLocalStorage<object>();
for (let i = 0; i < 200; i++) await insert(); // warm-up
const rows: string[][] = [];
for (const concurrency of [1, 8]) {
  const off: number[] = [];
  const on: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    storage.disable();
    off.push(await closedLoop(concurrency));
    storage.enterWith({});
    on.push(await closedLoop(concurrency));
  }
  storage.disable();
  rows.push([String(concurrency), fmt(median(off)), fmt(median(on)), `${fmt(median(on.map((r, i) => r / off[i]!)), 2)}x`]);
}
table(["conc", "calls/s, no storage", "calls/s, a storage in use", "ratio"], rows);
log(`load ${loadavg()}`);
await prisma.$disconnect();
