/**
 * txonce for postgres.js: `txonce(sql)` over a `postgres(...)` instance; the operation gets the
 * `TransactionSql` of `sql.begin(async (sql) => ...)`. Takes the structural subset of
 * postgres.js that it uses; nothing here imports `postgres`.
 */
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { keepingWorkError } from "./work-error.js";
import { refusingEndedTransactions } from "./ended-transactions.js";

/** The transaction modes `sql.begin(options, ...)` takes, as fields. */
export interface PostgresTransactionOptions {
  /** Isolation level of the transaction. (Default: the database's, `read committed`) */
  isolationLevel?: "read uncommitted" | "read committed" | "repeatable read" | "serializable";
  /** `read only` or `read write`. (Default: the database's, `read write`) */
  accessMode?: "read only" | "read write";
  /** `DEFERRABLE` (only meaningful for a serializable read-only transaction). (Default: not deferrable) */
  deferrable?: boolean;
}

/** What txonce needs from a postgres.js `TransactionSql` (and from the root `Sql`). */
export interface PostgresTransactionLike {
  unsafe(query: string, parameters?: any[]): PromiseLike<readonly any[]>;
}

/** What txonce needs from a postgres.js `Sql` instance; `Tx` is its `TransactionSql`. */
export interface PostgresSqlLike<Tx> extends PostgresTransactionLike {
  begin(options: string, cb: (sql: Tx) => Promise<unknown>): Promise<unknown>;
}

/** The transaction type of a postgres.js instance: what `sql.begin(async (sql) => ...)` passes. */
export type PostgresTransactionOf<Client> = Client extends {
  begin<T>(options: string, cb: (sql: infer Tx) => T | Promise<T>): Promise<any>;
}
  ? Tx
  : never;

const KIND = "a postgres.js instance (postgres(url, options))";

const ISOLATION_LEVELS = ["read uncommitted", "read committed", "repeatable read", "serializable"] as const;
const ACCESS_MODES = ["read only", "read write"] as const;

/** The options as the mode string of `sql.begin(mode, ...)`, after checking each (postgres.js drops what is not a letter). */
function beginMode(options: PostgresTransactionOptions | undefined): string {
  if (options === undefined) return "";
  const parts: string[] = [];
  const isolationLevel = checkOption(options.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
  const accessMode = checkOption(options.accessMode, ACCESS_MODES, "transaction.accessMode");
  if (isolationLevel !== undefined) parts.push(`isolation level ${isolationLevel}`);
  if (accessMode !== undefined) parts.push(accessMode);
  if (options.deferrable !== undefined) parts.push(options.deferrable ? "deferrable" : "not deferrable");
  return parts.join(" ");
}

/** A {@link Database} over a postgres.js instance. */
export function postgresDatabase<Tx extends PostgresTransactionLike>(sql: PostgresSqlLike<Tx>): Database<Tx, PostgresTransactionOptions> {
  const shape: unknown = sql;
  if (typeof shape !== "function" || typeof (shape as Partial<PostgresSqlLike<Tx>>).begin !== "function" || typeof (shape as Partial<PostgresSqlLike<Tx>>).unsafe !== "function") {
    throw new InvalidArgumentError("sql", `expected ${KIND}, got ${describeValue(sql)}`);
  }
  if (typeof (sql as { savepoint?: unknown }).savepoint === "function") {
    throw new InvalidArgumentError("sql", `expected ${KIND}, got the sql of a transaction: give txonce the instance, and join a transaction with withIdempotencyIn(sql, ...)`);
  }
  const executorOf = (handle: PostgresTransactionLike): SqlExecutor => ({
    query: async (text, params) => (await handle.unsafe(text, [...params])) as Row[],
  });
  return refusingEndedTransactions<Tx, PostgresTransactionOptions>({
    query: executorOf(sql).query,
    sqlFor: executorOf,
    outsideTransaction(tx) {
      if (typeof (tx as { savepoint?: unknown } | null)?.savepoint !== "function") {
        return "this is the postgres.js instance, not a transaction: pass the sql that withIdempotency or sql.begin(async (sql) => ...) gives you";
      }
      return undefined;
    },
    // A transaction handle used after its end runs its statements outside any transaction in
    // postgres.js: txonce refuses the handles of the transactions it opened (createTxonce), but
    // cannot tell for one the application opened with sql.begin.
    transaction: (work, options) =>
      keepingWorkError(async (guard) => (await sql.begin(beginMode(options), (tx) => guard(() => work(tx, executorOf(tx))))) as Awaited<ReturnType<typeof work>>),
  });
}

export type TxonceOptions = TxonceOptionsOver<PostgresTransactionOptions>;

/**
 * Makes retried operations safe on a postgres.js instance. The operation gets the transaction's
 * `TransactionSql`.
 *
 * @example
 * const { withIdempotency } = txonce(sql);
 * await withIdempotency(key, async (sql) => (await sql`INSERT INTO charges ${sql(charge)} RETURNING *`)[0]);
 */
export function txonce<Client extends PostgresSqlLike<any>>(
  sql: Client,
  options: TxonceOptions = {},
): Txonce<PostgresTransactionOf<Client>, PostgresTransactionOptions> {
  return createTxonce(postgresDatabase(sql as PostgresSqlLike<PostgresTransactionOf<Client> & PostgresTransactionLike>), options);
}
