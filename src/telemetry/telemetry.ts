/**
 * What every part of txonce's telemetry shares: the options, the tracer, the instruments (made
 * again when the application registers another meter provider), and how an error is recorded.
 * docs/observability.md lists what is emitted.
 */
import type { Attributes, Meter, MeterProvider, Span, Tracer, TracerProvider } from "@opentelemetry/api";
import type { TelemetryOptions } from "./options.js";
import { otelApi, scopeVersion, SCOPE_NAME, type OtelApi } from "./otel.js";

export type { TelemetryOptions };

/** The bucket boundaries OpenTelemetry's messaging conventions advise for durations, in seconds. */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/** The tracer and meter of one part of txonce, with the API they come from. */
export class Instrumentation<Instruments> {
  readonly recordKeys: boolean;
  #tracerProvider: TracerProvider | undefined;
  #tracer: Tracer | undefined;
  #meterProvider: MeterProvider | undefined;
  #meter: Meter | undefined;
  #instruments: Instruments | undefined;
  #metering = false;

  constructor(
    readonly api: OtelApi,
    options: TelemetryOptions,
    private readonly createInstruments: (meter: Meter) => Instruments,
  ) {
    this.recordKeys = options.recordKeys === true;
  }

  /**
   * The tracer of the provider registered now. Looked up on each use (one property read when it
   * has not changed): a tracer taken before an SDK is registered, or after it was replaced, would
   * stay a no-op.
   */
  get tracer(): Tracer {
    const provider = this.api.trace.getTracerProvider();
    if (provider !== this.#tracerProvider || !this.#tracer) {
      this.#tracerProvider = provider;
      this.#tracer = provider.getTracer(SCOPE_NAME, scopeVersion());
    }
    return this.#tracer;
  }

  /**
   * The instruments of the meter provider registered now, made again when it changes: unlike the
   * tracer provider, the global meter provider has no proxy, so instruments made before an SDK is
   * registered would stay no-ops.
   */
  get instruments(): Instruments {
    this.#refresh();
    return this.#instruments!;
  }

  /** The meter that made {@link instruments} (observable callbacks are added on it). */
  get meter(): Meter {
    this.#refresh();
    return this.#meter!;
  }

  #refresh() {
    const provider = this.api.metrics.getMeterProvider();
    if (provider !== this.#meterProvider || !this.#instruments) {
      this.#meterProvider = provider;
      this.#meter = provider.getMeter(SCOPE_NAME, scopeVersion());
      this.#metering = this.#meter !== this.api.createNoopMeter();
      this.#instruments = this.createInstruments(this.#meter);
    }
  }

  /**
   * Whether an SDK is registered (a tracer provider or a meter provider): when neither is, the
   * callers skip their spans and metrics altogether rather than make no-op ones. Two reads of
   * the API's registry.
   */
  get active(): boolean {
    const tracers = this.api.trace.getTracerProvider();
    if (!(tracers instanceof this.api.ProxyTracerProvider) || tracers.getDelegate() !== noopTracerProvider(this.api)) return true;
    this.#refresh();
    return this.#metering;
  }

  /** Marks a span failed with `error`: status, `error.type` and the exception event. */
  failed(span: Span, error: unknown): void {
    span.setAttribute("error.type", errorType(error));
    if (error instanceof Error) span.recordException(error);
    span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
  }
}

let noopTracer: { api: OtelApi; provider: TracerProvider } | undefined;

/**
 * The no-op provider that the API's proxy (what `trace.getTracerProvider()` returns) delegates to
 * while no SDK is registered.
 */
function noopTracerProvider(api: OtelApi): TracerProvider {
  if (noopTracer?.api !== api) noopTracer = { api, provider: new api.ProxyTracerProvider().getDelegate() };
  return noopTracer.provider;
}

/** The API when telemetry is on and `@opentelemetry/api` is installed, else `undefined`. */
export function telemetryApi(options: TelemetryOptions | undefined): OtelApi | undefined {
  if (options?.enabled === false) return undefined;
  return otelApi();
}

/** `error.type`: the error's class name (a low-cardinality value), `_OTHER` for a non-error. */
export function errorType(error: unknown): string {
  return error instanceof Error ? error.constructor.name : "_OTHER";
}

/** Seconds since `start` (a `performance.now()` reading). */
export const secondsSince = (start: number) => (performance.now() - start) / 1000;

export type { Attributes };
