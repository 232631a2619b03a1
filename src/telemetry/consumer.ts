/**
 * The consumer's side of the outbox's trace: `continueTrace` runs the handling of a received
 * message in a `process {topic}` span that continues the trace of the code that enqueued it.
 */
import type { Histogram } from "@opentelemetry/api";
import { MetadataHeaders } from "../outbox/publishers/common.js";
import { MessagingAttributes, OUTBOX_SYSTEM } from "./outbox.js";
import { DURATION_BUCKETS, errorType, Instrumentation, secondsSince, telemetryApi, type Attributes } from "./telemetry.js";

/**
 * Headers or fields of a received message: a plain object (AMQP `properties.headers`, a Redis
 * stream entry's fields, Node's `req.headers`) or anything with `get(name)` (NATS `MsgHdrs`,
 * fetch's `Headers`, a `Map`).
 */
export type MessageHeaders = Readonly<Record<string, unknown>> | { get(name: string): unknown };

/** A message as the consumer received it, for {@link continueTrace}. */
export interface ReceivedMessage {
  /** Where the publisher put the trace context (`traceparent`, `tracestate`) and txonce's metadata headers. */
  readonly headers: MessageHeaders | null | undefined;
  /**
   * `messaging.system` of the broker it came from (`"rabbitmq"`, `"nats"`, `"redis"`,
   * `"webhook"` ...). (Default: `"txonce"`)
   */
  readonly system?: string;
  /** The topic, for the span's name `process {topic}`. (Default: the `txonce-topic` header) */
  readonly topic?: string;
  /** The outbox message id, `messaging.message.id`. (Default: the `txonce-message-id` header) */
  readonly id?: string;
}

export const ConsumerMetrics = {
  processDuration: "messaging.process.duration",
} as const;

let instrumentation: Instrumentation<{ processDuration: Histogram }> | null | undefined;

function consumerInstrumentation() {
  if (instrumentation === undefined) {
    const api = telemetryApi(undefined);
    instrumentation = api
      ? new Instrumentation(api, {}, (meter) => ({
          processDuration: meter.createHistogram(ConsumerMetrics.processDuration, {
            description: "Duration of the handling of a message received from the outbox's relay.",
            unit: "s",
            advice: { explicitBucketBoundaries: DURATION_BUCKETS },
          }),
        }))
      : null;
  }
  return instrumentation ?? undefined;
}

/**
 * Runs `handler` in a `process {topic}` span (kind CONSUMER) whose parent is the trace context the
 * message carries (the `create` span of its `enqueue`, so producer and consumer are one trace) and
 * which links to it, and records `messaging.process.duration`. Returns what `handler` returns,
 * rethrows what it throws. Without `@opentelemetry/api`, or without trace context in the
 * headers, it still runs `handler` (in a new trace when an SDK is registered).
 *
 * @example
 * await channel.consume("payouts", async (m) => {
 *   if (!m) return;
 *   await continueTrace({ headers: m.properties.headers, system: "rabbitmq" }, () => handle(m));
 *   channel.ack(m);
 * });
 */
export async function continueTrace<T>(message: ReceivedMessage, handler: () => Promise<T> | T): Promise<T> {
  const otel = consumerInstrumentation();
  if (!otel?.active) return handler();
  const { api } = otel;
  const headers = message.headers ?? {};
  const topic = message.topic ?? stringOf(headerOf(headers, MetadataHeaders.topic));
  const id = message.id ?? stringOf(headerOf(headers, MetadataHeaders.id));
  const attributes: Attributes = {
    [MessagingAttributes.system]: message.system ?? OUTBOX_SYSTEM,
    [MessagingAttributes.operationName]: "process",
    [MessagingAttributes.operationType]: "process",
  };
  if (topic !== undefined) attributes[MessagingAttributes.destination] = topic;
  const creation = api.propagation.extract(api.ROOT_CONTEXT, headers, {
    keys: (carrier) => (typeof carrier.get === "function" ? [] : Object.keys(carrier)),
    get: (carrier, key) => stringOf(headerOf(carrier, key)),
  });
  const creationSpan = api.trace.getSpanContext(creation);
  const linked = creationSpan && api.trace.isSpanContextValid(creationSpan) ? creationSpan : undefined;
  const span = otel.tracer.startSpan(
    topic === undefined ? "process" : `process ${topic}`,
    {
      kind: api.SpanKind.CONSUMER,
      attributes: id === undefined ? attributes : { ...attributes, [MessagingAttributes.messageId]: id },
      links: linked ? [{ context: linked }] : [],
    },
    // The message's trace, never the one the consumer loop happens to run in.
    linked ? creation : api.ROOT_CONTEXT,
  );
  const started = performance.now();
  let failure: unknown;
  let failed = false;
  try {
    return await api.context.with(api.trace.setSpan(creation, span), handler);
  } catch (error) {
    failed = true;
    failure = error;
    otel.failed(span, error);
    throw error;
  } finally {
    span.end();
    otel.instruments.processDuration.record(secondsSince(started), failed ? { ...attributes, "error.type": errorType(failure) } : attributes);
  }
}

function headerOf(headers: MessageHeaders, name: string): unknown {
  if (typeof headers.get === "function") return (headers as { get(name: string): unknown }).get(name);
  return (headers as Readonly<Record<string, unknown>>)[name];
}

/** A header's value as text: AMQP may hand a Buffer, HTTP a list, NATS an empty string for none. */
function stringOf(value: unknown): string | undefined {
  if (Array.isArray(value)) value = value[0];
  if (typeof value === "string") return value === "" ? undefined : value;
  if (Buffer.isBuffer(value)) return value.toString("utf8");
  return undefined;
}
