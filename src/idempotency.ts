import { Codec, type CustomType } from "./codec.js";
import { toMilliseconds, type Duration } from "./duration.js";
import {
  ConnectionLostError,
  ConnectionTerminatedError,
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  NoConnectionError,
  OutcomeUnknownError,
  SchemaNotInstalledError,
  TxonceError,
  type IdempotencyRecordInfo,
  type IdempotencyStep,
} from "./errors.js";
import type { Database, Row, SqlExecutor } from "./executor.js";
import { fingerprintOf } from "./fingerprint.js";
import { keyLockId } from "./key-lock.js";
import { backoffPolicy } from "./outbox/backoff.js";
import { RecordCache, recordId, type StoredRecord } from "./record-cache.js";
import { statementsFor, type Statements } from "./sql/statements.js";
import { connectionFailureOf, isCodelessDriverError, locatedSchemaError, SqlState, sqlStateOf, withSchemaCheck } from "./sqlstate.js";
import { idempotencyTelemetry, LockWait } from "./telemetry/idempotency.js";
import type { TelemetryOptions } from "./telemetry/options.js";

/** Options shared by every call of one txonce instance; each can be overridden per call. */
export interface IdempotencyDefaults<TxOptions = unknown> {
  /**
   * How long a completed key is remembered, from the database clock at its first call. After
   * that the key counts as new and runs again. Milliseconds or a string like `"48h"`, `"7d"`.
   * (Default: `"48h"`)
   */
  retention?: Duration;
  /**
   * How long a call waits for a concurrent call with the same key to finish before it gives up
   * with {@link IdempotencyKeyInUseError}. The wait holds no database connection: calls in the
   * same process share the first one's attempt, and a call waiting for another process polls
   * the key outside any transaction (from a few milliseconds apart up to 50 ms), so it is not
   * tied to the transaction timeout. (Default: `"2s"`)
   */
  lockTimeout?: Duration;
  /**
   * Longest accepted key and scope, in Unicode code points (what a person counts as characters
   * for nearly every script: `"👍"` is one, although it is two UTF-16 units in a JavaScript
   * string's `length`). 255 code points are at most 1,020 bytes of UTF-8, so a key and its scope
   * stay well within what a PostgreSQL index entry can hold. (Default: `255`)
   */
  maxKeyLength?: number;
  /**
   * Completed records kept in this process's memory, so that a replay here costs no query.
   * A record never changes until it expires, and a copy is dropped before the record expires
   * (by the database's clock), so replays stay exact. Only a record changed behind txonce's back
   * (deleted by hand, a truncated table) can be replayed from memory after that, for at most
   * `maxAge`. `maxBytes` bounds the memory (least recently used copies go first; a result
   * larger than that is never kept). `false` turns it off. (Default: `{ maxBytes: 4194304,
   * maxAge: "1m" }`)
   */
  replayCache?: false | { maxBytes?: number; maxAge?: Duration };
  /** Options for the transaction the operation runs in, passed to the client. (Default: the client's) */
  transaction?: TxOptions;
  /**
   * Extra types that results and fingerprints may hold, so they are stored and replayed
   * faithfully (see {@link CustomType}). (Default: none beyond the built-in ones)
   */
  types?: readonly CustomType[];
  /**
   * OpenTelemetry spans and metrics (docs/observability.md): on when `@opentelemetry/api` is
   * installed, a no-op until an SDK is registered. (Default: `{ enabled: true, recordKeys: false }`)
   */
  telemetry?: TelemetryOptions;
}

/** Options of one call. */
export interface IdempotencyOptions<TxOptions = unknown> {
  /**
   * The namespace of the key: uniqueness is per (scope, key), and no scope ever sees another's
   * result. Use the tenant, account or endpoint the key belongs to. (Default: none, one shared
   * namespace)
   */
  scope?: string;
  /**
   * The request the key stands for (e.g. the HTTP body). Its canonical form (key order does not
   * matter) is hashed and stored; a later call with the same key and a different fingerprint
   * throws {@link IdempotencyKeyReusedError} instead of replaying. (Default: none; calls
   * without a fingerprint only match calls without one)
   */
  fingerprint?: unknown;
  /** Overrides {@link IdempotencyDefaults.retention} for this call. */
  retention?: Duration;
  /** Overrides {@link IdempotencyDefaults.lockTimeout} for this call: how long it may wait for a concurrent call. */
  lockTimeout?: Duration;
  /** Overrides {@link IdempotencyDefaults.transaction} for this call. */
  transaction?: TxOptions;
  /**
   * What the operation is, for telemetry: the span is named `withIdempotency {name}` and the
   * metrics carry it as `txonce.operation.name`. Keep it low-cardinality (`"charge"`,
   * `"POST /orders"`), never a key or an id. (Default: none; the span is named `withIdempotency`)
   */
  name?: string;
}

/** What a call did, with the metadata an HTTP layer needs (e.g. for an `Idempotent-Replayed` header). */
export interface IdempotencyOutcome<T> {
  /** The operation's result: fresh, or decoded from the stored record. */
  readonly value: T;
  /** `true` when the value was stored by an earlier call and the operation did not run now. */
  readonly replayed: boolean;
  readonly scope: string;
  readonly key: string;
  /** When the key was claimed by the call that ran the operation (database clock). */
  readonly firstSeenAt: Date;
  /** When the record expires and the key may run again (database clock). */
  readonly expiresAt: Date;
}

/** The operation: gets the transaction handle, returns the result to store. */
export type Operation<Tx, T> = (tx: Tx) => Promise<T>;

export interface Idempotency<Tx, TxOptions = unknown> {
  /**
   * Runs `operation` at most once per (scope, key) within the retention window, in one
   * transaction with the key, and returns its result; later calls return the stored result
   * without running it. Safe to destructure.
   */
  withIdempotency<T>(key: string, operation: Operation<Tx, T>, options?: IdempotencyOptions<TxOptions>): Promise<T>;
  /** Like {@link withIdempotency}, but returns the result with whether it was replayed and when. */
  withIdempotencyOutcome<T>(
    key: string,
    operation: Operation<Tx, T>,
    options?: IdempotencyOptions<TxOptions>,
  ): Promise<IdempotencyOutcome<T>>;
  /**
   * Runs `operation` inside `tx`, a transaction the caller opened and will commit or roll back
   * (e.g. one that `@nestjs-cls/transactional` or a unit of work manages): the key is claimed in
   * it, the caller's COMMIT stores the result with the caller's other writes, and its rollback
   * removes the key. Until the caller's transaction ends, a concurrent call with the same key
   * waits for it (at most its own `lockTimeout`). The operation gets `tx` itself. A key that is
   * taken makes this call wait inside `tx`, holding its connection. Under REPEATABLE READ or
   * SERIALIZABLE, a record committed after `tx`'s snapshot fails the claim with the database's
   * serialization error (SQLSTATE `40001`): `tx` is then aborted, retry the whole transaction.
   * `tx` must be open: a root client or an ended transaction is refused with
   * {@link InvalidArgumentError} where the adapter can tell. Safe to destructure.
   */
  withIdempotencyIn<T>(tx: Tx, key: string, operation: Operation<Tx, T>, options?: JoinedIdempotencyOptions): Promise<T>;
  /** Like {@link withIdempotencyIn}, but returns the result with whether it was replayed and when. */
  withIdempotencyOutcomeIn<T>(
    tx: Tx,
    key: string,
    operation: Operation<Tx, T>,
    options?: JoinedIdempotencyOptions,
  ): Promise<IdempotencyOutcome<T>>;
  /** The codec results are stored with; also used for outbox payloads. */
  readonly codec: Codec;
}

/** Options of a call that joins the caller's transaction: no transaction options, the caller's transaction has them. */
export type JoinedIdempotencyOptions = Omit<IdempotencyOptions, "transaction">;

const DEFAULT_RETENTION = "48h";
const DEFAULT_LOCK_TIMEOUT = "2s";
const DEFAULT_MAX_KEY_LENGTH = 255;
const DEFAULT_CACHE_BYTES = 4 * 1024 * 1024;
const DEFAULT_CACHE_AGE = "1m";
/**
 * Polls of a key that another process holds: the first after 2-4 ms, doubling up to 25-50 ms
 * (uniform jitter in [d/2, d]). One poller per key per process (the others share its attempt),
 * so a hot key costs ~30 one-row queries per second per process, and a waiter learns of the
 * commit ~20 ms after it (p50; p95 ~45 ms): docs/benchmarks.md, "Waiting for another process".
 */
const pollDelay = backoffPolicy({ initial: 4, max: 50 });

/** What one transaction attempt did: ran the operation and committed, or found the key taken. */
type Attempt<T> =
  | { readonly kind: "ran"; readonly outcome: IdempotencyOutcome<T>; readonly record: StoredRecord }
  | { readonly kind: "taken"; readonly polled?: Promise<Row[]> };

/**
 * Thrown inside the transaction to roll it back when the claim finds the key taken; `polled`, the
 * first poll of the key, when the adapter sends it with the ROLLBACK.
 */
class KeyTaken {
  constructor(readonly polled?: Promise<Row[]>) {}
}

/** Everything one call needs, fixed once its arguments are checked. */
interface Call<Tx, TxOptions, T> {
  readonly scope: string;
  readonly key: string;
  readonly operation: Operation<Tx, T>;
  readonly fingerprint: string | null;
  readonly retentionMs: number;
  readonly transactionOptions: TxOptions | undefined;
  /** `Date.now()` when the call started, and the latest moment it may still be waiting. */
  readonly startedAt: number;
  readonly deadline: number;
  /** Also bounds the look-up of a COMMIT that got no answer. */
  readonly lockTimeoutMs: number;
  /** The key's advisory lock id, see {@link keyLockId}. */
  readonly lockId: string;
  /** Where the call notes its waits for another call on the key, for telemetry. */
  readonly wait: LockWait;
}

/** Concurrent calls on one (scope, key) in this process share one attempt: the first one's. */
interface Flight {
  /** The key's committed record once the attempt ends, or `undefined` if it ended without one. */
  readonly done: Promise<StoredRecord | undefined>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const TIMED_OUT = Symbol("timed out");

/**
 * The query's answer, or {@link TIMED_OUT} once `ms` have passed without one: a driver whose
 * connection hangs (no answer, no error) must not hold the call past its deadline. The query
 * goes on by itself; a late failure of it is ignored.
 */
async function within<T>(query: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms), TIMED_OUT);
    timer.unref();
  });
  query.catch(() => {});
  try {
    return await Promise.race([query, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The idempotency algorithm over any {@link Database}. Adapters call this; users call
 * `txonce(prisma)` from `txonce/prisma` or `txonce(pool)` from `txonce/pg`.
 *
 * A call, in order: a copy of the completed record in this process's cache is replayed at once;
 * if another call on the same key is in flight in this process, the call waits for its attempt
 * (holding nothing) and replays its record, or, if that attempt ends without one, the next call
 * in line runs; otherwise the call opens the transaction and claims the key ({@link sql.claimKey},
 * which never waits): a stored record is replayed, a claimed key runs the operation and stores
 * its result in the same transaction, and a key busy in another process makes the call roll back,
 * release the connection and poll ({@link sql.pollKey}) until that process's attempt ends or
 * `lockTimeout` has passed.
 */
export function createIdempotency<Tx, TxOptions>(
  db: Database<Tx, TxOptions>,
  defaults: IdempotencyDefaults<TxOptions> = {},
  /** The statements of the schema the tables are in (the `schema` option). (Default: unqualified) */
  sql: Statements = statementsFor(),
): Idempotency<Tx, TxOptions> {
  return idempotencyWithCache(db, defaults, sql).idempotency;
}

/**
 * {@link createIdempotency}, with the replay cache it keeps (`undefined` when `replayCache` is
 * `false`), which the operator actions (`keys.forget`, `keys.purge`) evict from.
 */
export function idempotencyWithCache<Tx, TxOptions>(
  db: Database<Tx, TxOptions>,
  defaults: IdempotencyDefaults<TxOptions> = {},
  /** The statements of the schema the tables are in (the `schema` option). (Default: unqualified) */
  sql: Statements = statementsFor(),
): { idempotency: Idempotency<Tx, TxOptions>; cache: RecordCache | undefined } {
  const lookup = { db, statements: sql };
  const maxKeyLength = defaults.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH;
  if (!Number.isInteger(maxKeyLength) || maxKeyLength < 1) {
    throw new InvalidArgumentError("maxKeyLength", `expected a positive integer, got ${String(maxKeyLength)}`);
  }
  const defaultRetentionMs = toMilliseconds(defaults.retention ?? DEFAULT_RETENTION, "retention");
  const defaultLockTimeoutMs = toMilliseconds(defaults.lockTimeout ?? DEFAULT_LOCK_TIMEOUT, "lockTimeout");
  const cache = createCache(defaults.replayCache);
  const codec = new Codec(defaults.types);
  const flights = new Map<string, Flight>();
  const telemetry = idempotencyTelemetry(defaults.telemetry);

  function checkIdentifier(value: unknown, argument: string): string {
    if (typeof value !== "string") {
      throw new InvalidArgumentError(argument, `expected a string, got ${value === null ? "null" : typeof value}`);
    }
    if (value.length === 0) throw new InvalidArgumentError(argument, "must not be empty");
    // Code points never outnumber UTF-16 units: count them only when the units exceed the limit.
    const length = value.length > maxKeyLength ? codePointCount(value) : value.length;
    if (length > maxKeyLength) {
      throw new InvalidArgumentError(argument, `is ${length} characters long, the limit is ${maxKeyLength} (counted in Unicode code points)`);
    }
    if (value.includes("\u0000")) throw new InvalidArgumentError(argument, "must not contain NUL characters");
    return value;
  }

  // ---- telemetry: one wrapper around each call (span and metrics from what it returns or throws)
  function withIdempotencyOutcome<T>(
    key: string,
    operation: Operation<Tx, T>,
    options: IdempotencyOptions<TxOptions> = {},
  ): Promise<IdempotencyOutcome<T>> {
    if (!telemetry) return runCall(key, operation, options, new LockWait());
    const name = typeof options.name === "string" ? options.name : undefined;
    return telemetry.call({ name, scope: options.scope, key }, (wait) => runCall(key, operation, options, wait));
  }

  function withIdempotencyOutcomeIn<T>(
    tx: Tx,
    key: string,
    operation: Operation<Tx, T>,
    options: JoinedIdempotencyOptions = {},
  ): Promise<IdempotencyOutcome<T>> {
    if (!telemetry) return runCallIn(tx, key, operation, options, new LockWait());
    const name = typeof options.name === "string" ? options.name : undefined;
    return telemetry.call({ name, scope: options.scope, key }, (wait) => runCallIn(tx, key, operation, options, wait));
  }
  // ---- end of telemetry

  /** Checks a call's arguments (before anything is written) and fixes what it needs. */
  function callOf<T>(
    key: string,
    operation: Operation<Tx, T>,
    options: IdempotencyOptions<TxOptions>,
    wait: LockWait,
  ): Call<Tx, TxOptions, T> {
    checkIdentifier(key, "key");
    const scope = options.scope === undefined ? "" : checkIdentifier(options.scope, "scope");
    if (typeof operation !== "function") {
      throw new InvalidArgumentError("operation", `expected a function, got ${typeof operation}`);
    }
    if (options.name !== undefined && typeof options.name !== "string") {
      throw new InvalidArgumentError("name", `expected a string, got ${typeof options.name}`);
    }
    const retentionMs =
      options.retention === undefined ? defaultRetentionMs : toMilliseconds(options.retention, "retention");
    const lockTimeoutMs =
      options.lockTimeout === undefined ? defaultLockTimeoutMs : toMilliseconds(options.lockTimeout, "lockTimeout");
    const fingerprint = options.fingerprint === undefined ? null : fingerprintOf(codec, options.fingerprint);
    const startedAt = Date.now();
    return {
      scope,
      key,
      operation,
      fingerprint,
      retentionMs,
      transactionOptions: options.transaction ?? defaults.transaction,
      startedAt,
      deadline: startedAt + lockTimeoutMs,
      lockTimeoutMs,
      lockId: keyLockId(scope, key, sql.schema),
      wait,
    };
  }

  async function runCall<T>(
    key: string,
    operation: Operation<Tx, T>,
    options: IdempotencyOptions<TxOptions>,
    wait: LockWait,
  ): Promise<IdempotencyOutcome<T>> {
    const call = callOf(key, operation, options, wait);
    const id = cacheId(call);
    for (;;) {
      const cached = cache?.get(id);
      if (cached) return replay(call, cached);
      const flight = flights.get(id);
      if (!flight) return lead(call, id);
      call.wait.begin();
      call.wait.waiting();
      const record = await waitFor(flight, call).finally(() => call.wait.end());
      if (record) return replay(call, record);
      // That attempt ended without a record (it rolled back, failed or gave up waiting): the
      // first call to get here leads the next attempt, the others join it.
    }
  }

  /** Runs the call's attempts as the flight of its key that other calls in this process join. */
  async function lead<T>(call: Call<Tx, TxOptions, T>, id: string): Promise<IdempotencyOutcome<T>> {
    let end!: (record: StoredRecord | undefined) => void;
    flights.set(id, { done: new Promise((resolve) => (end = resolve)) });
    let record: StoredRecord | undefined;
    try {
      const polls = { count: 0 };
      for (let replaceExpired = false; ; replaceExpired = true) {
        const attempt = await attemptOnce(call, replaceExpired);
        if (attempt.kind === "ran") {
          record = attempt.record;
          return attempt.outcome;
        }
        // Taken: by a live record (a replay, found by the first poll, at once) or by a call in
        // another process (polled until it ends). Free without a live record: claim again, this
        // time replacing the key's row if it has expired.
        call.wait.begin();
        const polled = await pollUntilDone(call, polls, undefined, attempt.polled).finally(() => call.wait.end());
        if (polled) {
          record = polled;
          return replay(call, record);
        }
      }
    } finally {
      flights.delete(id);
      end(record);
    }
  }

  /**
   * One transaction: claim, then run and store, or roll back with what the claim found. Errors
   * of the operation reach the caller unchanged; errors of txonce's own statements are
   * classified; a COMMIT that fails without an answer is looked up.
   */
  async function attemptOnce<T>(call: Call<Tx, TxOptions, T>, replaceExpired: boolean): Promise<Attempt<T>> {
    const { scope, key } = call;
    let began = false;
    let claimed: { ctid: string; firstSeenAt: Date; expiresAt: Date; xact: string; answeredAt: number } | undefined;
    let produced: { value: T; encoded: string } | undefined;
    /** The attempt committed: the caller's outcome, and the record for the cache and the calls waiting. */
    const ran = (): Attempt<T> => {
      const { firstSeenAt, expiresAt, answeredAt } = claimed!;
      const record: StoredRecord = { fingerprint: call.fingerprint, result: produced!.encoded, firstSeenAt, expiresAt };
      // created_at is the claim's now(): the database's clock when it answered, or a little before.
      cache?.set(cacheId(call), record, firstSeenAt, answeredAt);
      return { kind: "ran", outcome: { value: produced!.value, replayed: false, scope, key, firstSeenAt, expiresAt }, record };
    };
    try {
      const claim = {
        sql: replaceExpired ? sql.claimExpiredKey : sql.claimKey,
        params: [scope, key, call.fingerprint, call.retentionMs, call.lockId],
      };
      // The claim is the transaction's first statement: adapters that can send it with BEGIN.
      await db.transaction(async (tx, inTransaction, claimedWithBegin) => {
        began = true;
        let rows: Row[];
        try {
          rows = await withSchemaCheck(claimedWithBegin ?? inTransaction.query(claim.sql, claim.params));
        } catch (error) {
          // Under REPEATABLE READ or SERIALIZABLE, a record committed after this transaction's
          // snapshot is a serialization failure: the key is taken.
          if (sqlStateOf(error) === SqlState.serializationFailure) throw new KeyTaken();
          throw classified(error, call, "claim");
        }
        const row = rows[0];
        // Taken: the key's first poll goes with the ROLLBACK where the adapter can.
        if (!row) throw new KeyTaken(inTransaction.sendAfterRollback?.(sql.pollKey, [call.scope, call.key, call.lockId]));
        claimed = {
          ctid: String(row.ctid),
          firstSeenAt: toDate(row.created_at),
          expiresAt: toDate(row.expires_at),
          xact: String(row.xact),
          answeredAt: performance.now(),
        };
        const value = await call.operation(tx);
        const encoded = codec.encode(value, "result");
        await save(inTransaction, call, claimed.ctid, encoded);
        produced = { value, encoded };
      }, call.transactionOptions, claim);
      return ran();
    } catch (error) {
      if (error instanceof KeyTaken) return { kind: "taken", polled: error.polled };
      // Where the tables are is looked up once the transaction has ended and let go of its connection.
      if (error instanceof SchemaNotInstalledError) throw await locatedSchemaError(error, lookup);
      if (!began) throw classified(error, call, "begin", "unavailable");
      if (!produced || error instanceof TxonceError) throw error;
      // The operation ran and its result was saved: the failure is COMMIT's.
      const state = sqlStateOf(error);
      if (state !== undefined && connectionFailureOf(error) === undefined) throw error; // the server refused it: rolled back
      const outcome = await commitOutcome(call, claimed!);
      if (outcome === "committed") return ran();
      if (outcome === "aborted") throw classified(error, call, "commit");
      throw new OutcomeUnknownError(scope, key, { cause: error });
    }
  }

  /**
   * A call inside the caller's transaction `tx`. The claim is {@link sql.claimExpiredKey} (it
   * also replaces an expired record: there is no rollback between a claim and its retry here).
   * A taken key is polled inside `tx` too: that sees a record `tx` itself stored earlier, and
   * when the key's lock is free the poll takes it for `tx`, so the next claim gets it. Nothing
   * goes to the replay cache (the caller may still roll back), and no flight is shared.
   */
  async function runCallIn<T>(
    tx: Tx,
    key: string,
    operation: Operation<Tx, T>,
    options: JoinedIdempotencyOptions,
    wait: LockWait,
  ): Promise<IdempotencyOutcome<T>> {
    const call = callOf(key, operation, options, wait);
    const outside = db.outsideTransaction?.(tx);
    if (outside !== undefined) throw new InvalidArgumentError("tx", outside);
    const cached = cache?.get(cacheId(call));
    if (cached) return replay(call, cached);
    const inTransaction = db.sqlFor(tx);
    const polls = { count: 0 };
    for (;;) {
      let rows: Row[];
      try {
        rows = await withSchemaCheck(
          inTransaction.query(sql.claimExpiredKey, [call.scope, call.key, call.fingerprint, call.retentionMs, call.lockId]),
          lookup,
        );
      } catch (error) {
        throw classified(error, call, "claim");
      }
      const row = rows[0];
      if (row) {
        const value = await call.operation(tx);
        await save(inTransaction, call, String(row.ctid), codec.encode(value, "result"));
        return { value, replayed: false, scope: call.scope, key: call.key, firstSeenAt: toDate(row.created_at), expiresAt: toDate(row.expires_at) };
      }
      const polled = await pollUntilDone(call, polls, { db: inTransaction, codeless: "lost", keep: false });
      if (polled) return replay(call, polled);
    }
  }

  /**
   * Stores the encoded result on the row the claim inserted, found by its ctid; by (scope, key)
   * if the operation moved the row (it updated the key row itself).
   */
  async function save(inTransaction: SqlExecutor, call: Call<Tx, TxOptions, unknown>, ctid: string, encoded: string) {
    // Where the adapter can, the save goes with the COMMIT: one round trip fewer.
    if (inTransaction.sendWithCommit?.(sql.saveResultAtCommit, [ctid, encoded, call.scope, call.key])) return;
    try {
      const [saved] = await inTransaction.query(sql.saveResult, [ctid, encoded]);
      if (!saved) await inTransaction.query(sql.saveResultByKey, [call.scope, call.key, encoded]);
    } catch (error) {
      throw classified(error, call, "save");
    }
  }

  /**
   * After a COMMIT that got no answer: asks the database, on another connection, whether the
   * transaction committed. `unknown` when it cannot say for sure within `lockTimeout`.
   */
  async function commitOutcome(
    call: Call<Tx, TxOptions, unknown>,
    claimed: { firstSeenAt: Date; xact: string },
  ): Promise<"committed" | "aborted" | "unknown"> {
    const deadline = Date.now() + call.lockTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      let row: Row | undefined;
      try {
        const rows = await within(
          db.query(sql.transactionStatus, [claimed.xact, call.scope, call.key, claimed.firstSeenAt]),
          deadline - Date.now(),
        );
        if (rows === TIMED_OUT) return "unknown";
        [row] = rows;
      } catch {
        return "unknown";
      }
      if (row?.status === "committed") return row.row_exists === true ? "committed" : "unknown";
      if (row?.status === "aborted") return "aborted";
      // "in progress": the session that sent COMMIT has not ended yet (it commits, or rolls
      // back once it notices its client is gone).
      if (row?.status !== "in progress" || Date.now() >= deadline) return "unknown";
      await sleep(Math.min(pollDelay(attempt), Math.max(1, deadline - Date.now())));
    }
  }

  /**
   * Finds out, holding no connection, what holds a taken key: returns its live record as soon as
   * one is committed, or `undefined` when its lock is free without one (that attempt rolled back:
   * claim again). Polls with backoff while another process holds the lock, until the call's
   * deadline ({@link IdempotencyKeyInUseError}). The first poll of a call is immediate (a key is
   * most often taken by a completed record); `polls` counts on across the call's claims.
   */
  async function pollUntilDone(
    call: Call<Tx, TxOptions, unknown>,
    polls: { count: number },
    on: { db: SqlExecutor; codeless: "lost" | "unavailable"; keep: boolean } = { db, codeless: "unavailable", keep: true },
    /** The first poll, already sent (with the claim's ROLLBACK): if it failed, it is sent again. */
    sent?: Promise<Row[]>,
  ): Promise<StoredRecord | undefined> {
    for (let pending = sent; ; pending = undefined) {
      const poll = polls.count++;
      if (poll > 0) {
        // The last poll found the key in flight: this call is waiting, even if it gives up now.
        call.wait.waiting();
        const left = call.deadline - Date.now();
        if (left <= 0) throw inUse(call);
        // A poll sent with the ROLLBACK was sent just now: no wait before it.
        if (!pending) await sleep(Math.min(pollDelay(poll), left));
      }
      let rows = pending ? await pending.catch(() => undefined) : undefined;
      if (rows === undefined) {
        try {
          rows = await withSchemaCheck(on.db.query(sql.pollKey, [call.scope, call.key, call.lockId]), lookup);
        } catch (error) {
          throw classified(error, call, "poll", on.codeless);
        }
      }
      const row = rows[0]!;
      if (row.created_at !== null && row.created_at !== undefined) return fromDatabase(call, row, performance.now(), on.keep);
      if (row.free === true) return undefined;
    }
  }

  /** Waits for another call's attempt on the same key, at most until this call's deadline. */
  async function waitFor(flight: Flight, call: Call<Tx, TxOptions, unknown>): Promise<StoredRecord | undefined> {
    const left = call.deadline - Date.now();
    if (left <= 0) throw inUse(call);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), left);
    });
    try {
      const result = await Promise.race([flight.done, timedOut]);
      if (result === "timeout") throw inUse(call);
      return result;
    } finally {
      clearTimeout(timer);
    }
  }

  const inUse = (call: Call<Tx, TxOptions, unknown>) =>
    new IdempotencyKeyInUseError(call.scope, call.key, Date.now() - call.startedAt);

  /** A committed record the database returned, also kept in the cache with that answer's clock. */
  function fromDatabase(call: Call<Tx, TxOptions, unknown>, row: Row, answeredAt: number, keep = true): StoredRecord {
    const record: StoredRecord = {
      fingerprint: (row.fingerprint as string | null) ?? null,
      result: row.result as string,
      firstSeenAt: toDate(row.created_at),
      expiresAt: toDate(row.expires_at),
    };
    if (keep) cache?.set(cacheId(call), record, toDate(row.db_now), answeredAt);
    return record;
  }

  function replay<T>(call: Call<Tx, TxOptions, T>, record: StoredRecord): IdempotencyOutcome<T> {
    if (record.fingerprint !== call.fingerprint) {
      const info: IdempotencyRecordInfo = {
        scope: call.scope,
        key: call.key,
        fingerprint: record.fingerprint,
        firstSeenAt: record.firstSeenAt,
        expiresAt: record.expiresAt,
      };
      throw new IdempotencyKeyReusedError(info, call.fingerprint);
    }
    return {
      value: codec.decode<T>(record.result),
      replayed: true,
      scope: call.scope,
      key: call.key,
      firstSeenAt: record.firstSeenAt,
      expiresAt: record.expiresAt,
    };
  }

  const idempotency: Idempotency<Tx, TxOptions> = {
    withIdempotency: async (key, operation, options) => (await withIdempotencyOutcome(key, operation, options)).value,
    withIdempotencyOutcome,
    withIdempotencyIn: async (tx, key, operation, options) => (await withIdempotencyOutcomeIn(tx, key, operation, options)).value,
    withIdempotencyOutcomeIn,
    codec,
  };
  return { idempotency, cache };
}

function createCache(option: IdempotencyDefaults["replayCache"]): RecordCache | undefined {
  if (option === false) return undefined;
  const maxBytes = option?.maxBytes ?? DEFAULT_CACHE_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
    throw new InvalidArgumentError("replayCache.maxBytes", `expected a non-negative integer, got ${String(maxBytes)}`);
  }
  return new RecordCache(maxBytes, toMilliseconds(option?.maxAge ?? DEFAULT_CACHE_AGE, "replayCache.maxAge"));
}

/**
 * A failure of one of txonce's own statements, as the error class that says what happened, the
 * original as its `cause`; errors that are not about the connection stay as they are.
 * `codeless` is what a plain driver error without any code means at this step.
 */
function classified(
  error: unknown,
  call: { scope: string; key: string },
  during: IdempotencyStep,
  codeless: "lost" | "unavailable" = "lost",
): unknown {
  if (error instanceof TxonceError) return error;
  const failure = connectionFailureOf(error) ?? (isCodelessDriverError(error) ? codeless : undefined);
  const cause = { cause: error };
  switch (failure) {
    case "lost":
      return new ConnectionLostError(call.scope, call.key, during, cause);
    case "terminated":
      return new ConnectionTerminatedError(call.scope, call.key, during, cause);
    case "unavailable":
      return new NoConnectionError(call.scope, call.key, during, cause);
    default:
      // Prisma's "Unable to start a transaction in the given time" (maxWait): the pool had no
      // connection free in time.
      if (during === "begin" && (error as { code?: unknown })?.code === "P2028") {
        return new NoConnectionError(call.scope, call.key, during, cause);
      }
      return error;
  }
}

const toDate = (value: unknown) => new Date(value as Date | string);

const cacheId = (call: { scope: string; key: string }) => recordId(call.scope, call.key);

function codePointCount(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}
