/**
 * Every statement txonce runs on PostgreSQL, in one place. Parameters are positional and cast
 * explicitly, so that drivers that send untyped parameters (Prisma's raw queries, PGlite) bind
 * them the same way as node-postgres.
 *
 * The tables are created by the migration in `prisma/migrations/` (see `schema.ts`).
 */

export const IDEMPOTENCY_TABLE = "txonce_idempotency_keys";

/**
 * The stored record of a key, if it is live (not expired). Rows only become visible when the
 * transaction that claimed them commits, and that transaction writes the result before it commits,
 * so a visible live row always holds a result.
 *
 * $1 scope, $2 key.
 */
export const findLiveRecord = `
SELECT fingerprint, result, created_at, expires_at
FROM ${IDEMPOTENCY_TABLE}
WHERE scope = $1::text AND key = $2::text AND expires_at > now()`;

/**
 * Claims a key: the first statement of the idempotent transaction. Inserts the key row, or
 * replaces an expired one, and returns it; returns no row when a live record exists. The row it
 * writes is the lock: a concurrent claim of the same key waits for this transaction to end.
 *
 * That wait is bounded by `lock_timeout`, set for this statement only: `bounded` sets it before
 * the insert runs and the final select restores the previous value once the row is claimed, so
 * the caller's own statements in the transaction keep their usual setting.
 *
 * $1 scope, $2 key, $3 fingerprint hash or null, $4 retention in ms, $5 lock_timeout (e.g. '2000ms').
 */
export const claimKey = `
WITH previous AS MATERIALIZED (
  SELECT current_setting('lock_timeout') AS lock_timeout
), bounded AS MATERIALIZED (
  SELECT set_config('lock_timeout', $5::text, true) FROM previous
), claimed AS (
  INSERT INTO ${IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
  SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
  FROM bounded
  ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
    WHERE k.expires_at <= now()
  RETURNING k.created_at, k.expires_at
)
SELECT claimed.created_at, claimed.expires_at, set_config('lock_timeout', previous.lock_timeout, true) AS lock_timeout
FROM claimed, previous`;

/** Stores the encoded result on the claimed row. $1 scope, $2 key, $3 encoded result. */
export const saveResult = `
UPDATE ${IDEMPOTENCY_TABLE} SET result = $3::text WHERE scope = $1::text AND key = $2::text`;

/**
 * Deletes one batch of expired keys and returns how many went. Rows that live traffic holds
 * (a call replacing an expired key) are skipped, not waited for; the next run gets them.
 *
 * $1 batch size.
 */
export const deleteExpiredKeys = `
WITH doomed AS (
  SELECT scope, key FROM ${IDEMPOTENCY_TABLE}
  WHERE expires_at <= now()
  ORDER BY expires_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${IDEMPOTENCY_TABLE} k USING doomed
  WHERE k.scope = doomed.scope AND k.key = doomed.key AND k.expires_at <= now()
  RETURNING 1
)
SELECT count(*)::integer AS deleted FROM deleted`;

/** How many keys have expired (for a dry run). */
export const countExpiredKeys = `
SELECT count(*)::integer AS expired FROM ${IDEMPOTENCY_TABLE} WHERE expires_at <= now()`;

/**
 * Takes the cleanup scheduler's lock for the current transaction, if no other replica holds it:
 * one key per database and schema, so replicas of one service take turns.
 */
export const tryCleanupLock = `
SELECT pg_try_advisory_xact_lock(hashtext('txonce.cleanup:' || current_database() || ':' || current_schema())) AS locked`;
