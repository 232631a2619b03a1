import { runCleanup, idempotencyKeysTable, type CleanupOptions, type CleanupResult } from "./cleanup/cleanup.js";
import { scheduleCleanup, type CleanupSchedule, type ScheduleCleanupOptions } from "./cleanup/schedule.js";
import type { Database } from "./executor.js";
import { createIdempotency, type Idempotency, type IdempotencyDefaults, type Operation } from "./idempotency.js";
import { createOutbox, type Outbox, type OutboxOptions } from "./outbox/outbox.js";
import { statementsFor } from "./sql/statements.js";

/** Options of `txonce(client, options)`: the idempotency defaults, plus the outbox's. */
export interface TxonceOptions<TxOptions> extends IdempotencyDefaults<TxOptions> {
  /** The transactional outbox. (Default: published messages kept 7 days) */
  outbox?: OutboxOptions;
  /**
   * The PostgreSQL schema that holds txonce's tables (where its migration was applied, e.g.
   * Prisma's `?schema=app`): every statement names the tables as `"app".txonce_...`. A plain
   * identifier, used quoted (its case is kept). The idempotency keys' advisory locks, the
   * cleanup's lock and the outbox's NOTIFY channel name it too, so that two schemas in one
   * database do not wait for or wake each other: give every process that shares the tables the
   * same value. With Prisma's `PrismaPg` and TypeORM, the client's own schema is the default
   * (docs/adapters.md, "Tables in another schema"). (Default: the client's schema, else none: unqualified
   * names, found on the connection's `search_path`)
   */
  schema?: string;
}

/** Everything `txonce(client)` gives you: idempotent operations and the retention job. */
export interface Txonce<Tx, TxOptions = unknown> extends Idempotency<Tx, TxOptions> {
  /**
   * Deletes expired records in batches until none are left or the time budget is spent. Call it
   * from cron (or use `npx txonce cleanup`); safe to run from several processes at once.
   */
  cleanup(options?: CleanupOptions): Promise<CleanupResult>;
  /**
   * Runs {@link cleanup} on a timer in this process, one replica at a time (advisory lock).
   * Returns a handle whose `stop()` ends it.
   */
  scheduleCleanup(options?: ScheduleCleanupOptions): CleanupSchedule;
  /** The transactional outbox: enqueue messages in your transactions, relay them to a broker. */
  readonly outbox: Outbox<Tx>;
  /**
   * Runs `operation` in a plain transaction of the same client, with no key: for code paths that
   * share a handler with idempotent ones (e.g. an HTTP route where the key is optional).
   */
  transaction<T>(operation: Operation<Tx, T>, options?: { transaction?: TxOptions }): Promise<T>;
}

/** How an adapter tunes the parts that depend on its client. */
export interface AdapterHooks<TxOptions> {
  /** Options for the transaction that holds the cleanup lock for a whole run. */
  lockTransactionOptions?: (maxDurationMs: number) => TxOptions;
}

/** Assembles txonce over a {@link Database}. Adapters call this; users call `txonce(...)`. */
export function createTxonce<Tx, TxOptions>(
  db: Database<Tx, TxOptions>,
  options: TxonceOptions<TxOptions> = {},
  hooks: AdapterHooks<TxOptions> = {},
): Txonce<Tx, TxOptions> {
  const { outbox: outboxOptions, schema, ...idempotencyDefaults } = options;
  const { telemetry } = options;
  const statements = statementsFor(schema);
  const idempotency = createIdempotency(db, idempotencyDefaults, statements);
  const { outbox, prunable } = createOutbox(db, idempotency.codec, outboxOptions, telemetry, statements);
  const tables = [idempotencyKeysTable(statements), prunable];
  return {
    ...idempotency,
    outbox,
    transaction: (operation, transactionOptions) =>
      db.transaction((tx) => operation(tx), transactionOptions?.transaction ?? idempotencyDefaults.transaction),
    cleanup: (cleanupOptions) => runCleanup(db, tables, cleanupOptions, telemetry, statements),
    scheduleCleanup: (scheduleOptions) =>
      scheduleCleanup(db as Database<unknown, TxOptions>, tables, scheduleOptions, hooks.lockTransactionOptions, telemetry, statements),
  };
}
