/**
 * txonce for Kysely: `txonce(db)` over a `Kysely<DB>` on PostgreSQL; the operation gets Kysely's
 * own `Transaction<DB>`. Takes the structural subset of Kysely that it uses; the only run-time
 * import is Kysely's `CompiledQuery.raw`, from the `kysely` the application has installed.
 */
import { CompiledQuery } from "kysely";
import { InvalidArgumentError } from "../errors.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { keepingWorkError } from "./work-error.js";
import { refusingEndedTransactions } from "./ended-transactions.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";

/** Kysely's transaction settings, as `db.transaction().setIsolationLevel(...).setAccessMode(...)` takes them. */
export interface KyselyTransactionOptions {
  /** Isolation level of the transaction. (Default: the database's, `read committed` on PostgreSQL) */
  isolationLevel?: "read uncommitted" | "read committed" | "repeatable read" | "serializable" | "snapshot";
  /** `read only` or `read write`. (Default: the database's, `read write`) */
  accessMode?: "read only" | "read write";
}

/** What txonce needs from a Kysely transaction (`Transaction<DB>`). */
export interface KyselyTransactionLike {
  readonly isTransaction: boolean;
  executeQuery<R>(query: CompiledQuery<R>): Promise<{ rows: R[] }>;
  withoutPlugins(): KyselyTransactionLike;
}

/** A transaction builder whose `execute` passes `Tx` (`TransactionBuilder<DB>`). */
export interface KyselyTransactionBuilderLike<Tx> {
  setIsolationLevel(isolationLevel: NonNullable<KyselyTransactionOptions["isolationLevel"]>): KyselyTransactionBuilderLike<Tx>;
  setAccessMode(accessMode: NonNullable<KyselyTransactionOptions["accessMode"]>): KyselyTransactionBuilderLike<Tx>;
  execute<T>(callback: (trx: Tx) => Promise<T>): Promise<T>;
}

/** What txonce needs from a `Kysely<DB>`; `Tx` is its `Transaction<DB>`. */
export interface KyselyLike<Tx> extends KyselyTransactionLike {
  transaction(): KyselyTransactionBuilderLike<Tx>;
}

/** The transaction type of a Kysely instance: what `db.transaction().execute(async (trx) => ...)` passes. */
export type KyselyTransactionOf<Client> = Client extends { transaction(): { execute<T>(callback: (trx: infer Tx) => Promise<T>): Promise<T> } }
  ? Tx
  : never;

const ISOLATION_LEVELS = ["read uncommitted", "read committed", "repeatable read", "serializable", "snapshot"] as const;
const ACCESS_MODES = ["read only", "read write"] as const;

const KIND = "a Kysely instance (new Kysely<DB>({ dialect: new PostgresDialect(...) }))";

/**
 * A {@link Database} over a Kysely instance. txonce's statements run without the instance's
 * plugins (a `CamelCasePlugin` would rename the columns txonce reads).
 */
export function kyselyDatabase<Tx extends KyselyTransactionLike>(
  db: KyselyLike<Tx>,
): Database<Tx, KyselyTransactionOptions> {
  const shape = db as Partial<KyselyLike<Tx>> | null;
  if (typeof shape !== "object" || shape === null || typeof shape.transaction !== "function" || typeof shape.executeQuery !== "function") {
    throw new InvalidArgumentError("db", `expected ${KIND}, got ${describeValue(db)}`);
  }
  if (shape.isTransaction === true) {
    throw new InvalidArgumentError("db", `expected ${KIND}, got a Kysely Transaction: give txonce the instance, and join a transaction with withIdempotencyIn(trx, ...)`);
  }
  const executorOf = (handle: KyselyTransactionLike): SqlExecutor => {
    const plain = handle.withoutPlugins();
    return { query: async (sql, params) => (await plain.executeQuery<Row>(CompiledQuery.raw(sql, [...params]))).rows };
  };
  const root = executorOf(db);
  return refusingEndedTransactions<Tx, KyselyTransactionOptions>({
    query: root.query,
    sqlFor: executorOf,
    outsideTransaction(tx) {
      const handle = tx as Partial<KyselyTransactionLike> & { isCommitted?: unknown; isRolledBack?: unknown };
      if (handle?.isTransaction !== true) {
        return "this is the Kysely instance, not a transaction: pass the trx that withIdempotency or db.transaction().execute(async (trx) => ...) gives you";
      }
      // A ControlledTransaction says whether it ended; a Transaction used after its callback
      // refuses every query itself, before anything is sent.
      if (handle.isCommitted === true || handle.isRolledBack === true) {
        return "this Kysely transaction has already ended (committed or rolled back): pass an open one";
      }
      return undefined;
    },
    transaction(work, options) {
      const isolationLevel = checkOption(options?.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
      const accessMode = checkOption(options?.accessMode, ACCESS_MODES, "transaction.accessMode");
      let builder = db.transaction();
      if (isolationLevel !== undefined) builder = builder.setIsolationLevel(isolationLevel);
      if (accessMode !== undefined) builder = builder.setAccessMode(accessMode);
      return keepingWorkError((guard) => builder.execute((trx) => guard(() => work(trx, executorOf(trx)))));
    },
  });
}

export type TxonceOptions = TxonceOptionsOver<KyselyTransactionOptions>;

/**
 * Makes retried operations safe on a Kysely instance (PostgreSQL dialect). The operation gets
 * Kysely's `Transaction<DB>`.
 *
 * @example
 * const { withIdempotency } = txonce(db);
 * await withIdempotency(key, (trx) => trx.insertInto("charges").values(charge).returningAll().executeTakeFirstOrThrow());
 */
export function txonce<Client extends KyselyLike<any>>(
  db: Client,
  options: TxonceOptions = {},
): Txonce<KyselyTransactionOf<Client>, KyselyTransactionOptions> {
  return createTxonce(kyselyDatabase(db as KyselyLike<KyselyTransactionOf<Client> & KyselyTransactionLike>), options);
}
