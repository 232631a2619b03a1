import { Codec, type CustomType } from "./codec.js";
import { toMilliseconds, type Duration } from "./duration.js";
import {
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  type IdempotencyRecordInfo,
} from "./errors.js";
import type { Database, Row, SqlExecutor } from "./executor.js";
import { fingerprintOf } from "./fingerprint.js";
import * as sql from "./sql/postgres.js";
import { SqlState, sqlStateOf, withSchemaCheck } from "./sqlstate.js";

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
   * with {@link IdempotencyKeyInUseError}. Keep it well below the transaction timeout.
   * (Default: `"2s"`)
   */
  lockTimeout?: Duration;
  /** Longest accepted key and scope, in characters. (Default: `255`) */
  maxKeyLength?: number;
  /** Options for the transaction the operation runs in, passed to the client. (Default: the client's) */
  transaction?: TxOptions;
  /**
   * Extra types that results and fingerprints may hold, so they are stored and replayed
   * faithfully (see {@link CustomType}). (Default: none beyond the built-in ones)
   */
  types?: readonly CustomType[];
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
  /** Overrides {@link IdempotencyDefaults.lockTimeout} for this call. */
  lockTimeout?: Duration;
  /** Overrides {@link IdempotencyDefaults.transaction} for this call. */
  transaction?: TxOptions;
}

/** What a call did, with the metadata an HTTP layer needs (e.g. for an `Idempotent-Replayed` header). */
export interface IdempotencyOutcome<T> {
  /** The operation's result: fresh, or decoded from the stored record. */
  readonly value: T;
  /** `true` when the value was stored by an earlier call and the operation did not run now. */
  readonly replayed: boolean;
  readonly scope: string;
  readonly key: string;
  /** When the key was first claimed (database clock). */
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
  /** The codec results are stored with; also used for outbox payloads. */
  readonly codec: Codec;
}

const DEFAULT_RETENTION = "48h";
const DEFAULT_LOCK_TIMEOUT = "2s";
const DEFAULT_MAX_KEY_LENGTH = 255;
/** Claims that find the key taken but cannot read it (it expired or rolled back meanwhile) retry. */
const MAX_CLAIM_ATTEMPTS = 5;

/** Thrown inside the transaction to roll it back when the key is already taken. */
class KeyTaken {}

/**
 * The idempotency algorithm over any {@link Database}. Adapters call this; users call
 * `txonce(prisma)` from `txonce/prisma` or `txonce(pool)` from `txonce/pg`.
 */
export function createIdempotency<Tx, TxOptions>(
  db: Database<Tx, TxOptions>,
  defaults: IdempotencyDefaults<TxOptions> = {},
): Idempotency<Tx, TxOptions> {
  const maxKeyLength = defaults.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH;
  if (!Number.isInteger(maxKeyLength) || maxKeyLength < 1) {
    throw new InvalidArgumentError("maxKeyLength", `expected a positive integer, got ${String(maxKeyLength)}`);
  }
  const defaultRetentionMs = toMilliseconds(defaults.retention ?? DEFAULT_RETENTION, "retention");
  const defaultLockTimeoutMs = toMilliseconds(defaults.lockTimeout ?? DEFAULT_LOCK_TIMEOUT, "lockTimeout");
  const codec = new Codec(defaults.types);

  function checkIdentifier(value: unknown, argument: string): string {
    if (typeof value !== "string") {
      throw new InvalidArgumentError(argument, `expected a string, got ${value === null ? "null" : typeof value}`);
    }
    if (value.length === 0) throw new InvalidArgumentError(argument, "must not be empty");
    if (value.length > maxKeyLength) {
      throw new InvalidArgumentError(argument, `is ${value.length} characters long, the limit is ${maxKeyLength}`);
    }
    if (value.includes("\u0000")) throw new InvalidArgumentError(argument, "must not contain NUL characters");
    return value;
  }

  function toRecordInfo(scope: string, key: string, row: Row): IdempotencyRecordInfo {
    return {
      scope,
      key,
      fingerprint: (row.fingerprint as string | null) ?? null,
      firstSeenAt: new Date(row.created_at as Date | string),
      expiresAt: new Date(row.expires_at as Date | string),
    };
  }

  function replay<T>(scope: string, key: string, fingerprint: string | null, row: Row): IdempotencyOutcome<T> {
    const record = toRecordInfo(scope, key, row);
    if (record.fingerprint !== fingerprint) throw new IdempotencyKeyReusedError(record, fingerprint);
    return {
      value: codec.decode<T>(row.result as string),
      replayed: true,
      scope,
      key,
      firstSeenAt: record.firstSeenAt,
      expiresAt: record.expiresAt,
    };
  }

  async function findLive(scope: string, key: string): Promise<Row | undefined> {
    const rows = await withSchemaCheck(db.query(sql.findLiveRecord, [scope, key]));
    return rows[0];
  }

  async function withIdempotencyOutcome<T>(
    key: string,
    operation: Operation<Tx, T>,
    options: IdempotencyOptions<TxOptions> = {},
  ): Promise<IdempotencyOutcome<T>> {
    checkIdentifier(key, "key");
    const scope = options.scope === undefined ? "" : checkIdentifier(options.scope, "scope");
    if (typeof operation !== "function") {
      throw new InvalidArgumentError("operation", `expected a function, got ${typeof operation}`);
    }
    const retentionMs =
      options.retention === undefined ? defaultRetentionMs : toMilliseconds(options.retention, "retention");
    const lockTimeoutMs =
      options.lockTimeout === undefined ? defaultLockTimeoutMs : toMilliseconds(options.lockTimeout, "lockTimeout");
    const fingerprint = options.fingerprint === undefined ? null : fingerprintOf(codec, options.fingerprint);
    const transactionOptions = options.transaction ?? defaults.transaction;

    // A completed key costs this one query, outside any transaction.
    const stored = await findLive(scope, key);
    if (stored) return replay(scope, key, fingerprint, stored);

    for (let attempt = 1; ; attempt++) {
      const startedAt = Date.now();
      try {
        return await db.transaction(async (tx, inTransaction) => {
          const claimed = await claim(inTransaction, scope, key, fingerprint, retentionMs, lockTimeoutMs, startedAt);
          const value = await operation(tx);
          const encoded = codec.encode(value, "result");
          await inTransaction.query(sql.saveResult, [scope, key, encoded]);
          return { value, replayed: false, scope, key, ...claimed };
        }, transactionOptions);
      } catch (error) {
        if (!(error instanceof KeyTaken)) throw error;
      }
      // Another call holds the key and has committed: replay what it stored.
      const winner = await findLive(scope, key);
      if (winner) return replay(scope, key, fingerprint, winner);
      if (attempt >= MAX_CLAIM_ATTEMPTS) {
        throw new IdempotencyKeyInUseError(scope, key, Date.now() - startedAt);
      }
    }
  }

  async function claim(
    inTransaction: SqlExecutor,
    scope: string,
    key: string,
    fingerprint: string | null,
    retentionMs: number,
    lockTimeoutMs: number,
    startedAt: number,
  ): Promise<{ firstSeenAt: Date; expiresAt: Date }> {
    let rows: Row[];
    try {
      rows = await withSchemaCheck(
        inTransaction.query(sql.claimKey, [scope, key, fingerprint, retentionMs, `${lockTimeoutMs}ms`]),
      );
    } catch (error) {
      const state = sqlStateOf(error);
      if (state === SqlState.lockNotAvailable) {
        throw new IdempotencyKeyInUseError(scope, key, Date.now() - startedAt, { cause: error });
      }
      // Under REPEATABLE READ or SERIALIZABLE, a row committed after our snapshot cannot be read
      // here: roll back and read it outside the transaction.
      if (state === SqlState.serializationFailure) throw new KeyTaken();
      throw error;
    }
    const row = rows[0];
    if (!row) throw new KeyTaken();
    return { firstSeenAt: new Date(row.created_at as Date | string), expiresAt: new Date(row.expires_at as Date | string) };
  }

  return {
    withIdempotency: async (key, operation, options) => (await withIdempotencyOutcome(key, operation, options)).value,
    withIdempotencyOutcome,
    codec,
  };
}
