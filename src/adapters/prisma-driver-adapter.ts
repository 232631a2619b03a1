/**
 * `txonceAdapter(adapter)`: wraps the driver adapter a Prisma 7 client is made with, so that
 * txonce's own statements (the claim of a key and the save of its result in its transactions,
 * and its statements outside any) go through the adapter, instead of through Prisma's query
 * pipeline (`$queryRawUnsafe`), and the save goes with the COMMIT where the adapter allows it.
 * The application's queries are not touched: the wrapper only hands the transactions it starts
 * to txonce, when txonce started them.
 *
 * How a transaction reaches txonce: txonce opens each of its transactions inside an
 * AsyncLocalStorage context holding an empty slot ({@link inTxonceTransaction}); Prisma calls
 * the adapter's `startTransaction` in that context, and the wrapper puts the transaction it
 * returns in the slot. A transaction txonce did not start (the application's own) finds no slot
 * and is left alone, and so is any transaction after the first in a slot.
 *
 * The public driver adapter interface of Prisma 7 (`connect`, `startTransaction`, a
 * transaction's `queryRaw`, `executeRaw`, `commit` and `rollback`) is all it needs, so it works
 * over any PostgreSQL adapter: `@prisma/adapter-pg`, `pglite-prisma-adapter`, Neon's. Over
 * `@prisma/adapter-pg`, it also uses what that adapter does not document (its `client`, the pg
 * pool its `startTransaction` takes a connection from): the claim goes with the BEGIN and a
 * statement after the ROLLBACK with the ROLLBACK ({@link startedOnConnection}); where that is not
 * there, they go on their own.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { Decimal } from "@prisma/client/runtime/client";
import { InvalidArgumentError } from "../errors.js";
import type { Row, SqlExecutor, Statement } from "../executor.js";
import { withLiterals } from "../sql/literals.js";
import { describeValue } from "./describe-value.js";
import { deferredStatement, lastRows, type DeferredStatement, type PgQueryResult } from "./merged-statements.js";

/** A statement as Prisma's driver adapters take it. */
interface AdapterQuery {
  sql: string;
  args: unknown[];
  argTypes: { scalarType: string; arity: "scalar" | "list"; dbType?: string }[];
}

/** A result as Prisma's driver adapters return it: column names, their types, rows of values. */
interface AdapterResultSet {
  columnNames: string[];
  columnTypes: number[];
  rows: unknown[][];
}

/** What txonce uses of a transaction of a Prisma driver adapter. */
export interface AdapterTransactionLike {
  readonly options: { readonly usePhantomQuery: boolean };
  queryRaw(query: AdapterQuery): Promise<AdapterResultSet>;
  executeRaw(query: AdapterQuery): Promise<number>;
  commit(): Promise<void>;
  rollback(): Promise<void>;
}

/** What txonce uses of a connected Prisma driver adapter (`SqlDriverAdapter`). */
export interface DriverAdapterLike {
  readonly provider: string;
  queryRaw(query: AdapterQuery): Promise<AdapterResultSet>;
  startTransaction(isolationLevel?: string): Promise<AdapterTransactionLike>;
  dispose?(): Promise<void>;
}

/** A Prisma 7 driver adapter factory (`SqlDriverAdapterFactory`): what `new PrismaPg(...)` returns. */
export interface DriverAdapterFactoryLike {
  readonly provider: string;
  readonly adapterName: string;
  connect(): Promise<DriverAdapterLike>;
}

/** A transaction txonce can send statements to directly, while Prisma has not closed it. */
export interface DirectTransaction {
  readonly transaction: AdapterTransactionLike;
  /** Set when Prisma sends COMMIT or ROLLBACK, or commits or rolls back through the adapter. */
  closing: boolean;
  /** Whether a statement can go in the COMMIT's round trip (see {@link directExecutor}). */
  readonly mergesCommit: boolean;
  /** The statement (parameters written in) to send in the COMMIT's round trip. */
  atCommit?: string;
  /**
   * The transaction's connection, as node-postgres gives it, where the adapter is
   * `@prisma/adapter-pg` (see {@link startedOnConnection}): statements that go with BEGIN and
   * ROLLBACK are sent on it.
   */
  readonly connection?: PgConnection;
  /** The rows of the first statement txonce gave (the claim), sent with BEGIN. */
  readonly firstRows?: Promise<Row[]>;
  /** The statement to send in the ROLLBACK's round trip, after it (the first poll of a taken key). */
  afterRollback?: DeferredStatement;
}

/** The slot of one transaction txonce starts: filled by the wrapped adapter's `startTransaction`. */
interface TransactionSlot {
  /** The transaction's first statement (parameters written in), to send with BEGIN where the adapter can. */
  readonly first?: string;
  /** A transaction txonce started before Prisma's, for the wrapped `startTransaction` to hand Prisma. */
  prestarted?: Prestarted;
  direct?: DirectTransaction;
}

/** A transaction txonce started on the adapter itself, its first statement sent with BEGIN. */
interface Prestarted {
  /** The adapter's transaction (watched), what `startTransaction` would have returned. */
  readonly transaction: AdapterTransactionLike;
  readonly direct: DirectTransaction;
}

/** On a connected `@prisma/adapter-pg` adapter: starts a transaction on a free connection of its pool, or `undefined` when none is free. */
const PRESTART = Symbol.for("txonce.driverAdapter.prestart");
type Prestart = (first: string) => Promise<Prestarted> | undefined;

/** What txonce uses of a node-postgres connection (`PoolClient`), which `@prisma/adapter-pg` runs its transactions on. */
interface PgConnection {
  query(text: string): Promise<PgQueryResult>;
  query(config: { text: string }): Promise<unknown>;
}

/** What txonce uses of a node-postgres `Pool`, `@prisma/adapter-pg`'s `client`. */
interface PgPool {
  connect(): Promise<PgConnection>;
}

const slots = new AsyncLocalStorage<TransactionSlot>();

/** Set once any adapter is wrapped: until then txonce opens no AsyncLocalStorage context at all. */
let wrapping = false;

/** Marks a wrapped factory, so that wrapping twice wraps once. */
const WRAPPED = Symbol.for("txonce.driverAdapter");
/** On a wrapped factory: the adapter it connected, once Prisma has connected it. */
const CONNECTED = Symbol.for("txonce.driverAdapter.connected");

/**
 * Makes txonce's statements cheaper on a Prisma 7 client: wrap the client's driver adapter with
 * it. txonce's claim and save then go to the transaction's connection through the adapter,
 * instead of through Prisma's query pipeline, and over `@prisma/adapter-pg` the save goes in the
 * same round trip as the COMMIT. The application's own queries, transactions and logging are
 * untouched, and `txonce(prisma)` on a client whose adapter is not wrapped works as before.
 * docs/adapters.md has the details (AsyncLocalStorage, query logs) and docs/benchmarks.md the
 * figures.
 *
 * @param factory - the driver adapter the client is made with: `new PrismaPg(...)`, `new PrismaPGlite(...)`, ...
 * @returns the same adapter (same type), for `new PrismaClient({ adapter })`
 *
 * @example
 * // PrismaPg from @prisma/adapter-pg; txonce and txonceAdapter from txonce/prisma
 * const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString })) });
 * const { withIdempotency } = txonce(prisma);
 */
export function txonceAdapter<Factory extends DriverAdapterFactoryLike>(factory: Factory): Factory {
  if (typeof factory !== "object" || factory === null || typeof (factory as Partial<DriverAdapterFactoryLike>).connect !== "function") {
    throw new InvalidArgumentError(
      "adapter",
      `expected a Prisma driver adapter such as new PrismaPg({ connectionString }), got ${describeValue(factory)}`,
    );
  }
  if ((factory as { [WRAPPED]?: true })[WRAPPED]) return factory;
  if (factory.provider !== "postgres") {
    throw new InvalidArgumentError("adapter", `txonce runs on PostgreSQL; this adapter's provider is ${JSON.stringify(factory.provider)}`);
  }
  wrapping = true;
  // @prisma/adapter-pg sends a statement without parameters by the simple query protocol, which
  // takes several statements in one query: a statement and COMMIT go in one round trip. Not when
  // the application names its statements (then they are prepared, one statement each), and not
  // over adapters not known to do so.
  const mergesCommit =
    factory.adapterName === "@prisma/adapter-pg" &&
    typeof (factory as { options?: { statementNameGenerator?: unknown } }).options?.statementNameGenerator !== "function";
  // A proxy, so that everything else of the factory (its options, connectToShadowDb, ...) reads
  // as before; its methods run on the factory itself, whose private fields they may use.
  let connected: DriverAdapterLike | undefined;
  return new Proxy(factory, {
    get(target, property) {
      if (property === WRAPPED) return true;
      if (property === CONNECTED) return connected;
      if (property === "connect") {
        return async () => {
          const adapter = handingOverTransactions(await target.connect(), mergesCommit);
          // Once Prisma disposes of it ($disconnect), txonce goes through Prisma until it connects again.
          const dispose = adapter.dispose?.bind(adapter);
          if (dispose) {
            Object.defineProperty(adapter, "dispose", {
              configurable: true,
              writable: true,
              value: () => {
                if (connected === adapter) connected = undefined;
                return dispose();
              },
            });
          }
          return (connected = adapter);
        };
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/**
 * The connected adapter, its `startTransaction` putting what it starts in the caller's slot. Over
 * `@prisma/adapter-pg` (`mergesCommit`), a transaction txonce starts is started on the
 * connection it gets from the adapter's pool, as the adapter starts any
 * ({@link startedOnConnection}), so that txonce's first statement goes with the BEGIN and its
 * statement after a ROLLBACK with the ROLLBACK.
 */
function handingOverTransactions<Adapter extends DriverAdapterLike>(adapter: Adapter, mergesCommit: boolean): Adapter {
  const original = adapter.startTransaction;
  const startTransaction = original.bind(adapter);
  const pool = (adapter as { client?: Partial<PgPool> }).client;
  const onConnection = mergesCommit && typeof pool?.connect === "function";
  Object.defineProperty(adapter, "startTransaction", {
    configurable: true,
    writable: true,
    value: async (isolationLevel?: string) => {
      const slot = slots.getStore(); // read now: the context of the call, before anything is awaited
      if (!slot || slot.direct) return startTransaction(isolationLevel);
      const prestarted = slot.prestarted;
      if (prestarted && isolationLevel === undefined) {
        slot.prestarted = undefined;
        slot.direct = prestarted.direct;
        return prestarted.transaction;
      }
      if (!onConnection) {
        const transaction = await startTransaction(isolationLevel);
        slot.direct = watched(transaction, mergesCommit && !transaction.options.usePhantomQuery);
        return transaction;
      }
      // A SET TRANSACTION ISOLATION LEVEL follows the BEGIN, and must come before any statement.
      const { transaction, connection, firstRows } = await startedOnConnection(
        adapter, original, pool as PgPool, isolationLevel, isolationLevel ? undefined : slot.first,
      );
      slot.direct = watched(transaction, !transaction.options.usePhantomQuery, connection, firstRows);
      return transaction;
    },
  });
  if (onConnection) {
    const free = pool as PgPool & { idleCount?: unknown; waitingCount?: unknown };
    const prestart: Prestart = (first) => {
      // Only on a connection free at once: pg's pool hands idle connections to its waiting
      // requests in order, so with none waiting this request gets one. Otherwise Prisma starts the
      // transaction, under its maxWait.
      if (typeof free.idleCount !== "number" || free.idleCount === 0 || free.waitingCount !== 0) return undefined;
      return startedOnConnection(adapter, original, free, undefined, first).then(({ transaction, connection, firstRows }) => ({
        transaction,
        direct: watched(transaction, !transaction.options.usePhantomQuery, connection, firstRows),
      }));
    };
    Object.defineProperty(adapter, PRESTART, { configurable: true, value: prestart });
  }
  return adapter;
}

/**
 * Starts a transaction with `@prisma/adapter-pg`'s own `startTransaction`, run on a view of the
 * adapter whose pool hands out the connection through txonce: so txonce has the connection the
 * transaction runs on, and the adapter's BEGIN goes in one simple-protocol query with `first`,
 * whose rows are `firstRows` (the BEGIN is answered once that query is; if `first` fails, the
 * transaction is open and aborted, and the work that reads `firstRows` rolls it back).
 */
async function startedOnConnection(
  adapter: DriverAdapterLike,
  startTransaction: DriverAdapterLike["startTransaction"],
  pool: PgPool,
  isolationLevel: string | undefined,
  first: string | undefined,
): Promise<{ transaction: AdapterTransactionLike; connection?: PgConnection; firstRows?: Promise<Row[]> }> {
  let connection: PgConnection | undefined;
  let firstRows: Promise<Row[]> | undefined;
  const connect = async () => {
    connection = await pool.connect();
    if (first === undefined) return connection;
    const target = connection;
    let begun = false;
    return new Proxy(target, {
      get(on, property) {
        const value: unknown = Reflect.get(on, property, on);
        if (property !== "query" || begun) return typeof value === "function" ? value.bind(on) : value;
        return (query: string | { text?: string }, ...rest: unknown[]) => {
          const text = typeof query === "string" ? query : query?.text;
          if (begun || typeof text !== "string" || !/^\s*BEGIN\s*$/i.test(text)) return target.query(query as never, ...(rest as []));
          begun = true;
          const both = target.query(`${text};\n${first}`);
          firstRows = both.then(lastRows);
          firstRows.catch(() => {}); // the work reads it; this only keeps an early failure from being unhandled
          return both.then(
            (results) => (Array.isArray(results) ? results[0] : results),
            () => ({ command: "BEGIN", rowCount: null, rows: [], fields: [] }),
          );
        };
      },
    });
  };
  const view = Object.create(adapter, { client: { value: { connect } } }) as DriverAdapterLike;
  const transaction = await startTransaction.call(view, isolationLevel);
  // No connection when the adapter did not start it through `client.connect()` (another version).
  return { transaction, connection, firstRows };
}

/** Statements Prisma's transaction manager sends to end a transaction (when not a phantom query). */
const ENDING = /^\s*(COMMIT|ROLLBACK)\s*$/i;
const COMMIT = /^\s*COMMIT\s*$/i;
const ROLLBACK = /^\s*ROLLBACK\s*$/i;

/**
 * The transaction, marked `closing` as soon as Prisma starts to end it, and sending the statement
 * queued by {@link directExecutor}'s `sendWithCommit` with its COMMIT. If that fails, the
 * transaction is rolled back (the COMMIT after a failed statement of the same query is not run,
 * and the connection must not go back to the pool inside an aborted transaction), and the error
 * is the COMMIT's.
 */
function watched(
  transaction: AdapterTransactionLike,
  mergesCommit: boolean,
  connection?: PgConnection,
  firstRows?: Promise<Row[]>,
): DirectTransaction {
  const direct: DirectTransaction = { transaction, closing: false, mergesCommit, connection, firstRows };
  /** The statement waiting for the ROLLBACK, refused: the transaction ended another way. */
  const notSent = () => {
    direct.afterRollback?.reject(new Error("the transaction did not end by a ROLLBACK txonce could send it with"));
    direct.afterRollback = undefined;
  };
  const { queryRaw, executeRaw, commit, rollback } = transaction;
  const own = (name: string, value: unknown) => Object.defineProperty(transaction, name, { configurable: true, writable: true, value });
  own("executeRaw", async (query: AdapterQuery) => {
    if (!ENDING.test(query.sql)) return executeRaw.call(transaction, query);
    direct.closing = true;
    const after = direct.afterRollback;
    if (after && connection && ROLLBACK.test(query.sql)) {
      direct.afterRollback = undefined;
      // If that query fails, ROLLBACK is sent again the adapter's way (a warning if it ran): the
      // statement's promise rejects, and txonce sends it itself.
      try {
        after.resolve(lastRows(await connection.query(`${query.sql};\n${after.sql}`)));
        return 0;
      } catch (error) {
        after.reject(error);
        return executeRaw.call(transaction, query);
      }
    }
    notSent();
    const { atCommit } = direct;
    if (atCommit === undefined || !COMMIT.test(query.sql)) return executeRaw.call(transaction, query);
    direct.atCommit = undefined;
    try {
      return await executeRaw.call(transaction, { sql: `${atCommit};\n${query.sql}`, args: [], argTypes: [] });
    } catch (error) {
      await executeRaw.call(transaction, { sql: "ROLLBACK", args: [], argTypes: [] }).catch(() => {});
      throw error;
    }
  });
  own("queryRaw", (query: AdapterQuery) => {
    if (ENDING.test(query.sql)) {
      direct.closing = true;
      notSent();
    }
    return queryRaw.call(transaction, query);
  });
  own("commit", () => {
    direct.closing = true;
    notSent();
    return commit.call(transaction);
  });
  own("rollback", () => {
    direct.closing = true;
    notSent();
    return rollback.call(transaction);
  });
  return direct;
}

/**
 * Statements outside any transaction, through the adapter that a wrapped factory connected
 * (each statement on its own, in autocommit, as the adapter's pool runs it), or through
 * `fallback` while Prisma has not connected it yet.
 */
export function directRootExecutor(factory: unknown, fallback: SqlExecutor): SqlExecutor | undefined {
  if (typeof factory !== "object" || factory === null || (factory as { [WRAPPED]?: true })[WRAPPED] !== true) return undefined;
  return {
    async query(sql, params) {
      const adapter = (factory as { [CONNECTED]?: DriverAdapterLike })[CONNECTED];
      if (!adapter) return fallback.query(sql, params);
      return rowsOf(await adapter.queryRaw({ sql, args: params.map(argument), argTypes: params.map(argumentType) }));
    },
  };
}

/** Whether any driver adapter was wrapped by {@link txonceAdapter} in this process. */
export const adaptersWrapped = () => wrapping;

/**
 * Runs one of txonce's transactions on a client whose adapter may be wrapped. `inPrisma` starts
 * it as a Prisma interactive transaction; the wrapped adapter's `startTransaction` puts the
 * transaction it starts in the slot, which `slot()` reads from inside the transaction's callback
 * (and sends `first` with its BEGIN where it can, its rows in `slot().firstRows`).
 *
 * With `prestart` (`first` given, no isolation level) and a connected `@prisma/adapter-pg`
 * adapter with a free connection, the transaction is started on the adapter before Prisma's,
 * `first` with its BEGIN. When `first` finds nothing or fails, `withoutPrisma` ends the work
 * without a Prisma transaction (it must not use the transaction client: txonce's work rolls back
 * with what the claim found), and the transaction is rolled back here, any statement queued for
 * after the ROLLBACK with it: a replay from another process costs no Prisma transaction. Else
 * Prisma starts its interactive transaction, and the wrapped `startTransaction` hands it the one
 * already started.
 */
export async function inTxonceTransaction<T>(
  factory: unknown,
  first: Statement | undefined,
  prestart: boolean,
  inPrisma: (slot: () => DirectTransaction | undefined) => Promise<T>,
  withoutPrisma: (direct: DirectTransaction) => Promise<T>,
): Promise<T> {
  const slot: TransactionSlot = first ? { first: withLiterals(first.sql, first.params) } : {};
  const adapter = prestart && slot.first !== undefined ? connectedAdapterOf(factory) : undefined;
  const started = adapter ? await (adapter as { [PRESTART]?: Prestart })[PRESTART]?.(slot.first!) : undefined;
  if (started) {
    const rows = started.direct.firstRows && (await started.direct.firstRows.catch(() => undefined));
    if (started.direct.firstRows && !rows?.length) {
      try {
        return await withoutPrisma(started.direct);
      } finally {
        await rolledBack(started);
      }
    }
    slot.prestarted = started;
  }
  try {
    return await slots.run(slot, () => inPrisma(() => slot.direct));
  } finally {
    // Prisma did not take it (it failed before starting its transaction).
    const left = slot.prestarted;
    slot.prestarted = undefined;
    if (left) await rolledBack(left);
  }
}

/** Rolls back a transaction txonce started itself (sending what waits for the ROLLBACK with it), and releases its connection. */
async function rolledBack({ transaction }: Prestarted): Promise<void> {
  await transaction.executeRaw({ sql: "ROLLBACK", args: [], argTypes: [] }).catch(() => {});
  await transaction.rollback();
}

function connectedAdapterOf(factory: unknown): DriverAdapterLike | undefined {
  if (typeof factory !== "object" || factory === null || (factory as { [WRAPPED]?: true })[WRAPPED] !== true) return undefined;
  return (factory as { [CONNECTED]?: DriverAdapterLike })[CONNECTED];
}

/**
 * Runs txonce's statements on the adapter's transaction; once Prisma has begun to end it (its
 * timeout, say), through `fallback`, Prisma's own path, which refuses them as Prisma does.
 */
export function directExecutor(direct: DirectTransaction, fallback: SqlExecutor): SqlExecutor {
  return {
    async query(sql, params) {
      if (direct.closing) return fallback.query(sql, params);
      const result = await direct.transaction.queryRaw({ sql, args: params.map(argument), argTypes: params.map(argumentType) });
      return rowsOf(result);
    },
    sendWithCommit(sql, params) {
      if (!direct.mergesCommit || direct.closing || direct.atCommit !== undefined) return false;
      direct.atCommit = withLiterals(sql, params);
      return true;
    },
    sendAfterRollback(sql, params) {
      if (!direct.connection || direct.closing || direct.afterRollback) return undefined;
      direct.afterRollback = deferredStatement(withLiterals(sql, params));
      return direct.afterRollback.rows;
    },
  };
}

/** A parameter as the adapters' `mapArg` takes it (they convert datetimes and bytes by `argTypes`). */
function argument(value: unknown): unknown {
  if (value === undefined) return null;
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Date) return value.toISOString();
  return value;
}

function argumentType(value: unknown): AdapterQuery["argTypes"][number] {
  if (value instanceof Date) return { scalarType: "datetime", arity: "scalar" };
  if (typeof value === "string") return { scalarType: "string", arity: "scalar" };
  if (typeof value === "number") return { scalarType: "decimal", arity: "scalar" };
  if (typeof value === "bigint") return { scalarType: "bigint", arity: "scalar" };
  return { scalarType: "unknown", arity: "scalar" };
}

/** Column types of Prisma's driver adapters (`ColumnTypeEnum` of @prisma/driver-adapter-utils). */
const Column = { Int32: 0, Int64: 1, Float: 2, Double: 3, Numeric: 4, DateTime: 10, Date: 8, Json: 11, Bytes: 13, UnknownNumber: 128 };

/** Rows as objects, with values as `$queryRawUnsafe` gives them (Date, bigint, Decimal, parsed JSON). */
function rowsOf({ columnNames, columnTypes, rows }: AdapterResultSet): Row[] {
  return rows.map((values) => {
    const row: Row = {};
    for (let i = 0; i < columnNames.length; i++) row[columnNames[i]!] = valueOf(values[i], columnTypes[i]!);
    return row;
  });
}

function valueOf(value: unknown, type: number): unknown {
  if (value === null || value === undefined) return null;
  switch (type) {
    case Column.Int32:
    case Column.Float:
    case Column.Double:
    case Column.UnknownNumber:
      return typeof value === "string" ? Number(value) : value;
    case Column.Int64:
      return typeof value === "bigint" ? value : BigInt(value as string | number);
    case Column.Numeric:
      return new Decimal(value as string | number);
    case Column.DateTime:
    case Column.Date:
      return value instanceof Date ? value : new Date(value as string);
    case Column.Json:
      return typeof value === "string" ? JSON.parse(value) : value;
    case Column.Bytes:
      return value instanceof Uint8Array ? value : typeof value === "string" ? Buffer.from(value, "base64") : value;
    default:
      return value;
  }
}
