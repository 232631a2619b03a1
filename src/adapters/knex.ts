/**
 * txonce for Knex on PostgreSQL (`client: "pg"`): `txonce(knex)`; the operation gets Knex's own
 * `Knex.Transaction`. Takes the structural subset of Knex that it uses; nothing here imports
 * `knex`.
 */
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { keepingWorkError } from "./work-error.js";

/** Knex's `TransactionConfig`, the part that shapes the transaction. */
export interface KnexTransactionOptions {
  /** Isolation level of the transaction. (Default: the database's, `read committed` on PostgreSQL) */
  isolationLevel?: "read uncommitted" | "read committed" | "snapshot" | "repeatable read" | "serializable";
  /** Start the transaction `READ ONLY`. (Default: `false`) */
  readOnly?: boolean;
}

/** What txonce needs from a Knex transaction (`Knex.Transaction`). */
export interface KnexTransactionLike {
  raw(sql: string, bindings: readonly unknown[]): PromiseLike<unknown>;
  isTransaction?: boolean;
}

/** What txonce needs from a `Knex` instance; `Tx` is its `Knex.Transaction`. */
export interface KnexLike<Tx> extends KnexTransactionLike {
  transaction<T>(transactionScope: (trx: Tx) => Promise<T> | void, config?: KnexTransactionOptions): Promise<T>;
}

/** The transaction type of a Knex instance: what `knex.transaction(async (trx) => ...)` passes. */
export type KnexTransactionOf<Client> = Client extends {
  transaction<T>(transactionScope: (trx: infer Tx) => Promise<T> | void, config?: any): Promise<T>;
}
  ? Tx
  : never;

const ISOLATION_LEVELS = ["read uncommitted", "read committed", "snapshot", "repeatable read", "serializable"] as const;

const KIND = "a Knex instance on PostgreSQL (knex({ client: \"pg\", ... }))";

/**
 * txonce's `$1`-style SQL in Knex's raw form: `?` placeholders in order (a parameter used twice
 * is bound twice), and any literal `?` escaped.
 */
function toKnex(text: string, params: readonly unknown[]): { sql: string; bindings: unknown[] } {
  const bindings: unknown[] = [];
  const sql = text.replace(/\?/g, "\\?").replace(/\$(\d+)/g, (_, n: string) => {
    bindings.push(params[Number(n) - 1]);
    return "?";
  });
  return { sql, bindings };
}

/** A {@link Database} over a Knex instance. */
export function knexDatabase<Tx extends KnexTransactionLike>(knex: KnexLike<Tx>): Database<Tx, KnexTransactionOptions> {
  const shape: unknown = knex;
  if (typeof shape !== "function" || typeof (shape as Partial<KnexLike<Tx>>).transaction !== "function" || typeof (shape as Partial<KnexLike<Tx>>).raw !== "function") {
    throw new InvalidArgumentError("knex", `expected ${KIND}, got ${describeValue(knex)}`);
  }
  if (knex.isTransaction === true) {
    throw new InvalidArgumentError("knex", `expected ${KIND}, got a Knex transaction: give txonce the instance, and join a transaction with withIdempotencyIn(trx, ...)`);
  }
  const dialect = (knex as { client?: { dialect?: unknown } }).client?.dialect;
  if (dialect !== undefined && dialect !== "postgresql") {
    throw new InvalidArgumentError("knex", `expected ${KIND}, got a Knex instance for ${String(dialect)}`);
  }
  const executorOf = (handle: KnexTransactionLike): SqlExecutor => ({
    query: async (text, params) => {
      const { sql, bindings } = toKnex(text, params);
      return ((await handle.raw(sql, bindings)) as { rows: Row[] }).rows;
    },
  });
  return {
    query: executorOf(knex).query,
    sqlFor: executorOf,
    outsideTransaction(trx) {
      const handle = trx as Partial<KnexTransactionLike> & { isCompleted?: () => boolean };
      if (handle?.isTransaction !== true) {
        return "this is the Knex instance, not a transaction: pass the trx that withIdempotency or knex.transaction(async (trx) => ...) gives you";
      }
      if (handle.isCompleted?.() === true) {
        return "this Knex transaction has already ended (committed or rolled back): pass an open one";
      }
      return undefined;
    },
    transaction: (work, options) => {
      checkOption(options?.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
      return keepingWorkError((guard) => knex.transaction((trx) => guard(() => work(trx, executorOf(trx))), options));
    },
  };
}

export type TxonceOptions = TxonceOptionsOver<KnexTransactionOptions>;

/**
 * Makes retried operations safe on a Knex instance (PostgreSQL). The operation gets Knex's
 * `Knex.Transaction`.
 *
 * @example
 * const { withIdempotency } = txonce(knex);
 * await withIdempotency(key, async (trx) => (await trx("charges").insert(charge).returning("*"))[0]);
 */
export function txonce<Client extends KnexLike<any>>(
  knex: Client,
  options: TxonceOptions = {},
): Txonce<KnexTransactionOf<Client>, KnexTransactionOptions> {
  return createTxonce(knexDatabase(knex as KnexLike<KnexTransactionOf<Client> & KnexTransactionLike>), options);
}
