/**
 * Statements of designs that were measured and not shipped (docs/benchmarks.md, "Idempotency"),
 * kept so that bench/claim-sql.ts and bench/idempotency.ts can run them beside the shipped ones.
 */
import * as sql from "../src/sql/postgres.js";

/** The claim as shipped before issue 8: waits on the row lock, bounded by a lock_timeout it sets and restores. */
export const waitingClaim = `
WITH previous AS MATERIALIZED (
  SELECT current_setting('lock_timeout') AS lock_timeout
), bounded AS MATERIALIZED (
  SELECT set_config('lock_timeout', $5::text, true) FROM previous
), claimed AS (
  INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  FROM bounded
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at
)
SELECT claimed.created_at, claimed.expires_at, set_config('lock_timeout', previous.lock_timeout, true) AS lock_timeout
FROM claimed, previous`;
/**
 * The first design of the new claim (not shipped): it also returned the key's live record, or
 * "busy", in the same statement, through CTEs and a UNION. $5 is the lock id here too.
 */
export const claimReturningRecord = `
WITH live AS MATERIALIZED (
  SELECT fingerprint, result, created_at, expires_at FROM ${sql.IDEMPOTENCY_TABLE}
  WHERE scope = $1::text AND key = $2::text AND expires_at > now()
), lock AS MATERIALIZED (
  SELECT pg_try_advisory_xact_lock($5::bigint) AS taken WHERE NOT EXISTS (SELECT FROM live)
), claimed AS (
  INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  FROM lock WHERE lock.taken
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at
)
SELECT 'stored' AS state, fingerprint, result, created_at, expires_at, now() AS db_now, NULL::text AS xact FROM live
UNION ALL
SELECT 'busy', NULL, NULL, NULL, NULL, now(), NULL FROM lock WHERE NOT lock.taken
UNION ALL
SELECT 'claimed', NULL, NULL, created_at, expires_at, now(), pg_current_xact_id()::text FROM claimed`;
export const plainUpsert = `
INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
VALUES ($1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond')
ON CONFLICT (scope, key) DO UPDATE
  SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
  WHERE k.expires_at <= now()
RETURNING k.created_at, k.expires_at`;
/**
 * A claim that writes nothing (issue 8, second pass; not shipped): the key's lock if free at
 * once, and its live record if any, in one SELECT; the save ({@link insertSave}) then inserts the
 * row with its result. A cold replay is then BEGIN, this, ROLLBACK. Dropped: a record committed
 * between the statement's snapshot and its lock is not seen, so the operation runs a second time
 * (then rolls back at the save); and under SERIALIZABLE its read of the key index makes concurrent
 * first executions fail each other with 40001. $1 scope, $2 key, $3 lock id.
 */
export const selectClaim = `
SELECT pg_try_advisory_xact_lock($3::bigint) AS free, now() AS db_now,
  k.fingerprint, k.result, k.created_at, k.expires_at
FROM (SELECT) AS one
LEFT JOIN ${sql.IDEMPOTENCY_TABLE} AS k ON k.scope = $1::text AND k.key = $2::text AND k.expires_at > now()`;
/** The save that goes with it: one INSERT of the row with its result, replacing an expired row. */
export const insertSave = `
INSERT INTO ${sql.IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, result, expires_at)
VALUES ($1::text, $2::text, $3::text, $5::text, now() + $4::double precision * interval '1 millisecond')
ON CONFLICT (scope, key) DO UPDATE
  SET fingerprint = excluded.fingerprint, result = excluded.result, created_at = excluded.created_at, expires_at = excluded.expires_at
  WHERE k.expires_at <= now()
RETURNING pg_current_xact_id()::text AS xact`;
/**
 * The shipped claim that also returns the live record it conflicts with, so that a cold replay
 * needs no poll: the lookup runs only when nothing was inserted (a one-time filter). Not shipped:
 * its CTE costs every first execution about twice the claim's server CPU.
 */
export const claimOrRecord = `
WITH claimed AS (
  INSERT INTO ${sql.IDEMPOTENCY_TABLE} (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  WHERE pg_try_advisory_xact_lock($5::bigint)
  ON CONFLICT (scope, key) DO NOTHING
  RETURNING ctid, created_at, expires_at
)
SELECT c.ctid::text AS ctid, pg_current_xact_id_if_assigned()::text AS xact, now() AS db_now,
  coalesce(c.created_at, k.created_at) AS created_at, coalesce(c.expires_at, k.expires_at) AS expires_at,
  k.fingerprint, k.result
FROM (SELECT) AS one
LEFT JOIN claimed AS c ON true
LEFT JOIN LATERAL (
  SELECT fingerprint, result, created_at, expires_at FROM ${sql.IDEMPOTENCY_TABLE}
  WHERE c.ctid IS NULL AND scope = $1::text AND key = $2::text AND expires_at > now()
) AS k ON true`;

/** The poll as the first pass of issue 8 shipped it: the live record in a MATERIALIZED CTE. */
export const pollKeyCte = `
WITH live AS MATERIALIZED (
  SELECT fingerprint, result, created_at, expires_at FROM ${sql.IDEMPOTENCY_TABLE}
  WHERE scope = $1::text AND key = $2::text AND expires_at > now()
)
SELECT live.fingerprint, live.result, live.created_at, live.expires_at, now() AS db_now,
  (SELECT pg_try_advisory_xact_lock($3::bigint) WHERE NOT EXISTS (SELECT FROM live)) AS free
FROM (SELECT) AS one LEFT JOIN live ON true`;
