/**
 * Every statement txonce runs on PostgreSQL, in one place. Parameters are positional and cast
 * explicitly, so that drivers that send untyped parameters (Prisma's raw queries, PGlite) bind
 * them the same way as node-postgres.
 *
 * The tables are created by the migration in `prisma/migrations/` (see `schema.ts`). Their names
 * are written unqualified (found on the connection's search_path), and `current_schema()` stands
 * for the schema of txonce's tables in lock ids: `statementsFor(schema)` (statements.ts) qualifies
 * both for the `schema` option. Everything that runs these statements gets them from there.
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
 * id (a bigint, see `keyLockId` in key-lock.ts).
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

/**
 * {@link saveResult}, and {@link saveResultByKey} when the row is no longer at that ctid, in one
 * statement: what an adapter sends in the COMMIT's round trip (`SqlExecutor.sendWithCommit`).
 * The look-up by key sits behind a one-time filter, so it reads the key index (and, under
 * SERIALIZABLE, takes a predicate lock on it) only when the row has moved. $1 the claim's ctid,
 * $2 encoded result, $3 scope, $4 key.
 */
export const saveResultAtCommit = `
WITH by_ctid AS (UPDATE ${IDEMPOTENCY_TABLE} SET result = $2::text WHERE ctid = $1::tid RETURNING 1)
UPDATE ${IDEMPOTENCY_TABLE} SET result = $2::text
WHERE NOT EXISTS (SELECT FROM by_ctid) AND scope = $3::text AND key = $4::text`;

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
 * The batch is deleted by the row addresses (`ctid`) it locked, a TID scan whatever the planner
 * believes of the table. A join on the key instead depended on the statistics: analyzed when it
 * held only dead rows (after a cleanup that emptied it), the table looked empty to the planner
 * after it filled again, and each batch of 2,000 among 100,000 keys ran for over a minute as a
 * nested loop, holding the locks that live calls on expired keys waited for. A row this
 * statement locked keeps its address, and its expiry, until the statement ends: the delete needs
 * no other condition (one on `expires_at` would again let the planner pick an index scan).
 *
 * $1 batch size.
 */
export const deleteExpiredKeys = `
WITH doomed AS (
  SELECT ctid FROM ${IDEMPOTENCY_TABLE}
  WHERE expires_at <= now()
  ORDER BY expires_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${IDEMPOTENCY_TABLE} k
  WHERE k.ctid = ANY (ARRAY(SELECT ctid FROM doomed))
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

/**
 * Where txonce's tables are, when a statement did not find them: the schema searched
 * (`current_schema()`, the first schema of the search_path that exists, or the `schema` option)
 * and every schema that has a table named $1, comma-separated.
 */
export const locateTables = `
SELECT current_schema() AS searched, (
  SELECT string_agg(n.nspname, ',' ORDER BY n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relname = $1::text AND c.relkind IN ('r', 'p')
) AS found`;

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
 * $6 delays in ms, $7 trace contexts (JSON text or null); all arrays of the same length.
 */
export const enqueueMessages = `
WITH locks AS MATERIALIZED (
  SELECT count(*) AS n FROM (
    SELECT pg_advisory_xact_lock(hashtextextended('txonce.outbox:' || k, 0))
    FROM (SELECT DISTINCT k FROM unnest($3::text[]) AS k WHERE k IS NOT NULL ORDER BY k) AS keys
  ) AS taken
), inserted AS (
  INSERT INTO ${OUTBOX_TABLE} (id, topic, key, payload, headers, available_at, trace_context)
  SELECT m.id, m.topic, m.key, m.payload, m.headers::jsonb, now() + m.delay_ms * interval '1 millisecond', m.trace_context::jsonb
  FROM locks, unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::double precision[], $7::text[])
    WITH ORDINALITY AS m(id, topic, key, payload, headers, delay_ms, trace_context, ord)
  ORDER BY m.ord
  RETURNING 1
)
SELECT enqueued FROM (SELECT count(*)::integer AS enqueued FROM inserted) AS c,
  LATERAL (SELECT pg_notify('${OUTBOX_CHANNEL}', '')) AS notify`;

/**
 * A message is due when it is pending (unpublished, not dead), available (no enqueue delay or
 * retry backoff left) and not leased (or its lease ran out: its relay crashed). Keyed messages
 * are only due at the head of their key: when no earlier message of the key is pending.
 */
const isDue = (m: string) => `${m}.available_at <= now() AND (${m}.lease_until IS NULL OR ${m}.lease_until < now())`;

/**
 * Claims a batch for $2 ms under lease token $3: at most $1 unkeyed messages and key heads, and
 * with the runs behind those heads at most $6 messages in all, in one statement that reads about
 * what it leases, however large the backlog:
 *
 * - Keyed messages: a walk over the pending keys, from the first key after $4 (the cursor: where
 *   the relay's previous claim stopped; '' for the start), one index probe per key (a loose index
 *   scan of (published_at, dead_at, key, seq)), reading each key's head only. It stops after $1
 *   due heads or $5 keys. The pending messages behind a head are never read, except the run of
 *   followers that this claim leases with it (below).
 * - Unkeyed messages: the due ones, in available_at order (the (published_at, dead_at, key,
 *   available_at) index: messages waiting for a retry or leased are not read).
 * - The batch: unkeyed messages and heads taken in turns, up to $1; the room left up to $6 goes
 *   to the runs behind the heads taken, shared evenly between them (each run a prefix of its
 *   key's pending messages, up to the first one that is not due).
 *
 * Rows another relay is claiming or recording right now are skipped (`SKIP LOCKED`), never
 * waited for. The claim does not count attempts: the relay does, when it hands a message to the
 * publisher. Returns one row per leased message, with the columns `resume_after` (the cursor for
 * the next claim), `walked_to_end` (the walk reached the last pending key) and `keys_walked`
 * repeated on each; when nothing was leased, one row with only those three.
 */
export const claimMessages = `
WITH RECURSIVE walk AS (
  (SELECT p.key, p.id, d.due, 1 AS visited, d.due::integer AS due_seen
   FROM ${OUTBOX_TABLE} p, LATERAL (SELECT ${isDue("p")} AS due) AS d
   WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key > $4::text
   ORDER BY p.published_at, p.dead_at, p.key, p.seq
   LIMIT 1)
  UNION ALL
  SELECT n.key, n.id, n.due, w.visited + 1, w.due_seen + n.due::integer
  FROM walk w, LATERAL (
    SELECT p.key, p.id, ${isDue("p")} AS due FROM ${OUTBOX_TABLE} p
    WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key > w.key
    ORDER BY p.published_at, p.dead_at, p.key, p.seq
    LIMIT 1
  ) AS n
  WHERE w.visited < $5::integer AND w.due_seen < $1::integer
), heads AS MATERIALIZED (
  SELECT m.id, m.key, m.seq FROM ${OUTBOX_TABLE} m
  WHERE m.id = ANY(ARRAY(SELECT id FROM walk WHERE due))
    AND m.published_at IS NULL AND m.dead_at IS NULL AND ${isDue("m")}
  FOR UPDATE SKIP LOCKED
), unkeyed AS MATERIALIZED (
  SELECT m.id FROM ${OUTBOX_TABLE} m
  WHERE m.published_at IS NULL AND m.dead_at IS NULL AND m.key IS NULL AND m.available_at <= now()
    AND (m.lease_until IS NULL OR m.lease_until < now())
  ORDER BY m.published_at, m.dead_at, m.key, m.available_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
), firsts AS MATERIALIZED (
  SELECT id, key, seq FROM (
    SELECT id, NULL::text AS key, NULL::bigint AS seq, row_number() OVER () AS turn FROM unkeyed
    UNION ALL
    SELECT id, key, seq, row_number() OVER (ORDER BY key) FROM heads
  ) AS taken
  ORDER BY turn
  LIMIT $1::integer
), room AS MATERIALIZED (
  SELECT $6::integer - count(*) AS left_over, count(key) AS heads FROM firsts
), behind AS MATERIALIZED (
  SELECT f.id, f.key, f.seq,
    bool_and(${isDue("f")}) OVER (PARTITION BY f.key ORDER BY f.seq) AS unbroken,
    row_number() OVER (PARTITION BY f.key ORDER BY f.seq) AS place
  FROM firsts h, room r, LATERAL (
    SELECT p.id, p.key, p.seq, p.available_at, p.lease_until FROM ${OUTBOX_TABLE} p
    WHERE p.published_at IS NULL AND p.dead_at IS NULL AND p.key = h.key AND p.seq > h.seq
    ORDER BY p.published_at, p.dead_at, p.key, p.seq
    LIMIT ceil(r.left_over::numeric / greatest(r.heads, 1))
  ) AS f
  WHERE h.key IS NOT NULL AND r.left_over > 0
), behind_locked AS MATERIALIZED (
  SELECT m.id FROM ${OUTBOX_TABLE} m
  WHERE m.id = ANY(ARRAY(SELECT id FROM behind WHERE unbroken))
    AND m.published_at IS NULL AND m.dead_at IS NULL AND ${isDue("m")}
  FOR UPDATE SKIP LOCKED
), runs AS (
  SELECT b.id FROM behind b
  WHERE b.unbroken AND NOT EXISTS (
    SELECT 1 FROM behind e
    WHERE e.key = b.key AND e.seq <= b.seq AND e.id NOT IN (SELECT id FROM behind_locked))
  ORDER BY b.place, b.key
  LIMIT (SELECT left_over FROM room)
), leased AS (
  -- available_at moves to the end of the lease too, so that leased messages drop out of the due
  -- range of the unkeyed index until their lease runs out.
  UPDATE ${OUTBOX_TABLE} m
  SET lease_until = now() + $2::double precision * interval '1 millisecond', lease_token = $3::uuid,
    available_at = now() + $2::double precision * interval '1 millisecond'
  WHERE m.id = ANY(ARRAY(SELECT id FROM firsts UNION ALL SELECT id FROM runs))
  RETURNING m.id::text AS id, m.seq::text AS seq, m.topic, m.key, m.payload, m.headers::text AS headers,
    m.created_at, m.attempts, m.trace_context::text AS trace_context
), walked AS (
  -- Heads locked but left out of the batch (no room) are walked again by the next claim.
  SELECT CASE WHEN left_out THEN COALESCE((SELECT max(key) FROM firsts), $4::text) ELSE last_key END AS resume_after,
    walked_to_end AND NOT left_out AS walked_to_end, keys_walked
  FROM (
    SELECT COALESCE(max(key), $4::text) AS last_key, count(*)::integer AS keys_walked,
      count(*) < $5::integer AND COALESCE(max(due_seen), 0) < $1::integer AS walked_to_end,
      EXISTS (SELECT 1 FROM heads WHERE id NOT IN (SELECT id FROM firsts)) AS left_out
    FROM walk
  ) AS w
)
SELECT w.resume_after, w.walked_to_end, w.keys_walked, l.* FROM walked w LEFT JOIN leased l ON true`;

/**
 * {@link claimMessages} for unkeyed messages only: up to $1 due ones for $2 ms under lease token
 * $3, in available_at order, with `SKIP LOCKED`. A much shorter statement, which the relay sends
 * instead of the full claim while no keyed message is pending (the full claim's walk found no
 * key), so that draining an unkeyed backlog does not pay for the walk's parsing and planning.
 */
export const claimUnkeyedMessages = `
WITH due AS (
  SELECT m.id FROM ${OUTBOX_TABLE} m
  WHERE m.published_at IS NULL AND m.dead_at IS NULL AND m.key IS NULL AND m.available_at <= now()
    AND (m.lease_until IS NULL OR m.lease_until < now())
  ORDER BY m.published_at, m.dead_at, m.key, m.available_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
)
UPDATE ${OUTBOX_TABLE} m
SET lease_until = now() + $2::double precision * interval '1 millisecond', lease_token = $3::uuid,
  available_at = now() + $2::double precision * interval '1 millisecond'
FROM due WHERE m.id = due.id
RETURNING m.id::text AS id, m.seq::text AS seq, m.topic, m.key, m.payload, m.headers::text AS headers,
  m.created_at, m.attempts, m.trace_context::text AS trace_context`;

/**
 * Records what the relay did with the messages it holds, in one statement for a group of them.
 * $1 is a JSON array with one object per message: `id`, `token` (its lease), `charge` (the
 * attempts to add: 1 once it was handed to the publisher) and `outcome`: null (still publishing),
 * 'published', 'failed' (retried after `backoff_ms`, with `error`), 'dead' (with `error`), or
 * 'released' (handed back unattempted). (One JSON text rather than six arrays: drivers that map
 * each array element, Prisma's among them, spend far less on one string. It is bound as text and
 * cast to json in SQL: a parameter typed json would be serialized again by postgres.js, which
 * JSON-encodes whatever it binds to a json parameter, a string included, so json_to_recordset got
 * a JSON string.) Published messages are deleted instead when $2 is true (deleteOnPublish). A
 * message whose lease this relay no longer holds is left alone; one that another relay's claim has
 * locked right now is skipped rather than waited for (its lease ran out, so that claim takes it
 * over, or the claim lets go of it within its statement). Returns the ids it skipped while they
 * were locked (status 'busy'), and nothing for the messages it recorded (or left alone): a group
 * of 100 outcomes usually returns no row.
 *
 * It commits without waiting for its WAL to be flushed (`synchronous_commit` off for its own
 * transaction, by set_config in the statement; a commit costs 0.2 ms instead of 0.9 on the
 * development machine, and the relay's runs wait on these records). A database crash can lose
 * the last records (at most 3 × wal_writer_delay): those messages are published again after
 * their lease, and an attempt may go uncounted; nothing is lost. A relay's crash loses nothing:
 * the server has the record once it answered.
 */
export const recordProgress = `
WITH progress AS MATERIALIZED (
  SELECT * FROM json_to_recordset($1::text::json)
    AS p(id uuid, token uuid, charge integer, outcome text, error text, backoff_ms double precision)
  -- Commits without waiting for its WAL to reach the disk (above).
  WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
), held AS MATERIALIZED (
  SELECT m.id FROM ${OUTBOX_TABLE} m
  WHERE m.id = ANY(ARRAY(SELECT id FROM progress)) AND m.lease_token = ANY(ARRAY(SELECT token FROM progress))
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${OUTBOX_TABLE} m USING progress p
  WHERE $2::boolean AND p.outcome = 'published'
    AND m.id = p.id AND m.lease_token = p.token AND m.id IN (SELECT id FROM held)
), updated AS (
  UPDATE ${OUTBOX_TABLE} m SET
    attempts = m.attempts + p.charge,
    published_at = CASE WHEN p.outcome = 'published' THEN now() ELSE m.published_at END,
    dead_at = CASE WHEN p.outcome = 'dead' THEN now() ELSE m.dead_at END,
    last_error = CASE WHEN p.outcome IN ('failed', 'dead') THEN p.error ELSE m.last_error END,
    available_at = CASE WHEN p.outcome = 'failed' THEN now() + p.backoff_ms * interval '1 millisecond'
      WHEN p.outcome IS NULL THEN m.available_at ELSE now() END,
    lease_until = CASE WHEN p.outcome IS NULL THEN m.lease_until END,
    lease_token = CASE WHEN p.outcome IS NULL THEN m.lease_token END
  FROM progress p
  WHERE m.id = p.id AND m.lease_token = p.token AND m.id IN (SELECT id FROM held)
    AND NOT ($2::boolean AND p.outcome = 'published')
)
-- (deleted and updated run to completion though nothing reads them.) Held under this lease but
-- locked by someone else right now (a claim that read the row before it was leased locks it
-- while it rechecks): the relay records these again a moment later.
SELECT p.id::text AS id, 'busy' AS status FROM (SELECT * FROM progress WHERE id NOT IN (SELECT id FROM held) OFFSET 0) AS p
WHERE EXISTS (SELECT 1 FROM ${OUTBOX_TABLE} m WHERE m.id = p.id AND m.lease_token = p.token)`;

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

/**
 * Deletes one batch of messages published more than $2 ms ago, by the row addresses it locked
 * (see {@link deleteExpiredKeys}: a plan that does not depend on the table's statistics).
 * $1 batch size.
 */
export const deletePublishedBefore = `
WITH doomed AS (
  SELECT ctid FROM ${OUTBOX_TABLE}
  WHERE published_at <= now() - $2::double precision * interval '1 millisecond'
  ORDER BY published_at
  LIMIT $1::integer
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${OUTBOX_TABLE} m WHERE m.ctid = ANY (ARRAY(SELECT ctid FROM doomed)) RETURNING 1
)
SELECT count(*)::integer AS deleted FROM deleted`;

/** How many published messages are past their retention. $1 retention in ms. */
export const countPublishedBefore = `
SELECT count(*)::integer AS expired FROM ${OUTBOX_TABLE}
WHERE published_at <= now() - $1::double precision * interval '1 millisecond'`;

// ---- Operator actions (src/keys.ts, outbox.listDead)

/**
 * One key as an operator sees it: its row if there is one (expired or not), else whether a call
 * holds its advisory lock right now (running its first execution: the row is not visible until
 * that call commits). $1 scope, $2 key, $3 the key's advisory lock id.
 */
export const inspectKey = `
SELECT k.fingerprint, k.result, k.created_at, k.expires_at, k.expires_at <= now() AS expired,
  CASE WHEN k.created_at IS NULL THEN NOT pg_try_advisory_xact_lock($3::bigint) END AS running
FROM (SELECT) AS one
LEFT JOIN ${IDEMPOTENCY_TABLE} AS k ON k.scope = $1::text AND k.key = $2::text`;

/**
 * The first statement of `keys.forget`'s transaction: makes it READ COMMITTED whatever the
 * database's default, so that the DELETE after the lock sees a record that the call holding the
 * lock committed while this transaction waited.
 */
export const readCommitted = `SET TRANSACTION ISOLATION LEVEL READ COMMITTED`;

/** Bounds the waits of the rest of the transaction. $1 lock_timeout in ms. */
export const setLockTimeout = `SELECT set_config('lock_timeout', $1::integer || 'ms', true) AS lock_timeout`;

/**
 * Waits for the key's advisory lock (what a running first call holds until it commits), at most
 * `lock_timeout` (SQLSTATE 55P03 past it). As text: some drivers cannot read a `void` column.
 * $1 the key's advisory lock id.
 */
export const lockKey = `SELECT pg_advisory_xact_lock($1::bigint)::text AS locked`;

/** Deletes one key's record (expired or not). $1 scope, $2 key. */
export const forgetKey = `
DELETE FROM ${IDEMPOTENCY_TABLE} WHERE scope = $1::text AND key = $2::text
RETURNING created_at, expires_at`;

/**
 * Deletes one batch of a scope's records and returns how many went; rows that a call holds right
 * now (one replacing an expired record) are skipped. $1 scope, $2 batch size.
 */
export const purgeScopeBatch = `
WITH doomed AS (
  SELECT scope, key FROM ${IDEMPOTENCY_TABLE} WHERE scope = $1::text LIMIT $2::integer FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ${IDEMPOTENCY_TABLE} k USING doomed WHERE k.scope = doomed.scope AND k.key = doomed.key RETURNING 1
)
SELECT count(*)::integer AS deleted FROM deleted`;

/** Dead-lettered messages, oldest death first. $1 topic or null, $2 limit. */
export const listDead = `
SELECT id::text AS id, seq::text AS seq, topic, key, payload, headers, attempts, last_error, created_at, dead_at
FROM ${OUTBOX_TABLE}
WHERE dead_at IS NOT NULL AND published_at IS NULL AND ($1::text IS NULL OR topic = $1::text)
ORDER BY dead_at, seq
LIMIT $2::integer`;

// ---- Cleanup runs (txonce_cleanup_runs)

export const CLEANUP_RUNS_TABLE = "txonce_cleanup_runs";

/** Whether txonce_cleanup_runs exists (a database that has not applied its migration yet). */
export const cleanupRunsInstalled = `
SELECT to_regclass('${CLEANUP_RUNS_TABLE}') IS NOT NULL AS installed`;

/**
 * Records one cleanup run that ended now and keeps the latest 100. $1 duration in ms, $2 rows
 * deleted, $3 whether it finished.
 */
export const recordCleanupRun = `
WITH run AS (
  INSERT INTO ${CLEANUP_RUNS_TABLE} (started_at, deleted, finished, runner)
  VALUES (now() - $1::double precision * interval '1 millisecond', $2::bigint, $3::boolean, 'job')
  RETURNING id
)
DELETE FROM ${CLEANUP_RUNS_TABLE} WHERE id <= (SELECT id FROM run) - 100`;

// ---- txonce doctor (src/doctor/)

/**
 * txonce's objects in the current schema (the first of the search_path), one row each: `kind`
 * (`table`, `column`, `index`, `storage`, `routine`), `name` and `value` (a column's type and
 * nullability, an index's columns, a table's storage parameters, a routine's source hash). The
 * doctor compares them with src/doctor/expected-schema.ts, which `npm run migrations -- --write`
 * makes with this statement after each migration.
 */
export const schemaObjects = `
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()),
tables AS (
  SELECT c.oid, c.relname, c.reloptions FROM pg_class c
  WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('r', 'p') AND c.relname LIKE 'txonce\\_%'
)
SELECT 'table' AS kind, relname::text AS name, '' AS value FROM tables
UNION ALL
SELECT 'column', t.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
FROM tables t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', ic.relname::text, t.relname || CASE WHEN i.indisunique THEN ' unique (' ELSE ' (' END ||
  array_to_string(ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true) FROM generate_series(1, i.indnatts) AS k ORDER BY k), ', ') || ')'
FROM tables t JOIN pg_index i ON i.indrelid = t.oid JOIN pg_class ic ON ic.oid = i.indexrelid
UNION ALL
SELECT 'storage', relname::text, array_to_string(ARRAY(SELECT o FROM unnest(reloptions) AS o ORDER BY o), ', ')
FROM tables WHERE reloptions IS NOT NULL
UNION ALL
SELECT 'routine', p.proname::text, md5(p.prosrc) FROM pg_proc p
WHERE p.pronamespace = (SELECT oid FROM ns) AND p.proname LIKE 'txonce\\_%'
ORDER BY 1, 2`;

/** Expired keys waiting for cleanup, and the latest cleanup run (none when the table is missing). */
export const doctorExpiredKeys = `
SELECT count(*)::bigint::text AS expired, min(expires_at) AS oldest_expiry, now() AS db_now
FROM ${IDEMPOTENCY_TABLE} WHERE expires_at <= now()`;

/** The latest cleanup run. */
export const doctorLastCleanupRun = `
SELECT started_at, finished_at, deleted::text AS deleted, finished, runner FROM ${CLEANUP_RUNS_TABLE}
ORDER BY id DESC LIMIT 1`;

/**
 * Size and health of txonce's tables (those the search_path finds, or in the `schema` option's
 * schema, as statementsFor qualifies the names given to to_regclass): total, table and index bytes, live and
 * dead tuples from the statistics collector, the last (auto)vacuum, the table's storage parameters,
 * and an estimate of its live data (live tuples times the average row width that ANALYZE measured,
 * plus 28 bytes of tuple header and line pointer per row; null before the first ANALYZE).
 */
export const doctorTables = `
SELECT c.relname::text AS name,
  pg_total_relation_size(c.oid)::bigint::text AS total_bytes,
  pg_relation_size(c.oid)::bigint::text AS table_bytes,
  pg_indexes_size(c.oid)::bigint::text AS index_bytes,
  s.n_live_tup::bigint::text AS live_tuples, s.n_dead_tup::bigint::text AS dead_tuples,
  s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
  c.reloptions,
  (SELECT sum(avg_width) FROM pg_stats st WHERE st.schemaname = n.nspname AND st.tablename = c.relname)::double precision AS row_width
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid IN (to_regclass('${IDEMPOTENCY_TABLE}'), to_regclass('${OUTBOX_TABLE}')) AND c.relkind = 'r'
ORDER BY c.relname`;

/** The server's autovacuum settings. */
export const doctorAutovacuum = `
SELECT current_setting('autovacuum') AS autovacuum, current_setting('track_counts') AS track_counts,
  current_setting('autovacuum_vacuum_scale_factor') AS vacuum_scale_factor,
  current_setting('autovacuum_vacuum_threshold') AS vacuum_threshold`;

/**
 * What holds back the xmin horizon (the oldest row version VACUUM must keep), oldest first: open
 * transactions of other sessions (their snapshot or transaction id), prepared transactions, and
 * replication slots. Sessions of other databases are left out: they do not hold back VACUUM of
 * this database's tables. `seconds` is how long the transaction has been open (null for a slot).
 * Other roles' sessions show only with the pg_read_all_stats role (part of pg_monitor).
 */
export const doctorXminHolders = `
SELECT * FROM (
  SELECT 'transaction' AS kind, pid::text AS id,
    greatest(age(backend_xmin), age(backend_xid))::bigint AS xid_age,
    EXTRACT(EPOCH FROM clock_timestamp() - xact_start)::double precision AS seconds,
    state, usename::text AS "user", application_name, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS query
  FROM pg_stat_activity
  WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AND xact_start IS NOT NULL
    AND (datname = current_database() OR datid IS NULL)
  UNION ALL
  SELECT 'prepared', gid, age(transaction)::bigint, EXTRACT(EPOCH FROM clock_timestamp() - prepared)::double precision,
    NULL, owner::text, NULL, NULL
  FROM pg_prepared_xacts
  UNION ALL
  SELECT 'slot', slot_name::text, greatest(age(xmin), age(catalog_xmin))::bigint, NULL,
    CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL, NULL, NULL
  FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
) AS holders
ORDER BY seconds DESC NULLS LAST, xid_age DESC
LIMIT 5`;

/**
 * The outbox: pending, dead, the age of the oldest due message (pending, not leased and past its
 * `available_at`: waiting for a relay), and leases that ended without the relay recording an
 * outcome (a relay that stopped while publishing; another relay takes them over once they are due).
 */
export const doctorOutbox = `
SELECT
  count(*) FILTER (WHERE dead_at IS NULL)::bigint::text AS pending,
  count(*) FILTER (WHERE dead_at IS NOT NULL)::bigint::text AS dead,
  COALESCE(EXTRACT(EPOCH FROM now() - min(available_at) FILTER (WHERE dead_at IS NULL AND available_at <= now()
    AND (lease_until IS NULL OR lease_until <= now()))) * 1000, 0)::double precision AS oldest_due_ms,
  count(*) FILTER (WHERE dead_at IS NULL AND lease_until < now())::bigint::text AS expired_leases,
  COALESCE(EXTRACT(EPOCH FROM now() - min(lease_until) FILTER (WHERE dead_at IS NULL AND lease_until < now())) * 1000, 0)::double precision AS oldest_expired_lease_ms
FROM ${OUTBOX_TABLE} WHERE published_at IS NULL`;
