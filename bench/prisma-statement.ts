/**
 * What one raw statement costs through Prisma 7 (PrismaPg), by its form: `$queryRawUnsafe` or
 * `$executeRawUnsafe`, with 0, 3 or 5 parameters, returning 1 or 6 columns. Node CPU per call and
 * the round trip, one call at a time, outside any transaction. A side measurement for
 * docs/benchmarks.md (issue 8: is a cheaper form of txonce's two statements worth having?):
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/prisma-statement.ts
 *
 * Knobs: PRISMA_STATEMENT_CALLS (per form and round, default 2000), PRISMA_STATEMENT_ROUNDS (3).
 */
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { env, fmt, loadavg, log, median, table } from "./common.js";

const url = process.env.DATABASE_URL;
if (!url) throw new Error("set DATABASE_URL");
const CALLS = env("PRISMA_STATEMENT_CALLS", 2000);
const ROUNDS = Math.max(1, Math.round(env("PRISMA_STATEMENT_ROUNDS", 3)));
const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 2 }) });

const FIVE = "SELECT 1 AS x WHERE $1::text IS NOT NULL AND $2::text IS NOT NULL AND $3::text IS NULL AND $4::double precision > 0 AND $5::bigint <> 0";
const fiveArgs = ["", "key-0123456789abcdef", null, 172_800_000, "1234567890123456789"];
const forms: [string, () => Promise<unknown>][] = [
  ["$queryRawUnsafe: SELECT 1", () => prisma.$queryRawUnsafe("SELECT 1")],
  ["$executeRawUnsafe: SELECT 1", () => prisma.$executeRawUnsafe("SELECT 1")],
  ["$queryRawUnsafe: 3 parameters, 1 column", () => prisma.$queryRawUnsafe(
    "SELECT 1 AS x WHERE $1::text IS NOT NULL AND $2::text IS NOT NULL AND $3::bigint <> 0", "", "key-0123456789abcdef", "1234567890123456789")],
  ["$queryRawUnsafe: 5 parameters, 1 column", () => prisma.$queryRawUnsafe(FIVE, ...fiveArgs)],
  ["$executeRawUnsafe: 5 parameters", () => prisma.$executeRawUnsafe(FIVE, ...fiveArgs)],
  ["$queryRawUnsafe: 1 parameter of 200 characters", () => prisma.$queryRawUnsafe("SELECT 1 AS x WHERE length($1::text) > 0", "x".repeat(200))],
  ["$queryRawUnsafe: returns text, 2 timestamptz, 1 text (the claim's row)", () =>
    prisma.$queryRawUnsafe("SELECT '(0,1)'::text AS ctid, now() AS a, now() AS b, '123456'::text AS xact")],
  ["$queryRawUnsafe: returns bool and 5 nulls", () =>
    prisma.$queryRawUnsafe("SELECT true AS free, now() AS n, NULL::text AS f, NULL::text AS r, NULL::timestamptz AS c, NULL::timestamptz AS e")],
];

try {
  await prisma.$queryRawUnsafe("SELECT 1");
  log(`prisma-statement: ${CALLS} calls x ${ROUNDS} rounds per form, one at a time; load average ${loadavg()}`);
  const cpu = new Map<string, number[]>();
  const wall = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, call] of forms) {
      for (let i = 0; i < 200; i++) await call();
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < CALLS; i++) await call();
      wall.set(name, [...(wall.get(name) ?? []), ((performance.now() - t0) / CALLS) * 1000]);
      const c = process.cpuUsage(c0);
      cpu.set(name, [...(cpu.get(name) ?? []), (c.user + c.system) / CALLS]);
    }
  }
  table(["form", "Node CPU µs", "round trip µs"], forms.map(([name]) => [name, fmt(median(cpu.get(name)!)), fmt(median(wall.get(name)!))]));
  log(`(medians of the rounds) load average after: ${loadavg()}`);
} finally {
  await prisma.$disconnect();
}
