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
 * `lockTimeout`. Nothing was executed for this call, and it held no connection while it waited.
 * Maps to HTTP 409 Conflict: the client should retry later with the same key.
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
 * not been applied to this database or schema, or txonce looks in another schema than the one
 * they are in (the `schema` option). The message names the schema searched and, when txonce's
 * tables are in another schema of the database, that one.
 */
export class SchemaNotInstalledError extends TxonceError {
  readonly code = "TXONCE_SCHEMA_NOT_INSTALLED";
  /** The schema the tables were looked for in: the `schema` option, else the connection's current schema (when it could be asked). */
  readonly schema: string | undefined;
  /** Other schemas of the database that hold txonce's tables (empty when none, or when they could not be looked up). */
  readonly foundIn: readonly string[];
  constructor(options?: { cause?: unknown; schema?: string; searchPath?: boolean; foundIn?: readonly string[] }) {
    const schema = options?.schema;
    const foundIn = options?.foundIn ?? [];
    const where =
      schema !== undefined
        ? `schema "${schema}"${options?.searchPath ? " (the connection's search_path)" : ""} of this database`
        : foundIn.length > 0
          ? "the connection's search_path"
          : "this database";
    const elsewhere =
      foundIn.length > 0
        ? ` (found in schema ${foundIn.map((s) => JSON.stringify(s)).join(", ")}: pass { schema: ${JSON.stringify(foundIn[0])} })`
        : "";
    // Found elsewhere: the fix is the option. Found nowhere: how to install them.
    const install =
      foundIn.length > 0
        ? ""
        : " With Prisma: `npx txonce init` adds txonce's models to your schema, then `npx prisma migrate dev --name txonce` " +
          "creates them. Without Prisma: apply node_modules/txonce/prisma/migrations/*/migration.sql in order";
    super(
      `The txonce tables are not ${schema === undefined && foundIn.length > 0 ? "on" : "in"} ${where}${elsewhere}.${install}`,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.schema = schema;
    this.foundIn = foundIn;
  }
}

/** Which of txonce's own steps failed: see {@link DatabaseUnavailableError.during}. */
export type IdempotencyStep = "begin" | "claim" | "save" | "commit" | "poll";

const describeKey = (scope: string, key: string) =>
  `idempotency key ${JSON.stringify(key)}${scope ? ` in scope ${JSON.stringify(scope)}` : ""}`;

const STEP: Record<IdempotencyStep, string> = {
  begin: "starting the transaction",
  claim: "claiming the key",
  save: "storing the result",
  commit: "committing",
  poll: "waiting for a concurrent call",
};

/**
 * The database could not serve one of txonce's own statements for this call (starting the
 * transaction, the claim, storing the result, COMMIT, or the poll while waiting for a concurrent
 * call). This call committed nothing: retrying it with the same key is safe, and runs the
 * operation afresh unless another call has completed the key meanwhile. The original error is the
 * `cause`. Maps to HTTP 503 Service Unavailable. Match the subclasses, or this class for all.
 * With `during: "commit"`, COMMIT got no answer and txonce looked up the transaction on another
 * connection: it had rolled back (had it committed, the call would have returned its value).
 */
export abstract class DatabaseUnavailableError extends TxonceError {
  constructor(
    readonly scope: string,
    readonly key: string,
    /**
     * The step that failed. Where the save goes in the COMMIT's round trip (txonce/pg, and
     * Prisma with `txonceAdapter`), a failure while storing the result is `"commit"`.
     */
    readonly during: IdempotencyStep,
    what: string,
    options: { cause: unknown },
  ) {
    super(`${what} while ${STEP[during]} for ${describeKey(scope, key)}; nothing was committed, retry with the same key`, options);
  }
}

/**
 * The connection broke during one of txonce's statements: SQLSTATE class 08, Prisma's `P1017`
 * or `P1008`, a socket error (`ECONNRESET`, `EPIPE`, ...), or an error the driver raised without
 * any code (node-postgres reports a dropped connection as a plain `Error`). The transaction
 * rolled back.
 */
export class ConnectionLostError extends DatabaseUnavailableError {
  readonly code = "TXONCE_CONNECTION_LOST";
  constructor(scope: string, key: string, during: IdempotencyStep, options: { cause: unknown }) {
    super(scope, key, during, "The database connection was lost", options);
  }
}

/**
 * No connection could be had to start the transaction or to poll: the pool had none free in
 * time (Prisma's `P2028` "Unable to start a transaction in the given time" or `P2024`, or the
 * driver's pool timeout), the server was unreachable (`P1001`, `ECONNREFUSED`), had too many
 * connections (`53300`) or was starting up or shutting down (`57P03`).
 */
export class NoConnectionError extends DatabaseUnavailableError {
  readonly code = "TXONCE_NO_CONNECTION";
  constructor(scope: string, key: string, during: IdempotencyStep, options: { cause: unknown }) {
    super(scope, key, during, "No database connection was available", options);
  }
}

/**
 * The server ended the session: an administrator terminated it (`pg_terminate_backend`, SQLSTATE
 * `57P01`, also sent on a fast shutdown) or the server is recovering from a crash (`57P02`). The
 * transaction rolled back.
 */
export class ConnectionTerminatedError extends DatabaseUnavailableError {
  readonly code = "TXONCE_CONNECTION_TERMINATED";
  constructor(scope: string, key: string, during: IdempotencyStep, options: { cause: unknown }) {
    super(scope, key, during, "The database server terminated the session", options);
  }
}

/**
 * The operation ran and COMMIT was sent, but no answer came back (the connection broke or the
 * session was terminated during COMMIT), and txonce could not find out afterwards whether it
 * committed: its own look-up (`pg_xact_status` of the transaction, on another connection) failed
 * too, or the transaction was still in progress when `lockTimeout` ran out. The key is either
 * committed with its result or rolled back with the operation's writes, never half of it:
 * **retrying with the same key is safe**, it replays the stored result if the attempt committed
 * and runs the operation afresh if it did not. The original error is the `cause`. Maps to HTTP
 * 503 Service Unavailable (the client retries with the same key).
 */
export class OutcomeUnknownError extends TxonceError {
  readonly code = "TXONCE_OUTCOME_UNKNOWN";
  constructor(
    readonly scope: string,
    readonly key: string,
    options: { cause: unknown },
  ) {
    super(
      `COMMIT of ${describeKey(scope, key)} got no answer and its outcome could not be looked up: ` +
        "it either committed with its result or rolled back entirely; retrying with the same key is safe " +
        "(it replays if the attempt committed, runs afresh if not)",
      options,
    );
  }
}
