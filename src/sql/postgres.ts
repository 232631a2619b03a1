/**
 * Every statement txonce runs on PostgreSQL, in one place. Parameters are positional and cast
 * explicitly, so that drivers that send untyped parameters (Prisma's raw queries, PGlite) bind
 * them the same way as node-postgres.
 *
 * The tables are created by the migration in `prisma/migrations/` (see `schema.ts`).
 */

export const IDEMPOTENCY_TABLE = "txonce_idempotency_keys";

/**
 * Claims a key: the first statement of the idempotent transaction, and the only one it needs
 * before the operation. It never waits for another call: it takes the key's transaction-level
 * advisory lock only if it is free at once, and only then inserts the key row. Returns the row's
 * `ctid` (where {@link saveResult} finds it again), `created_at` and `expires_at`, with `xact`, the
 * transaction's id, with which the outcome of a COMMIT that got no answer can be looked up
 * afterwards ({@link transactionStatus}). Returns no
 * row when the key is taken: another transaction holds its lock (a call running the operation,
 * or one replacing an expired record), or a row exists; the caller rolls back and asks
 * {@link pollKey} which, outside any transaction. A live record is left alone (no row lock, no
 * transaction id, no WAL: a replay writes nothing); an expired one is replaced by
 * {@link claimExpiredKey}, which the caller sends once the poll found no live record.
 *
 * The only lock the insert can wait for is held by someone who does not take the key's advisory
 * lock: the cleanup's batch DELETE of expired rows (one batch, milliseconds), or a change of the
 * row by hand.
 *
 * Kept to one plain INSERT on purpose: parsing and planning dominate this statement's server
 * time (bench/claim-sql.ts: a version that also returned the live record in the same statement,
 * through CTEs and a UNION, cost about three times the server CPU). And an INSERT rather than a
 * SELECT of the lock and the live record (with the row inserted by the save): a SELECT's snapshot
 * is taken before its lock, so it misses a record committed in between and the operation would run
 * a second time; and under SERIALIZABLE its read of the key index makes concurrent first
 * executions fail each other (bench/claim-races.ts, docs/benchmarks.md).
 *
 * $1 scope, $2 key, $3 fingerprint hash or null, $4 retention in ms, $5 the key's advisory lock
 * id (a bigint, see `keyLockId` in idempotency.ts).
 */
export const claimKey = `
INSERT INTO ${IDEMPOTENCY_TABLE} (scope, key, fingerprint, expires_at)
SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
WHERE pg_try_advisory_xact_lock($5::bigint)
ON CONFLICT (scope, key) DO NOTHING
RETURNING ctid::text AS ctid, created_at, expires_at, pg_current_xact_id()::text AS xact`;

/**
 * {@link claimKey} that also replaces the key's row if it has expired (the conflicting row is
 * locked, then replaced only if `expires_at` has passed). Same parameters and result.
 */
export const claimExpiredKey = `
INSERT INTO ${IDEMPOTENCY_TABLE} AS k (scope, key, fingerprint, expires_at)
SELECT $1::text, $2::text, $3::text, now() + $4::double precision * interval '1 millisecond'
WHERE pg_try_advisory_xact_lock($5::bigint)
ON CONFLICT (scope, key) DO UPDATE
  SET fingerprint = excluded.fingerprint, result = NULL, created_at = now(), expires_at = excluded.expires_at
  WHERE k.expires_at <= now()
RETURNING k.ctid::text AS ctid, k.created_at, k.expires_at, pg_current_xact_id()::text AS xact`;

/**
 * Where a taken key stands, in one statement outside any transaction: its live record if one is
 * committed (`free` is then null), else whether its advisory lock is free at this instant (taken
 * and, the statement being its own transaction, released at once; the CASE tries it only when
 * there is no live record). A row only becomes visible when the transaction that claimed it
 * commits, and that transaction writes the result before it commits, so a visible live row always
 * holds a result. `db_now` is the database's clock, for the in-process cache. A LEFT JOIN rather
 * than a CTE: about a fifth less server time (bench/claim-sql.ts). $1 scope, $2 key, $3 the key's
 * advisory lock id.
 */
export const pollKey = `
SELECT k.fingerprint, k.result, k.created_at, k.expires_at, now() AS db_now,
  CASE WHEN k.created_at IS NULL THEN pg_try_advisory_xact_lock($3::bigint) END AS free
FROM (SELECT) AS one
LEFT JOIN ${IDEMPOTENCY_TABLE} AS k ON k.scope = $1::text AND k.key = $2::text AND k.expires_at > now()`;

/**
 * Stores the encoded result on the row the claim inserted, found by its `ctid` (a TID scan): no
 * index is read, so under SERIALIZABLE the save takes no predicate lock on the key index, and
 * concurrent first executions of different keys do not make each other fail with a serialization
 * error, as a lookup by (scope, key) did (bench/claim-sql.ts and docs/benchmarks.md: 8-36% of
 * them at 8 at a time, none by ctid); it is also cheaper. Returns no row if the row is no longer
 * at that ctid (the operation changed the key row itself): the caller then sends
 * {@link saveResultByKey}. $1 the claim's ctid, $2 encoded result.
 */
export const saveResult = `
UPDATE ${IDEMPOTENCY_TABLE} SET result = $2::text WHERE ctid = $1::tid RETURNING true AS saved`;

/** {@link saveResult} by (scope, key). $1 scope, $2 key, $3 encoded result. */
export const saveResultByKey = `
UPDATE ${IDEMPOTENCY_TABLE} SET result = $3::text WHERE scope = $1::text AND key = $2::text`;

/**
 * Whether the transaction that claimed a key committed, after its COMMIT failed without an answer
 * (PostgreSQL's `pg_xact_status`: `committed`, `aborted` or `in progress`), and whether the row it
 * wrote is still there, so that a transaction id reused after a failover is not mistaken for it.
 * $1 transaction id (xid8 as text), $2 scope, $3 key, $4 created_at of the claim.
 */
export const transactionStatus = `
SELECT pg_xact_status($1::xid8) AS status, EXISTS (
  SELECT FROM ${IDEMPOTENCY_TABLE} WHERE scope = $2::text AND key = $3::text AND created_at = $4::timestamptz
) AS row_exists`;

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

export const OUTBOX_TABLE = "txonce_outbox_messages";
/** The channel the enqueueing transaction notifies on commit; relays LISTEN on it. */
export const OUTBOX_CHANNEL = "txonce_outbox";

/**
 * Enqueues messages in the caller's transaction, in one statement. For each ordering key it first
 * takes a transaction-level advisory lock (keys in sorted order, so two batches cannot deadlock),
 * then draws `seq`: a later transaction with the same key waits for this one to end, so per key,
 * `seq` order is commit order and the relay never sees a lower `seq` commit after a higher one.
 * It also notifies the relays, which PostgreSQL delivers when the transaction commits.
 *
 * $1 ids, $2 topics, $3 keys (nulls allowed), $4 payloads, $5 headers (JSON text or null),
 * $6 delays in ms; all arrays of the same length.
 */
export const enqueueMessages = `
WITH locks AS MATERIALIZED (
  SELECT count(*) AS n FROM (
    SELECT pg_advisory_xact_lock(hashtextextended('txonce.outbox:' || k, 0))
    FROM (SELECT DISTINCT k FROM unnest($3::text[]) AS k WHERE k IS NOT NULL ORDER BY k) AS keys
  ) AS taken
), inserted AS (
  INSERT INTO ${OUTBOX_TABLE} (id, topic, key, payload, headers, available_at)
  SELECT m.id, m.topic, m.key, m.payload, m.headers::jsonb, now() + m.delay_ms * interval '1 millisecond'
  FROM locks, unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::double precision[])
    WITH ORDINALITY AS m(id, topic, key, payload, headers, delay_ms, ord)
  ORDER BY m.ord
  RETURNING 1
)
SELECT enqueued FROM (SELECT count(*)::integer AS enqueued FROM inserted) AS c,
  LATERAL (SELECT pg_notify('${OUTBOX_CHANNEL}', '')) AS notify`;

/**
 * Claims up to $1 due messages for $2 ms under lease token $3, in one short transaction. A
 * message is due when it is unpublished, not dead, available, not leased (or its lease ran out:
 * its relay crashed), and no earlier message with its key is still unpublished and alive. Rows
 * another relay is claiming right now are skipped, not waited for.
 */
export const claimMessages = `
WITH due AS (
  SELECT m.id FROM ${OUTBOX_TABLE} m
  WHERE m.published_at IS NULL AND m.dead_at IS NULL AND m.available_at <= now()
    AND (m.lease_until IS NULL OR m.lease_until < now())
    AND (m.key IS NULL OR NOT EXISTS (
      SELECT 1 FROM ${OUTBOX_TABLE} p
      WHERE p.key = m.key AND p.published_at IS NULL AND p.dead_at IS NULL AND p.seq < m.seq))
  -- Same order as seq under the IS NULL filters, but lets the (published_at, dead_at, seq) index
  -- deliver it: ORDER BY seq alone made PostgreSQL sort every pending row on every claim.
  ORDER BY m.published_at, m.dead_at, m.seq
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
)
UPDATE ${OUTBOX_TABLE} m
SET lease_until = now() + $2::double precision * interval '1 millisecond', lease_token = $3::uuid, attempts = m.attempts + 1
FROM due WHERE m.id = due.id
RETURNING m.id::text AS id, m.seq::text AS seq, m.topic, m.key, m.payload, m.headers::text AS headers,
  m.created_at, m.attempts`;

/**
 * Extends a claim along the keys whose heads it took: for each key in $1, the pending messages
 * that follow the head ($2 of them at most), in seq order and up to the first one that is not
 * available yet, leased under the same token $4 for $3 ms (a lease that ran out counts as free). Nobody else can claim them: their
 * head, unpublished and leased by this claim, holds them back. The relay then publishes each key's
 * run in order, so a hot key costs one claim per run instead of one per message.
 */
export const claimRuns = `
WITH runs AS (
  SELECT next.id, bool_and(next.available_at <= now() AND (next.lease_until IS NULL OR next.lease_until < now()))
    OVER (PARTITION BY heads.key ORDER BY next.seq) AS unbroken
  FROM unnest($1::text[]) AS heads(key),
  LATERAL (
    SELECT p.id, p.seq, p.available_at, p.lease_until FROM ${OUTBOX_TABLE} p
    WHERE p.key = heads.key AND p.published_at IS NULL AND p.dead_at IS NULL
    ORDER BY p.key, p.published_at, p.dead_at, p.seq
    OFFSET 1 LIMIT $2::integer
  ) AS next
)
UPDATE ${OUTBOX_TABLE} m
SET lease_until = now() + $3::double precision * interval '1 millisecond', lease_token = $4::uuid, attempts = m.attempts + 1
FROM runs WHERE m.id = runs.id AND runs.unbroken
RETURNING m.id::text AS id, m.seq::text AS seq, m.topic, m.key, m.payload, m.headers::text AS headers,
  m.created_at, m.attempts`;

/**
 * Hands back claimed messages that were not attempted (they followed a failed message of their
 * key in the same claim), undoing the attempt the claim counted. $1 ids, $2 lease token.
 */
export const releaseClaimed = `
UPDATE ${OUTBOX_TABLE} SET lease_until = NULL, lease_token = NULL, attempts = attempts - 1
WHERE id = ANY($1::uuid[]) AND lease_token = $2::uuid`;

/** Marks claimed messages published, if this claim still holds them. $1 ids, $2 lease token. */
export const markPublished = `
UPDATE ${OUTBOX_TABLE} SET published_at = now(), lease_until = NULL, lease_token = NULL
WHERE id = ANY($1::uuid[]) AND lease_token = $2::uuid`;

/** Deletes claimed messages once published (deleteOnPublish), if this claim still holds them. */
export const deletePublished = `
DELETE FROM ${OUTBOX_TABLE} WHERE id = ANY($1::uuid[]) AND lease_token = $2::uuid`;

/**
 * Records failed attempts: each message goes back after its backoff, or is dead-lettered when
 * it has used its attempts. $1 ids, $2 errors, $3 backoffs in ms, $4 dead flags, $5 lease token.
 * Returns the ids it changed.
 */
export const markFailed = `
UPDATE ${OUTBOX_TABLE} m
SET last_error = f.error, lease_until = NULL, lease_token = NULL,
    available_at = CASE WHEN f.dead THEN m.available_at ELSE now() + f.backoff_ms * interval '1 millisecond' END,
    dead_at = CASE WHEN f.dead THEN now() ELSE NULL END
FROM unnest($1::uuid[], $2::text[], $3::double precision[], $4::boolean[]) AS f(id, error, backoff_ms, dead)
WHERE m.id = f.id AND m.lease_token = $5::uuid
RETURNING m.id::text AS id`;

/** Puts dead messages back in the queue with fresh attempts. $1 ids or null for all, $2 topic or null. */
export const requeueDead = `
WITH requeued AS (
  UPDATE ${OUTBOX_TABLE} SET dead_at = NULL, attempts = 0, available_at = now()
  WHERE dead_at IS NOT NULL AND published_at IS NULL
    AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[])) AND ($2::text IS NULL OR topic = $2::text)
  RETURNING 1
)
SELECT requeued FROM (SELECT count(*)::integer AS requeued FROM requeued) AS c,
  LATERAL (SELECT pg_notify('${OUTBOX_CHANNEL}', '')) AS notify`;

/** The backlog: unpublished live messages, dead ones, and the age of the oldest unpublished one. */
export const outboxBacklog = `
SELECT
  count(*) FILTER (WHERE dead_at IS NULL)::integer AS pending,
  count(*) FILTER (WHERE dead_at IS NOT NULL)::integer AS dead,
  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE dead_at IS NULL)) * 1000, 0)::double precision AS oldest_age_ms
FROM ${OUTBOX_TABLE} WHERE published_at IS NULL`;

/** Deletes one batch of messages published more than $2 ms ago. $1 batch size. */
export const deletePublishedBefore = `
WITH doomed AS (
  SELECT id FROM ${OUTBOX_TABLE}
  WHERE published_at <= now() - $2::double precision * interval '1 millisecond'
  ORDER BY published_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${OUTBOX_TABLE} m USING doomed WHERE m.id = doomed.id RETURNING 1
)
SELECT count(*)::integer AS deleted FROM deleted`;

/** How many published messages are past their retention. $1 retention in ms. */
export const countPublishedBefore = `
SELECT count(*)::integer AS expired FROM ${OUTBOX_TABLE}
WHERE published_at <= now() - $1::double precision * interval '1 millisecond'`;
