import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { SqlExecutor } from "../executor.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import { withSchemaCheck } from "../sqlstate.js";
import { cleanupTelemetry, type CleanupTelemetry } from "../telemetry/cleanup.js";
import type { TelemetryOptions } from "../telemetry/options.js";

/** Options of one cleanup run. */
export interface CleanupOptions {
  /**
   * Rows deleted per batch. Each batch is one short transaction, so a batch is also the longest
   * a live call can wait on cleanup. (Default: `1000`)
   */
  batchSize?: number;
  /**
   * Time budget of the run: no batch starts after it is spent, and the result says
   * `finished: false`. Milliseconds or a string like `"30s"`. (Default: `"1m"`)
   */
  maxDuration?: Duration;
  /** Only count what would be deleted. (Default: `false`) */
  dryRun?: boolean;
  /** Called after every batch that deleted rows, e.g. to show progress. (Default: none) */
  onBatch?: (progress: CleanupProgress) => void;
  /** Stops the run between batches when aborted; the result says `finished: false`. (Default: none) */
  signal?: AbortSignal;
}

/** Where a run stands after a batch. */
export interface CleanupProgress {
  /** The table the batch ran on, e.g. `txonce_idempotency_keys`. */
  readonly table: string;
  /** Rows this batch deleted. */
  readonly batchDeleted: number;
  /** Rows the run has deleted so far, over all tables. */
  readonly deleted: number;
  /** Batches so far, over all tables. */
  readonly batches: number;
  readonly elapsedMs: number;
}

/** What one table's part of a run did. */
export interface TableCleanupResult {
  /** Rows deleted (in a dry run: rows that would be deleted). */
  readonly deleted: number;
  /** Batches that deleted rows (`0` in a dry run, and when nothing was due). */
  readonly batches: number;
  /** Whether no due rows were left (those held by live traffic aside). */
  readonly finished: boolean;
}

/** What a cleanup run did. */
export interface CleanupResult {
  /** Rows deleted over all tables (in a dry run: rows that would be deleted). */
  readonly deleted: number;
  /** Batches that deleted rows, over all tables. */
  readonly batches: number;
  readonly durationMs: number;
  /** `true` when every table was emptied of due rows within the budget. */
  readonly finished: boolean;
  readonly dryRun: boolean;
  /** The same per table, keyed by table name. */
  readonly tables: Readonly<Record<string, TableCleanupResult>>;
}

/**
 * A table that cleanup prunes: its name and the statements that delete one batch of due rows
 * (`$1` is the batch size, further parameters come from `params`) and count them. The outbox
 * adds its published messages here, with their own retention.
 */
export interface PrunableTable {
  readonly table: string;
  /** Deletes up to `$1` due rows, skipping locked ones; returns one row `{ deleted }`. */
  readonly deleteBatch: string;
  /** Counts due rows; returns one row `{ expired }`. */
  readonly countDue: string;
  readonly params?: readonly unknown[];
}

/** The idempotency keys, with the statements of their schema. */
export const idempotencyKeysTable = (sql: Statements = statementsFor()): PrunableTable => ({
  table: sql.IDEMPOTENCY_TABLE,
  deleteBatch: sql.deleteExpiredKeys,
  countDue: sql.countExpiredKeys,
});

const DEFAULT_BATCH_SIZE = 1000;
const DEFAULT_MAX_DURATION = "1m";
const MAX_BATCH_SIZE = 100_000;

/** Checks cleanup options up front, so a bad one fails before any row is touched. */
export function checkCleanupOptions(options: CleanupOptions): { batchSize: number; maxDurationMs: number } {
  const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_SIZE) {
    throw new InvalidArgumentError("batchSize", `expected an integer from 1 to ${MAX_BATCH_SIZE}, got ${String(batchSize)}`);
  }
  const maxDurationMs = toMilliseconds(options.maxDuration ?? DEFAULT_MAX_DURATION, "maxDuration");
  return { batchSize, maxDurationMs };
}

/**
 * Deletes due rows from each table in batches, each batch its own statement (its own short
 * transaction), until none are left or the time budget is spent. Safe to run from several
 * processes at once: batches skip rows that another batch or live traffic has locked.
 */
export async function runCleanup(
  db: SqlExecutor,
  tables: readonly PrunableTable[],
  options: CleanupOptions = {},
  /** Spans and metrics of the run (docs/observability.md). (Default: on) */
  telemetryOptions?: TelemetryOptions,
  /** The statements of the tables' schema, to name it when they are missing. (Default: unqualified) */
  statements: Statements = statementsFor(),
): Promise<CleanupResult> {
  const { batchSize, maxDurationMs } = checkCleanupOptions(options);
  // telemetry: the run in a span, its duration, and the rows each batch deleted
  const telemetry = cleanupTelemetry(telemetryOptions);
  return telemetry ? telemetry.run(() => clean(db, tables, options, batchSize, maxDurationMs, statements, telemetry)) : clean(db, tables, options, batchSize, maxDurationMs, statements);
}

async function clean(
  db: SqlExecutor,
  tables: readonly PrunableTable[],
  options: CleanupOptions,
  batchSize: number,
  maxDurationMs: number,
  statements: Statements,
  telemetry?: CleanupTelemetry,
): Promise<CleanupResult> {
  const lookup = { db, statements };
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  const results: Record<string, TableCleanupResult> = {};
  let deleted = 0;
  let batches = 0;

  for (const t of tables) {
    if (options.dryRun) {
      const rows = await withSchemaCheck(db.query(t.countDue, [...(t.params ?? [])]), lookup);
      const expired = Number(rows[0]?.expired ?? 0);
      results[t.table] = { deleted: expired, batches: 0, finished: true };
      deleted += expired;
      continue;
    }
    let tableDeleted = 0;
    let tableBatches = 0;
    let finished = false;
    while (elapsed() < maxDurationMs && !options.signal?.aborted) {
      const rows = await withSchemaCheck(db.query(t.deleteBatch, [batchSize, ...(t.params ?? [])]), lookup);
      const batchDeleted = Number(rows[0]?.deleted ?? 0);
      // A statement that found nothing left to delete is how the run learns it is done, not a batch.
      if (batchDeleted > 0) {
        telemetry?.deleted(t.table, batchDeleted);
        tableDeleted += batchDeleted;
        deleted += batchDeleted;
        tableBatches++;
        batches++;
        options.onBatch?.({ table: t.table, batchDeleted, deleted, batches, elapsedMs: elapsed() });
      }
      if (batchDeleted < batchSize) {
        finished = true;
        break;
      }
    }
    results[t.table] = { deleted: tableDeleted, batches: tableBatches, finished };
  }

  return {
    deleted,
    batches,
    durationMs: Math.round(elapsed()),
    finished: Object.values(results).every((r) => r.finished),
    dryRun: options.dryRun ?? false,
    tables: results,
  };
}
