import { SchemaNotInstalledError } from "./errors.js";
import type { SqlExecutor } from "./executor.js";
import type { Statements } from "./sql/statements.js";

/** SQLSTATE codes that txonce reacts to (PostgreSQL Appendix A). */
export const SqlState = {
  uniqueViolation: "23505",
  lockNotAvailable: "55P03",
  serializationFailure: "40001",
  deadlockDetected: "40P01",
  queryCanceled: "57014",
  undefinedTable: "42P01",
  undefinedColumn: "42703",
  undefinedFunction: "42883",
  tooManyConnections: "53300",
  adminShutdown: "57P01",
  crashShutdown: "57P02",
  cannotConnectNow: "57P03",
} as const;

const SQLSTATE = /^[0-9A-Z]{5}$/;
/** Prisma's own codes (P1000-P6999) look like SQLSTATEs; PostgreSQL's class P0 is PL/pgSQL. */
const PRISMA_CODE = /^P[1-9]/;

/**
 * The SQLSTATE of a database error, however a driver wrapped it: node-postgres' `DatabaseError`
 * (`code`), Prisma's `PrismaClientKnownRequestError` (`meta.code`, or the driver adapter error's
 * `cause.originalCode`), PGlite's error (`code`), or any of these as a `cause`.
 */
export function sqlStateOf(error: unknown): string | undefined {
  for (const e of chain(error)) {
    const candidate = e as { code?: unknown; originalCode?: unknown };
    for (const code of [candidate.originalCode, candidate.code]) {
      if (typeof code === "string" && SQLSTATE.test(code) && !PRISMA_CODE.test(code)) return code;
    }
  }
  return undefined;
}

/** How a connection failed, as far as the error's codes tell: see {@link connectionFailureOf}. */
export type ConnectionFailure = "lost" | "unavailable" | "terminated";

/** Prisma's stable error codes (https://www.prisma.io/docs/orm/reference/error-reference) about connections. */
const PRISMA_CONNECTION_CODES: Record<string, ConnectionFailure> = {
  P1001: "unavailable", // can't reach the database server
  P1008: "lost", // operation timed out (socket timeout)
  P1017: "lost", // the server closed the connection
  P2024: "unavailable", // timed out fetching a connection from the pool
  P2037: "unavailable", // too many database connections opened
};

/** Prisma's driver adapter errors carry a `kind` (see @prisma/driver-adapter-utils). */
const ADAPTER_KINDS: Record<string, ConnectionFailure> = {
  ConnectionClosed: "lost",
  SocketTimeout: "lost",
  DatabaseNotReachable: "unavailable",
  TooManyConnections: "unavailable",
};

/** Node's system error codes (`error.code` of a socket error). */
const SOCKET_CODES: Record<string, ConnectionFailure> = {
  ECONNRESET: "lost",
  EPIPE: "lost",
  ECONNABORTED: "lost",
  ETIMEDOUT: "lost",
  ECONNREFUSED: "unavailable",
  ENOTFOUND: "unavailable",
  EHOSTUNREACH: "unavailable",
  ENETUNREACH: "unavailable",
  EAI_AGAIN: "unavailable",
};

/** postgres.js' connection error codes (`error.code` of its `Errors.connection(...)`). */
const POSTGRES_JS_CODES: Record<string, ConnectionFailure> = {
  CONNECTION_CLOSED: "lost", // the socket closed under a query
  CONNECTION_DESTROYED: "lost", // the connection was destroyed with queries pending
  CONNECTION_ENDED: "unavailable", // sql.end() was called: no new queries
  CONNECT_TIMEOUT: "unavailable", // no connection within connect_timeout
};

/** Error classes of query builders that mean the pool had no connection for us (`error.name`). */
const POOL_TIMEOUT_ERRORS: Record<string, ConnectionFailure> = {
  KnexTimeoutError: "unavailable", // Knex: no connection from its pool within acquireConnectionTimeout
};

/**
 * Whether an error says the database connection failed, and how, from codes only (never the
 * message): SQLSTATE class 08 (connection exception) is `lost`; `57P01`/`57P02` (terminated by
 * an administrator, crash recovery) `terminated`; `57P03` (cannot connect now) and `53300` (too
 * many connections) `unavailable`; Prisma's `P1001`, `P1008`, `P1017`, `P2024`, `P2037`; the
 * `kind` of a Prisma driver adapter error (`ConnectionClosed`, ...); a socket error's `code`
 * (`ECONNRESET`, `ECONNREFUSED`, ...); postgres.js' `CONNECTION_CLOSED`, `CONNECT_TIMEOUT`, ...;
 * Knex's `KnexTimeoutError` (its pool had no connection in time). Looks through `cause`, `meta` and `driverAdapterError`.
 */
export function connectionFailureOf(error: unknown): ConnectionFailure | undefined {
  const state = sqlStateOf(error);
  if (state !== undefined) {
    if (state.startsWith("08")) return "lost";
    if (state === SqlState.adminShutdown || state === SqlState.crashShutdown) return "terminated";
    if (state === SqlState.cannotConnectNow || state === SqlState.tooManyConnections) return "unavailable";
  }
  for (const e of chain(error)) {
    const { code, errorCode, kind } = e as { code?: unknown; errorCode?: unknown; kind?: unknown };
    for (const c of [code, errorCode]) {
      const failure = typeof c === "string" ? (PRISMA_CONNECTION_CODES[c] ?? SOCKET_CODES[c] ?? POSTGRES_JS_CODES[c]) : undefined;
      if (failure) return failure;
    }
    if (typeof kind === "string" && ADAPTER_KINDS[kind]) return ADAPTER_KINDS[kind];
    const { name } = e as { name?: unknown };
    if (typeof name === "string" && Object.hasOwn(POOL_TIMEOUT_ERRORS, name)) return POOL_TIMEOUT_ERRORS[name];
  }
  return undefined;
}

/**
 * Whether an error carries no code at all (no SQLSTATE, Prisma code, system error code or driver
 * adapter kind anywhere in its chain) and is a plain `Error`: what node-postgres raises when the
 * connection drops under a query ("Connection terminated unexpectedly") or when a client that
 * already failed is used again. Coming from one of txonce's own statements, whose SQL is fixed,
 * such an error can only be the connection's.
 */
export function isCodelessDriverError(error: unknown): boolean {
  if (!(error instanceof Error) || Object.getPrototypeOf(error) !== Error.prototype) return false;
  for (const e of chain(error)) {
    const { code, errorCode, kind } = e as { code?: unknown; errorCode?: unknown; kind?: unknown };
    if (code !== undefined || errorCode !== undefined || kind !== undefined) return false;
  }
  return true;
}

/** The error and everything it wraps (`cause`, Prisma's `meta` and `driverAdapterError`). */
function* chain(error: unknown): Generator<object> {
  const seen = new Set<unknown>();
  const stack: unknown[] = [error];
  while (stack.length > 0) {
    const e = stack.pop();
    if (typeof e !== "object" || e === null || seen.has(e)) continue;
    seen.add(e);
    yield e;
    const next = e as { cause?: unknown; meta?: unknown; driverAdapterError?: unknown };
    stack.push(next.cause, next.meta, next.driverAdapterError);
  }
}

/** Where to look for txonce's tables when a statement did not find them. */
export interface SchemaLookup {
  /** Runs the look-up outside any transaction (the failed statement's may be aborted). */
  readonly db: SqlExecutor;
  /** The statements of the schema searched (their `locateTables`, and the schema option). */
  readonly statements: Pick<Statements, "locateTables" | "schema" | "IDEMPOTENCY_TABLE">;
}

/** How long the look-up of the schemas that hold the tables may take before the error goes without it. */
const LOOKUP_TIMEOUT_MS = 1000;

/**
 * Awaits a query of txonce's own, turning "no such table/column" into {@link SchemaNotInstalledError}.
 * With `lookup`, the error names the schema searched and the schemas that hold txonce's tables
 * (see {@link locatedSchemaError}).
 */
export async function withSchemaCheck<T>(query: Promise<T>, lookup?: SchemaLookup): Promise<T> {
  try {
    return await query;
  } catch (error) {
    const state = sqlStateOf(error);
    if (state === SqlState.undefinedTable || state === SqlState.undefinedColumn) {
      const missing = new SchemaNotInstalledError({ cause: error });
      throw lookup ? await locatedSchemaError(missing, lookup) : missing;
    }
    throw error;
  }
}

/**
 * The error again, naming the schema searched and the schemas that hold txonce's tables: one
 * catalog query outside any transaction, bounded by a second (with a pool of one connection that
 * a transaction still holds, it would wait for that connection). Send it after the failed
 * statement's transaction has ended where that can be done.
 */
export async function locatedSchemaError(error: SchemaNotInstalledError, lookup: SchemaLookup): Promise<SchemaNotInstalledError> {
  return new SchemaNotInstalledError({ cause: error.cause, ...(await locate(lookup)) });
}

async function locate({ db, statements }: SchemaLookup): Promise<{ schema?: string; searchPath?: boolean; foundIn?: string[] }> {
  let timer: NodeJS.Timeout | undefined;
  const lookedUp = db.query(statements.locateTables, [statements.IDEMPOTENCY_TABLE]);
  lookedUp.catch(() => {});
  try {
    const rows = await Promise.race([
      lookedUp,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), LOOKUP_TIMEOUT_MS);
        timer.unref();
      }),
    ]);
    const row = rows?.[0];
    const searched = statements.schema ?? (typeof row?.searched === "string" ? row.searched : undefined);
    const found = typeof row?.found === "string" && row.found !== "" ? row.found.split(",") : [];
    return { schema: searched, searchPath: statements.schema === undefined && searched !== undefined, foundIn: found.filter((s) => s !== searched) };
  } catch {
    return { schema: statements.schema };
  } finally {
    clearTimeout(timer);
  }
}
