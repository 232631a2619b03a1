import { context, metrics, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { MeterProvider, PeriodicExportingMetricReader, AggregationTemporality } from "@opentelemetry/sdk-metrics";
import { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { outboxTelemetry } from "../src/telemetry/outbox.js";
import type { OutboxMessage } from "../src/outbox/message.js";
trace.setGlobalTracerProvider(new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor({ export: (s, d) => d({ code: 0 }), shutdown: async () => {} })] }));
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
propagation.setGlobalPropagator(new W3CTraceContextPropagator());
metrics.setGlobalMeterProvider(new MeterProvider({ readers: [new PeriodicExportingMetricReader({ exporter: { export: (_m, d) => d({ code: 0 }), shutdown: async () => {}, forceFlush: async () => {}, selectAggregationTemporality: () => AggregationTemporality.CUMULATIVE }, exportIntervalMillis: 1000 })] }));
const t = outboxTelemetry({})!;
const publish = async () => {};
const batch: OutboxMessage[] = Array.from({ length: 100 }, (_, i) => ({
  id: `0197f0aa-0000-7000-8000-${String(i).padStart(12, "0")}`, seq: String(i), topic: "bench.telemetry", key: null, payload: { n: i },
  encodedPayload: "{}", headers: {}, createdAt: new Date(), attempts: 1,
  traceContext: { traceparent: `00-${(i + 1).toString(16).padStart(32, "0")}-${(i + 1).toString(16).padStart(16, "0")}-01` },
}));
const mode = process.env.M ?? "sdk";
const cpu0 = process.cpuUsage();
for (let b = 0; b < 5000; b++) {
  const sends = mode === "off" ? undefined : t.sendBatch("txonce");
  await Promise.all(batch.map(async (m) => {
    const s = sends?.send(m, publish);
    await (s?.published ?? (async () => publish())());
    s?.end();
  }));
  sends?.end();
}
const u = process.cpuUsage(cpu0);
console.log(mode, ((u.user + u.system) / 500000).toFixed(2), "µs/msg");
process.exit(0);
