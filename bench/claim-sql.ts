/**
 * What txonce's claimKey statement costs on the server, next to simpler statements, over plain pg
 * (one connection, one call at a time). A side measurement for docs/benchmarks.md:
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/claim-sql.ts
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import * as sql from "../src/sql/postgres.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl } from "../test/support/postgres-server.js";

const serverUrl = process.env.DATABASE_URL;
if (!serverUrl) throw new Error("set DATABASE_URL");
const name = `txonce_claimsql_${randomBytes(4).toString("hex")}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const c = new pg.Client({ connectionString: databaseUrl(serverUrl, name) });
try {
  await c.connect();
  await c.query(schemaSql);
  const literal = sql.claimKey.replace(/\$1::text/g, "''::text").replace(/\$2::text/g, "'k1'::text")
    .replace(/\$3::text/g, "NULL::text").replace(/\$4::double precision/g, "172800000::double precision")
    .replace(/\$5::text/g, "'2000ms'::text");
  await c.query("BEGIN");
  const plan = await c.query("EXPLAIN (ANALYZE, TIMING) " + literal);
  console.log(plan.rows.map((r) => r["QUERY PLAN"]).filter((l: string) => /Planning|Execution/.test(l)).join("\n"));
  await c.query("ROLLBACK");
  const N = 3000;
  let tag = 0;
  const time = async (label: string, f: (i: number) => Promise<unknown>) => {
    tag++;
    for (let i = 0; i < 300; i++) await f(-i - 1);
    const t0 = performance.now();
    for (let i = 0; i < N; i++) await f(i);
    console.log(label.padEnd(48), `${(((performance.now() - t0) / N) * 1000).toFixed(0).padStart(5)} µs`);
  };
  const tx = async (q: () => Promise<unknown>) => { await c.query("BEGIN"); await q(); await c.query("COMMIT"); };
  const k = (p: string, i: number) => `${p}${tag}.${i}`;
  await time("tx: nothing", () => tx(async () => {}));
  await time("tx: claimKey", (i) => tx(() => c.query(sql.claimKey, ["", k("a", i), null, 172800000, "2000ms"])));
  await time("tx: claimKey, named (prepared) statement", (i) =>
    tx(() => c.query({ name: "claim", text: sql.claimKey, values: ["", k("a", i), null, 172800000, "2000ms"] })));
  await time("tx: same upsert without the lock_timeout CTEs", (i) => tx(() => c.query(
    `INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
     VALUES ($1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond')
     ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, result = NULL,
       created_at = now(), expires_at = excluded.expires_at WHERE k.expires_at <= now()
     RETURNING created_at, expires_at`, ["", k("b", i), null, 172800000])));
  await time("tx: plain INSERT of a key row", (i) => tx(() => c.query(
    `INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, expires_at) VALUES ($1, $2, now() + interval '48h')
     RETURNING created_at, expires_at`, ["", k("c", i)])));
  await time("tx: set_config('lock_timeout', ..., true) only", () =>
    tx(() => c.query("SELECT set_config('lock_timeout', $1, true)", ["2000ms"])));
  await time("tx: plain INSERT, then saveResult", (i) => tx(async () => {
    await c.query(`INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, expires_at) VALUES ($1, $2, now() + interval '48h')`, ["", k("e", i)]);
    await c.query(sql.saveResult, ["", k("e", i), '{"json":1}']);
  }));
  await time("SELECT 1 (no transaction)", () => c.query("SELECT 1"));
  await time("findLiveRecord (no transaction)", (i) => c.query(sql.findLiveRecord, ["", k("a", i)]));
} finally {
  await c.end();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
