import pg from "pg";
import * as sql from "./src/sql/postgres.js";
const T = sql.IDEMPOTENCY_TABLE;
const lock = `hashtextextended('txonce.key:' || length($1::text) || ':' || $1::text || $2::text, 0)`;
const variants: Record<string, string> = {
  d_plain_upsert: `
INSERT INTO ${T} AS k (scope, key, fingerprint, expires_at)
VALUES ($1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond')
ON CONFLICT (scope, key) DO UPDATE
  SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
  WHERE k.expires_at <= now()
RETURNING k.created_at, k.expires_at`,
  g_two_branch_jskey: `
WITH claimed AS (
  INSERT INTO ${T} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  WHERE CASE WHEN EXISTS (SELECT FROM ${T} WHERE scope = $1::text AND key = $2::text AND expires_at > now()) THEN false
    ELSE pg_try_advisory_xact_lock($5::bigint) END
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at, pg_current_xact_id()::text AS xact
)
SELECT NULL AS fingerprint, NULL AS result, created_at, expires_at, now() AS db_now, xact FROM claimed
UNION ALL
SELECT fingerprint, result, created_at, expires_at, now(), NULL FROM ${T}
WHERE scope = $1::text AND key = $2::text AND expires_at > now()`,
  h_insert_only_jskey: `
INSERT INTO ${T} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  WHERE pg_try_advisory_xact_lock($5::bigint)
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at, pg_current_xact_id()::text AS xact`,
  i_insert_guarded_jskey: `
INSERT INTO ${T} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  WHERE CASE WHEN EXISTS (SELECT FROM ${T} WHERE scope = $1::text AND key = $2::text AND expires_at > now()) THEN false
    ELSE pg_try_advisory_xact_lock($5::bigint) END
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at, pg_current_xact_id()::text AS xact`,
  e_select1: `SELECT $1::text, $2::text, $3::text, $4::double precision`,
};
const c = new pg.Client({ connectionString: process.env.PGURL }); await c.connect();
import { readFileSync } from "node:fs";
const pid = (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p;
const ticks = () => { const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" "); return Number(f[11]) + Number(f[12]); };
const cpu: Record<string, number[]> = {};
let tag = 0;
const N = Number(process.env.N ?? 1500);
const res: Record<string, number[]> = {};
for (let round = 0; round < 4; round++) for (const [name, text] of Object.entries(variants)) for (const named of [false, true]) {
  tag++;
  const run = async (i: number) => { await c.query("BEGIN"); await c.query(named ? { name: name, text, values: ["", `${name}${tag}.${i}`, null, 1e6, ...(text.includes("$5") ? [String(tag * 100000 + i)] : [])] } : { text, values: ["", `${name}${tag}.${i}`, null, 1e6, ...(text.includes("$5") ? [String(tag * 100000 + i)] : [])] }); await c.query("ROLLBACK"); };
  for (let i = 0; i < 100; i++) await run(-i - 1);
  const k0 = ticks(); const t0 = performance.now(); for (let i = 0; i < N; i++) await run(i);
  (cpu[`${name}${named ? " (named)" : ""}`] ??= []).push(((ticks() - k0) * 10000) / N);
  (res[`${name}${named ? " (named)" : ""}`] ??= []).push(((performance.now() - t0) / N) * 1000);
}
for (const [k, v] of Object.entries(res)) console.log(k.padEnd(32), "wall", v.map((x) => x.toFixed(0)).join(" "), " server CPU µs", cpu[k]!.map((x) => x.toFixed(0)).join(" "));
await c.end();
