/**
 * Every error that txonce raises is a {@link TxonceError}. Match on `code` (stable across
 * versions) or on the class with `instanceof`; never on `message`, which may be reworded.
 */
export abstract class TxonceError extends Error {
  /** A stable, machine-readable identifier of the error kind, e.g. `TXONCE_KEY_IN_USE`. */
  abstract readonly code: string;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** What txonce knows about a stored idempotency record, without its result. */
export interface IdempotencyRecordInfo {
  readonly scope: string;
  readonly key: string;
  /** Hash of the fingerprint given on the first call, or `null` if none was given. */
  readonly fingerprint: string | null;
  /** When the first call committed its result (database clock). */
  readonly firstSeenAt: Date;
  /** When the record stops counting and the key may run again (database clock). */
  readonly expiresAt: Date;
}

/**
 * Another call with the same scope and key is still running and did not finish within
 * `lockTimeout`. Nothing was executed for this call. Maps to HTTP 409 Conflict: the client
 * should retry later.
 */
export class IdempotencyKeyInUseError extends TxonceError {
  readonly code = "TXONCE_KEY_IN_USE";
  constructor(
    readonly scope: string,
    readonly key: string,
    /** How long this call waited for the running call, in milliseconds. */
    readonly waitedMs: number,
    options?: { cause?: unknown },
  ) {
    super(
      `Idempotency key ${JSON.stringify(key)}${scope ? ` in scope ${JSON.stringify(scope)}` : ""} ` +
        `is in use by a call that did not finish within ${waitedMs} ms`,
      options,
    );
  }
}

/**
 * The key was already used with a different fingerprint (a different request). The operation was
 * not executed. Maps to HTTP 422 Unprocessable Content.
 */
export class IdempotencyKeyReusedError extends TxonceError {
  readonly code = "TXONCE_KEY_REUSED";
  constructor(
    /** The stored record that the key belongs to. */
    readonly record: IdempotencyRecordInfo,
    /** Hash of the fingerprint given on this call, or `null`. */
    readonly fingerprint: string | null,
  ) {
    super(
      `Idempotency key ${JSON.stringify(record.key)}${record.scope ? ` in scope ${JSON.stringify(record.scope)}` : ""} ` +
        `was first used at ${record.firstSeenAt.toISOString()} with a different request fingerprint`,
    );
  }
}

/**
 * An argument is not acceptable: an empty or over-long key or scope, a malformed retention
 * duration, an unknown option value. Raised before anything is written.
 */
export class InvalidArgumentError extends TxonceError {
  readonly code: string = "TXONCE_INVALID_ARGUMENT";
  constructor(
    /** The name of the offending argument or option, e.g. `key` or `retention`. */
    readonly argument: string,
    /** Why it was refused. */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`Invalid ${argument}: ${reason}`, options);
  }
}

/**
 * A value (an operation's result, a fingerprint, a message payload) holds something the codec
 * cannot store and restore faithfully: a function, a symbol, an instance of a class it does not
 * know. Nothing was stored; the transaction rolled back. Register the type with the `types` option
 * if it should be stored.
 */
export class UnencodableValueError extends InvalidArgumentError {
  override readonly code = "TXONCE_UNENCODABLE_VALUE";
  constructor(
    argument: string,
    /** Where in the value the problem is, e.g. `$.items[2].onClick`. */
    readonly path: string,
    /** What was found there, e.g. `function` or `instance of class Foo`. */
    readonly found: string,
  ) {
    super(argument, `${found} at ${path} cannot be stored and restored faithfully`);
  }
}

/**
 * The txonce tables are missing from the database (SQLSTATE 42P01 or 42703): the migration has
 * not been applied to this database or schema.
 */
export class SchemaNotInstalledError extends TxonceError {
  readonly code = "TXONCE_SCHEMA_NOT_INSTALLED";
  constructor(options?: { cause?: unknown }) {
    super(
      "The txonce tables are not in this database. With Prisma: `npx txonce init` adds txonce's models " +
        "to your schema, then `npx prisma migrate dev --name txonce` creates them. Without Prisma: apply " +
        "node_modules/txonce/prisma/migrations/*/migration.sql in order",
      options,
    );
  }
}
