/**
 * Operator actions on idempotency keys (`t.keys`): look at one key's record, forget one key so
 * that it runs again, purge a whole scope. Each needs a scope: the default scope (`""`) holds
 * every key given without one and is never purged wholesale.
 */
import type { Codec } from "./codec.js";
import { toMilliseconds, type Duration } from "./duration.js";
import { IdempotencyKeyInUseError, InvalidArgumentError } from "./errors.js";
import type { Database } from "./executor.js";
import { keyLockId } from "./key-lock.js";
import type { RecordCache } from "./record-cache.js";
import { statementsFor, type Statements } from "./sql/statements.js";
import { SqlState, sqlStateOf, withSchemaCheck } from "./sqlstate.js";

/** Which key: its scope (required, non-empty) and the key. */
export interface KeyRef {
  /** The scope the key was used in (the `scope` option of the call). Required: `""` is refused. */
  scope: string;
  key: string;
}

/** One key as {@link Keys.inspect} finds it. */
export interface KeyRecord {
  readonly scope: string;
  readonly key: string;
  /**
   * `completed`: a record is stored and replays. `expired`: a record is stored past its
   * `expiresAt` (the key runs again; cleanup will delete it). `running`: a call holds the key
   * right now (its record appears when it commits). `absent`: nothing is known of the key.
   */
  readonly status: "completed" | "expired" | "running" | "absent";
  /** When the key was claimed (database clock); `null` unless a record is stored. */
  readonly createdAt: Date | null;
  readonly expiresAt: Date | null;
  /** SHA-256 of the request fingerprint given on the first call; `null` when none was (or no record). */
  readonly fingerprint: string | null;
  /**
   * The stored result, decoded by this instance's codec when first read (a result holding a type
   * this instance was not given, e.g. Prisma's `Decimal` read from `txonce/pg`, throws then, and
   * `encodedResult` still has it); `undefined` without a record.
   */
  readonly result: unknown;
  /** The stored result as txonce's codec wrote it (superjson text); `null` without a record. */
  readonly encodedResult: string | null;
}

/** Options of {@link Keys.forget}. */
export interface ForgetOptions {
  /**
   * How long to wait for a call that is running the key's first execution right now (forget
   * waits for it to end, then deletes what it stored). Past it: {@link IdempotencyKeyInUseError}.
   * (Default: `"5s"`)
   */
  lockTimeout?: Duration;
}

/** Options of {@link Keys.purge}. */
export interface PurgeOptions {
  /** Rows deleted per statement (each its own short transaction). (Default: `1000`) */
  batchSize?: number;
}

/** Operator actions on idempotency keys: `t.keys`. */
export interface Keys {
  /** The record of one key: status, dates, fingerprint and decoded result. Writes nothing. */
  inspect(ref: KeyRef): Promise<KeyRecord>;
  /**
   * Deletes one key's record, so that the next call with it runs the operation again. Waits
   * (at most `lockTimeout`) for a call running the key right now, so it never deletes under a
   * first execution that then commits its record anyway. Also drops this instance's in-memory
   * copy (other processes' replay caches keep theirs for at most `replayCache.maxAge`).
   * Resolves to whether a record was deleted.
   */
  forget(ref: KeyRef, options?: ForgetOptions): Promise<boolean>;
  /**
   * Deletes every record of a scope (a tenant leaving), in batches; resolves to how many. A call
   * of that scope that is running meanwhile may still commit its record afterwards. Drops this
   * instance's in-memory copies of the scope.
   */
  purge(ref: { scope: string }, options?: PurgeOptions): Promise<number>;
}

const DEFAULT_FORGET_LOCK_TIMEOUT = "5s";
const DEFAULT_PURGE_BATCH = 1000;
const MAX_PURGE_BATCH = 100_000;

/** Refuses a missing or empty scope, and names that are not strings or hold NUL, before any statement. */
function checkName(value: unknown, argument: "scope" | "key"): string {
  if (value === undefined || value === null || value === "") {
    throw new InvalidArgumentError(
      argument,
      argument === "scope"
        ? "a scope is required (operator actions never work on the default scope \"\" or on all scopes at once)"
        : "a key is required",
    );
  }
  if (typeof value !== "string") throw new InvalidArgumentError(argument, `expected a string, got ${typeof value}`);
  if (value.includes("\u0000")) throw new InvalidArgumentError(argument, "must not contain NUL");
  return value;
}

function checkRef(ref: unknown): { scope: string; key: string } {
  if (typeof ref !== "object" || ref === null) throw new InvalidArgumentError("scope", "expected { scope, key }");
  const { scope, key } = ref as Partial<KeyRef>;
  return { scope: checkName(scope, "scope"), key: checkName(key, "key") };
}

export function createKeys(
  db: Database<unknown, unknown>,
  codec: Codec,
  cache: RecordCache | undefined,
  /** The statements of the tables' schema (the `schema` option). (Default: unqualified) */
  sql: Statements = statementsFor(),
): Keys {
  return {
    async inspect(ref) {
      const { scope, key } = checkRef(ref);
      const [row] = await withSchemaCheck(db.query(sql.inspectKey, [scope, key, keyLockId(scope, key, sql.schema)]));
      if (!row || row.created_at === null || row.created_at === undefined) {
        const status = row?.running === true ? "running" : "absent";
        return { scope, key, status, createdAt: null, expiresAt: null, fingerprint: null, result: undefined, encodedResult: null };
      }
      const encodedResult = (row.result as string | null) ?? null;
      let decoded: { value: unknown } | undefined;
      return {
        scope,
        key,
        status: row.expired === true ? "expired" : "completed",
        createdAt: new Date(row.created_at as string | Date),
        expiresAt: new Date(row.expires_at as string | Date),
        fingerprint: (row.fingerprint as string | null) ?? null,
        get result() {
          decoded ??= { value: encodedResult === null ? undefined : codec.decode(encodedResult) };
          return decoded.value;
        },
        encodedResult,
      };
    },

    async forget(ref, options = {}) {
      const { scope, key } = checkRef(ref);
      const lockTimeoutMs = toMilliseconds(options.lockTimeout ?? DEFAULT_FORGET_LOCK_TIMEOUT, "lockTimeout");
      const started = Date.now();
      cache?.forget(scope, key);
      let deleted: boolean;
      try {
        deleted = await withSchemaCheck(
          db.transaction(async (_tx, inTransaction) => {
            // READ COMMITTED, so that the DELETE after the wait sees what the running call committed.
            await inTransaction.query(sql.readCommitted, []);
            await inTransaction.query(sql.setLockTimeout, [lockTimeoutMs]);
            await inTransaction.query(sql.lockKey, [keyLockId(scope, key, sql.schema)]);
            return (await inTransaction.query(sql.forgetKey, [scope, key])).length > 0;
          }),
        );
      } catch (error) {
        if (sqlStateOf(error) === SqlState.lockNotAvailable) {
          throw new IdempotencyKeyInUseError(scope, key, Date.now() - started, { cause: error });
        }
        throw error;
      }
      // Again after the delete: a call of this process that committed while forget waited has
      // kept its record in the cache.
      cache?.forget(scope, key);
      return deleted;
    },

    async purge(ref, options = {}) {
      if (typeof ref !== "object" || ref === null) throw new InvalidArgumentError("scope", "expected { scope }");
      const scope = checkName(ref.scope, "scope");
      const batchSize = options.batchSize ?? DEFAULT_PURGE_BATCH;
      if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_PURGE_BATCH) {
        throw new InvalidArgumentError("batchSize", `expected an integer from 1 to ${MAX_PURGE_BATCH}, got ${String(batchSize)}`);
      }
      cache?.forgetScope(scope);
      let total = 0;
      for (;;) {
        const [row] = await withSchemaCheck(db.query(sql.purgeScopeBatch, [scope, batchSize]));
        const deleted = Number(row?.deleted ?? 0);
        total += deleted;
        if (deleted < batchSize) break;
      }
      cache?.forgetScope(scope);
      return total;
    },
  };
}
