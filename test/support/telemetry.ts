/**
 * An OpenTelemetry SDK for tests, registered globally as an application would (NodeTracerProvider:
 * AsyncLocalStorage context, W3C propagator), exporting spans and metrics to memory.
 */
import { metrics, trace, type Attributes, type HrTime } from "@opentelemetry/api";
import { MeterProvider, MetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-node";

/** A reader whose `collect()` the test calls. */
class TestMetricReader extends MetricReader {
  protected override async onForceFlush() {}
  protected override async onShutdown() {}
}

export interface TestTelemetry {
  readonly spans: InMemorySpanExporter;
  /** Finished spans named `name`. */
  spansNamed(name: string): ReadableSpan[];
  /** The data points of a metric, collected now. */
  points(name: string): Promise<DataPoint<number | Histogram>[]>;
  /** Sum of a counter's points (or of a histogram's counts) whose attributes include `match`. */
  total(name: string, match?: Attributes): Promise<number>;
  shutdown(): Promise<void>;
}

export function registerTestTelemetry(): TestTelemetry {
  const spans = new InMemorySpanExporter();
  const tracerProvider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] });
  tracerProvider.register();
  const reader = new TestMetricReader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  metrics.setGlobalMeterProvider(meterProvider);

  const points = async (name: string) => {
    const { resourceMetrics, errors } = await reader.collect();
    if (errors.length > 0) throw errors[0];
    const found = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics).filter((m) => m.descriptor.name === name);
    return found.flatMap((m) => m.dataPoints as DataPoint<number | Histogram>[]);
  };
  return {
    spans,
    spansNamed: (name) => spans.getFinishedSpans().filter((s) => s.name === name),
    points,
    async total(name, match = {}) {
      let sum = 0;
      for (const point of await points(name)) {
        if (!Object.entries(match).every(([k, v]) => point.attributes[k] === v)) continue;
        sum += typeof point.value === "number" ? point.value : point.value.count;
      }
      return sum;
    },
    async shutdown() {
      await tracerProvider.shutdown();
      await meterProvider.shutdown();
      trace.disable();
      metrics.disable();
    },
  };
}

/** The span whose id is `span`'s parent, among `spans`. */
export const parentOf = (span: ReadableSpan, spans: readonly ReadableSpan[]) =>
  spans.find((s) => s.spanContext().spanId === span.parentSpanContext?.spanId);

export const seconds = (t: HrTime) => t[0] + t[1] / 1e9;
