/**
 * Telemetry of `withIdempotency`: one span per call and three instruments, recorded around the
 * call from what it returns or throws, plus the lock wait the call reports. No span per SQL
 * statement: `@prisma/instrumentation` and `@opentelemetry/instrumentation-pg` emit those, as
 * children of this span.
 */
import type { Counter, Histogram } from "@opentelemetry/api";
import { IdempotencyKeyInUseError, IdempotencyKeyReusedError } from "../errors.js";
import { DURATION_BUCKETS, errorType, Instrumentation, secondsSince, telemetryApi, type Attributes } from "./telemetry.js";
import type { TelemetryOptions } from "./options.js";

/** How a call ended, the `txonce.idempotency.outcome` attribute. */
export type IdempotencyCallOutcome = "executed" | "replayed" | "waited_then_replayed" | "in_use" | "reused_key" | "failed";

/**
 * What a call reports of its waits for another call on the same key, in this process or polled in
 * another: whether it waited, and for how long in all. A wait runs from {@link begin} (the call
 * found the key taken) to {@link end}, and counts only if the call had to wait in between
 * ({@link waiting}): a first poll that finds the record at once is a replay, not a wait.
 */
export class LockWait {
  waited = false;
  ms = 0;
  #since: number | undefined;
  #waiting = false;

  begin(): void {
    this.#since ??= performance.now();
  }

  waiting(): void {
    this.#waiting = true;
  }

  end(): void {
    if (this.#since !== undefined && this.#waiting) {
      this.waited = true;
      this.ms += performance.now() - this.#since;
    }
    this.#since = undefined;
    this.#waiting = false;
  }
}

/** The part of a call's outcome telemetry reads. */
interface Replayable {
  readonly replayed: boolean;
}

/** Wraps calls of `withIdempotency`. */
export interface IdempotencyTelemetry {
  call<R extends Replayable>(
    call: { name: string | undefined; scope: unknown; key: unknown },
    run: (wait: LockWait) => Promise<R>,
  ): Promise<R>;
}

export const IdempotencyAttributes = {
  outcome: "txonce.idempotency.outcome",
  lockWait: "txonce.idempotency.lock_wait.duration",
  operation: "txonce.operation.name",
  key: "txonce.idempotency.key",
  scope: "txonce.idempotency.scope",
} as const;

export const IdempotencyMetrics = {
  calls: "txonce.idempotency.calls",
  duration: "txonce.idempotency.duration",
  lockWait: "txonce.idempotency.lock_wait.duration",
} as const;

interface Instruments {
  calls: Counter;
  duration: Histogram;
  lockWait: Histogram;
}

/** The span's name: a template, never the key. */
const spanName = (name: string | undefined) => (name === undefined ? "withIdempotency" : `withIdempotency ${name}`);

export function idempotencyTelemetry(options: TelemetryOptions | undefined): IdempotencyTelemetry | undefined {
  const api = telemetryApi(options);
  if (!api) return undefined;
  const otel = new Instrumentation<Instruments>(api, options ?? {}, (meter) => ({
    calls: meter.createCounter(IdempotencyMetrics.calls, {
      description: "withIdempotency calls, by outcome.",
      unit: "{call}",
    }),
    duration: meter.createHistogram(IdempotencyMetrics.duration, {
      description: "Duration of withIdempotency calls, waits and the operation included.",
      unit: "s",
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
    lockWait: meter.createHistogram(IdempotencyMetrics.lockWait, {
      description: "Time calls that found their key in use waited for the other call, in this process or another.",
      unit: "s",
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
  }));

  return {
    async call(call, run) {
      if (!otel.active) return run(new LockWait());
      const attributes: Attributes = {};
      if (call.name !== undefined) attributes[IdempotencyAttributes.operation] = call.name;
      const spanAttributes: Attributes = { ...attributes };
      if (otel.recordKeys) {
        if (typeof call.key === "string") spanAttributes[IdempotencyAttributes.key] = call.key;
        if (typeof call.scope === "string") spanAttributes[IdempotencyAttributes.scope] = call.scope;
      }
      const span = otel.tracer.startSpan(spanName(call.name), { kind: api.SpanKind.INTERNAL, attributes: spanAttributes });
      const started = performance.now();
      const wait = new LockWait();
      let outcome: IdempotencyCallOutcome;
      let failed = false;
      let failure: unknown;
      try {
        const result = await api.context.with(api.trace.setSpan(api.context.active(), span), run, undefined, wait);
        outcome = !result.replayed ? "executed" : wait.waited ? "waited_then_replayed" : "replayed";
        return result;
      } catch (error) {
        failed = true;
        failure = error;
        outcome = error instanceof IdempotencyKeyInUseError ? "in_use" : error instanceof IdempotencyKeyReusedError ? "reused_key" : "failed";
        throw error;
      } finally {
        attributes[IdempotencyAttributes.outcome] = outcome!;
        span.setAttribute(IdempotencyAttributes.outcome, outcome!);
        if (wait.waited) span.setAttribute(IdempotencyAttributes.lockWait, wait.ms / 1000);
        // The span of any call that threw is an error; the metrics tell in_use and reused_key
        // apart by outcome, and give the other failures their error.type.
        if (failed) otel.failed(span, failure);
        if (outcome! === "failed") attributes["error.type"] = errorType(failure);
        span.end();
        const instruments = otel.instruments;
        instruments.calls.add(1, attributes);
        instruments.duration.record(secondsSince(started), attributes);
        if (wait.waited) instruments.lockWait.record(wait.ms / 1000, attributes);
      }
    },
  };
}
