/**
 * Telemetry of the retention cleanup: a `txonce cleanup` span per run, rows deleted per table,
 * run duration, and the scheduled runs skipped because another replica held the lock.
 */
import type { Counter, Histogram } from "@opentelemetry/api";
import { errorType, Instrumentation, secondsSince, telemetryApi } from "./telemetry.js";
import type { TelemetryOptions } from "./options.js";

export const CleanupMetrics = {
  deleted: "txonce.cleanup.rows.deleted",
  duration: "txonce.cleanup.duration",
  skipped: "txonce.cleanup.runs.skipped",
} as const;

/** The table a count is about (OpenTelemetry's database conventions name it so). */
export const TABLE_ATTRIBUTE = "db.collection.name";

/** What telemetry reads of a run's result. */
interface RunResult {
  readonly finished: boolean;
  readonly dryRun: boolean;
  readonly tables: Readonly<Record<string, { readonly deleted: number }>>;
}

export interface CleanupTelemetry {
  /** Runs one cleanup in its span, and records its duration. */
  run<R extends RunResult>(run: () => Promise<R>): Promise<R>;
  /** A batch deleted `count` rows of `table`. */
  deleted(table: string, count: number): void;
  /** A scheduled run was skipped: another process held the cleanup lock. */
  skipped(): void;
}

interface Instruments {
  deleted: Counter;
  duration: Histogram;
  skipped: Counter;
}

/** Cleanup runs last seconds to minutes. */
const RUN_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600];

export function cleanupTelemetry(options: TelemetryOptions | undefined): CleanupTelemetry | undefined {
  const api = telemetryApi(options);
  if (!api) return undefined;
  const otel = new Instrumentation<Instruments>(api, options ?? {}, (meter) => ({
    deleted: meter.createCounter(CleanupMetrics.deleted, { description: "Rows deleted by cleanup runs, by table.", unit: "{row}" }),
    duration: meter.createHistogram(CleanupMetrics.duration, {
      description: "Duration of cleanup runs.",
      unit: "s",
      advice: { explicitBucketBoundaries: RUN_BUCKETS },
    }),
    skipped: meter.createCounter(CleanupMetrics.skipped, {
      description: "Scheduled cleanup runs skipped because another process held the cleanup lock.",
      unit: "{run}",
    }),
  }));

  return {
    async run(run) {
      if (!otel.active) return run();
      const span = otel.tracer.startSpan("txonce cleanup", { kind: api.SpanKind.INTERNAL });
      const started = performance.now();
      try {
        const result = await api.context.with(api.trace.setSpan(api.context.active(), span), run);
        span.setAttributes({ "txonce.cleanup.finished": result.finished, "txonce.cleanup.dry_run": result.dryRun });
        for (const [table, { deleted }] of Object.entries(result.tables)) span.setAttribute(`txonce.cleanup.deleted.${table}`, deleted);
        if (!result.dryRun) otel.instruments.duration.record(secondsSince(started), { "txonce.cleanup.finished": result.finished });
        return result;
      } catch (error) {
        otel.failed(span, error);
        otel.instruments.duration.record(secondsSince(started), { "error.type": errorType(error) });
        throw error;
      } finally {
        span.end();
      }
    },
    deleted(table, count) {
      if (!otel.active) return;
      otel.instruments.deleted.add(count, { [TABLE_ATTRIBUTE]: table });
    },
    skipped() {
      otel.instruments.skipped.add(1);
    },
  };
}
