/**
 * txonce for Drizzle ORM on PostgreSQL: `txonce(db)` over a `drizzle(...)` database of
 * `drizzle-orm/node-postgres` or `drizzle-orm/postgres-js` (any `PgDatabase`); the operation
 * gets Drizzle's own transaction (`tx` of `db.transaction(async (tx) => ...)`). Takes the
 * structural subset of the database it uses; imports `sql` and `is` from the `drizzle-orm` the
 * application has installed.
 */
import { DrizzleQueryError, is, sql as drizzleSql, type SQL } from "drizzle-orm";
import { PgDatabase, PgTransaction } from "drizzle-orm/pg-core";
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { keepingWorkError } from "./work-error.js";
import { refusingEndedTransactions } from "./ended-transactions.js";

/** Drizzle's `PgTransactionConfig`: what `db.transaction(fn, config)` takes. */
export interface DrizzleTransactionOptions {
  /** Isolation level of the transaction. (Default: the database's, `read committed` on PostgreSQL) */
  isolationLevel?: "read uncommitted" | "read committed" | "repeatable read" | "serializable";
  /** `read only` or `read write`. (Default: the database's, `read write`) */
  accessMode?: "read only" | "read write";
  /** `DEFERRABLE` (only meaningful for a serializable read-only transaction). (Default: the database's, not deferrable) */
  deferrable?: boolean;
}

/** What txonce needs from a Drizzle transaction: `execute` of a SQL object. */
export interface DrizzleTransactionLike {
  execute(query: SQL): PromiseLike<unknown>;
}

/** What txonce needs from a Drizzle PostgreSQL database (`NodePgDatabase`, `PostgresJsDatabase`). */
export interface DrizzleDatabaseLike<Tx> extends DrizzleTransactionLike {
  transaction<T>(transaction: (tx: Tx) => Promise<T>, config?: DrizzleTransactionOptions): Promise<T>;
}

/** The transaction type of a Drizzle database: what `db.transaction(async (tx) => ...)` passes. */
export type DrizzleTransactionOf<Client> = Client extends {
  transaction<T>(transaction: (tx: infer Tx) => Promise<T>, config?: any): Promise<T>;
}
  ? Tx
  : never;

const ISOLATION_LEVELS = ["read uncommitted", "read committed", "repeatable read", "serializable"] as const;
const ACCESS_MODES = ["read only", "read write"] as const;

const KIND = "a Drizzle PostgreSQL database (drizzle(...) of drizzle-orm/node-postgres or drizzle-orm/postgres-js)";

/** `$1`-style SQL and its parameters as a Drizzle SQL object (each parameter bound as one value, arrays included). */
function toDrizzle(text: string, params: readonly unknown[]): SQL {
  const chunks: SQL[] = [];
  let last = 0;
  for (const match of text.matchAll(/\$(\d+)/g)) {
    chunks.push(drizzleSql.raw(text.slice(last, match.index)));
    chunks.push(drizzleSql`${drizzleSql.param(params[Number(match[1]) - 1])}`);
    last = match.index + match[0].length;
  }
  chunks.push(drizzleSql.raw(text.slice(last)));
  return drizzleSql.join(chunks);
}

/** Rows of a Drizzle `execute` result: node-postgres' `{ rows }`, or postgres.js' array of rows. */
const rowsOf = (result: unknown): Row[] => (Array.isArray(result) ? result : (result as { rows: Row[] }).rows);

/** The driver's error under Drizzle's `DrizzleQueryError`: txonce classifies the driver's. */
const driverError = (error: unknown) => (error instanceof DrizzleQueryError && error.cause !== undefined ? error.cause : error);

/** txonce's own statements fail with the driver's error, not Drizzle's wrapper. */
async function unwrapped<T>(query: PromiseLike<T>): Promise<T> {
  try {
    return await query;
  } catch (error) {
    throw driverError(error);
  }
}

/** A {@link Database} over a Drizzle PostgreSQL database. */
export function drizzleDatabase<Tx extends DrizzleTransactionLike>(
  db: DrizzleDatabaseLike<Tx>,
): Database<Tx, DrizzleTransactionOptions> {
  if (is(db, PgTransaction)) {
    throw new InvalidArgumentError("db", `expected ${KIND}, got a Drizzle transaction: give txonce the database, and join a transaction with withIdempotencyIn(tx, ...)`);
  }
  if (!is(db, PgDatabase)) throw new InvalidArgumentError("db", `expected ${KIND}, got ${describeValue(db)}`);
  const executorOf = (handle: DrizzleTransactionLike): SqlExecutor => ({
    query: async (text, params) => rowsOf(await unwrapped(handle.execute(toDrizzle(text, params)))),
  });
  return refusingEndedTransactions<Tx, DrizzleTransactionOptions>({
    query: executorOf(db).query,
    sqlFor: executorOf,
    outsideTransaction(tx) {
      if (!is(tx, PgTransaction)) {
        return "this is the Drizzle database, not a transaction: pass the tx that withIdempotency or db.transaction(async (tx) => ...) gives you";
      }
      // On node-postgres the transaction's session holds the pool client: back to idle, the
      // transaction has ended. (postgres.js does not say.)
      const client = (tx as { session?: { client?: { getTransactionStatus?: () => string | null } } }).session?.client;
      if (typeof client?.getTransactionStatus === "function" && client.getTransactionStatus() === "I") {
        return "this Drizzle transaction has already ended (committed or rolled back): pass an open one";
      }
      return undefined;
    },
    transaction: (work, options) => {
      // Drizzle writes these into BEGIN as they are: a misspelt one would be a syntax error there.
      checkOption(options?.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
      checkOption(options?.accessMode, ACCESS_MODES, "transaction.accessMode");
      return keepingWorkError((guard) => db.transaction((tx) => guard(() => work(tx, executorOf(tx))), options), driverError);
    },
  });
}

export type TxonceOptions = TxonceOptionsOver<DrizzleTransactionOptions>;

/**
 * Makes retried operations safe on a Drizzle PostgreSQL database. The operation gets Drizzle's
 * transaction.
 *
 * @example
 * const { withIdempotency } = txonce(db);
 * await withIdempotency(key, async (tx) => (await tx.insert(charges).values(charge).returning())[0]!);
 */
export function txonce<Client extends DrizzleDatabaseLike<any>>(
  db: Client,
  options: TxonceOptions = {},
): Txonce<DrizzleTransactionOf<Client>, DrizzleTransactionOptions> {
  return createTxonce(drizzleDatabase(db as DrizzleDatabaseLike<DrizzleTransactionOf<Client> & DrizzleTransactionLike>), options);
}
