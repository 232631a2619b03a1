import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { Database } from "../executor.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import { checkCleanupOptions, runCleanup, type CleanupOptions, type CleanupResult, type PrunableTable } from "./cleanup.js";
import { cleanupTelemetry } from "../telemetry/cleanup.js";
import type { TelemetryOptions } from "../telemetry/options.js";

/** Options of {@link scheduleCleanup}: when to run, what to tell you, and each run's options. */
export interface ScheduleCleanupOptions extends Omit<CleanupOptions, "dryRun" | "signal"> {
  /** Time between the end of one run and the start of the next. (Default: `"1h"`) */
  every?: Duration;
  /** Run once right after scheduling instead of waiting `every` first. (Default: `true`) */
  runOnStart?: boolean;
  /**
   * Called with the error when a run fails; the schedule goes on. (Default: a process warning
   * via `process.emitWarning`)
   */
  onError?: (error: unknown) => void;
  /** Called with the result of every run this process made. (Default: none) */
  onRun?: (result: CleanupResult) => void;
  /** Called when a run was skipped because another process held the cleanup lock. (Default: none) */
  onSkip?: () => void;
}

/** A running schedule. */
export interface CleanupSchedule {
  /**
   * Stops the schedule: no new run starts, a run in progress stops after its current batch, and
   * the returned promise resolves once it has.
   */
  stop(): Promise<void>;
}

/**
 * Runs cleanup every so often in this process. Of all the processes scheduling it against one
 * database, at most one runs at a time: each run holds a PostgreSQL advisory lock (in a
 * transaction of its own, on one connection) while its batches run on others; a process that
 * finds the lock taken skips its turn. The timer never keeps the process alive, and errors go to
 * `onError` instead of crashing the process.
 */
export function scheduleCleanup<TxOptions>(
  db: Database<unknown, TxOptions>,
  tables: readonly PrunableTable[],
  options: ScheduleCleanupOptions = {},
  /** Options for the transaction that holds the lock; it must outlive a whole run. */
  lockTransactionOptions?: (maxDurationMs: number) => TxOptions,
  /** Spans and metrics of the runs, and of the runs skipped (docs/observability.md). (Default: on) */
  telemetryOptions?: TelemetryOptions,
  /** The statements of the tables' schema: the lock is per database and schema. (Default: unqualified) */
  sql: Statements = statementsFor(),
): CleanupSchedule {
  const { every = "1h", runOnStart = true, onError = warn, onRun, onSkip, ...cleanupOptions } = options;
  const everyMs = toMilliseconds(every, "every");
  const { maxDurationMs } = checkCleanupOptions(cleanupOptions);
  for (const [name, hook] of Object.entries({ onError, onRun, onSkip })) {
    if (hook !== undefined && typeof hook !== "function") throw new InvalidArgumentError(name, "expected a function");
  }

  const skipTelemetry = cleanupTelemetry(telemetryOptions);
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  const runOnce = async () => {
    try {
      const result = await db.transaction(async (_tx, inTransaction) => {
        const [row] = await inTransaction.query(sql.tryCleanupLock, []);
        if (!row?.locked) return undefined;
        return runCleanup(db, tables, { ...cleanupOptions, signal: abort.signal }, telemetryOptions, sql);
      }, lockTransactionOptions?.(maxDurationMs));
      if (result) onRun?.(result);
      else {
        skipTelemetry?.skipped();
        onSkip?.();
      }
    } catch (error) {
      try {
        onError(error);
      } catch {
        // A failing error hook must not take the process down either.
      }
    }
  };

  const arm = (delay: number) => {
    if (abort.signal.aborted) return;
    timer = setTimeout(() => {
      running = runOnce().finally(() => {
        running = undefined;
        arm(everyMs);
      });
    }, delay);
    timer.unref();
  };
  arm(runOnStart ? 0 : everyMs);

  return {
    async stop() {
      abort.abort();
      clearTimeout(timer);
      await running;
    },
  };
}

function warn(error: unknown) {
  process.emitWarning(`txonce cleanup failed: ${error instanceof Error ? error.message : String(error)}`, {
    code: "TXONCE_CLEANUP_FAILED",
    detail: error instanceof Error ? error.stack : undefined,
  });
}
