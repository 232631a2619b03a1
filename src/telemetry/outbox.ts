/**
 * Telemetry of the outbox, by OpenTelemetry's messaging conventions: `enqueue` writes each message
 * in a `create {topic}` span and stores that span's context with it (the creation context); the
 * relay publishes each message in a `send {topic}` span linked to it, and the publishers carry
 * the creation context in the broker's own headers, where a consumer picks it up
 * ({@link continueTrace} in consumer.ts). Metrics: messages sent (and failed: `error.type`), dead
 * letters, commit-to-publish latency, and the backlog as observable gauges.
 */
import type { Context, Counter, Histogram, Link, ObservableGauge, Span } from "@opentelemetry/api";
import type { OutboxMessage } from "../outbox/message.js";
import type { OtelApi } from "./otel.js";
import { DURATION_BUCKETS, errorType, Instrumentation, secondsSince, telemetryApi, type Attributes } from "./telemetry.js";
import type { TelemetryOptions } from "./options.js";

/** Attribute names of the messaging conventions that txonce sets. */
export const MessagingAttributes = {
  system: "messaging.system",
  operationName: "messaging.operation.name",
  operationType: "messaging.operation.type",
  destination: "messaging.destination.name",
  messageId: "messaging.message.id",
} as const;

export const OutboxMetrics = {
  /** Publish attempts, with `error.type` when the broker did not take the message. */
  sent: "messaging.client.sent.messages",
  /** Duration of one publish, until the broker's acknowledgement. */
  sendDuration: "messaging.client.operation.duration",
  deadLettered: "txonce.outbox.messages.dead_lettered",
  /** From the message's `created_at` (its transaction's start, database clock) to its publish. */
  latency: "txonce.outbox.publish.latency",
  pending: "txonce.outbox.messages.pending",
  dead: "txonce.outbox.messages.dead",
  oldestAge: "txonce.outbox.oldest_pending.age",
} as const;

/** `messaging.system` of the outbox itself: the `create` spans, and publishers that do not name their broker. */
export const OUTBOX_SYSTEM = "txonce";

/** Latency from commit to publish reaches minutes under backoff: the messaging buckets, then up to an hour. */
const LATENCY_BUCKETS = [...DURATION_BUCKETS, 30, 60, 300, 900, 3600];

/** The backlog the gauges report, as `outbox.backlog()` reads it. */
export interface BacklogReading {
  readonly pending: number;
  readonly dead: number;
  readonly oldestAgeMs: number;
}

/** One publish under way in its `send` span. */
export interface Sending {
  /** The publisher's promise. */
  readonly published: Promise<void>;
  /** Ends the span and records the attempt: published (no error) or failed. */
  end(error?: unknown): void;
}

export interface OutboxTelemetry {
  /**
   * Opens one `create {topic}` span per message, each the creation context stored with its
   * message: returns those contexts (JSON text, or null where nothing is traced) and a function
   * that ends the spans once the messages are written (or failed to be).
   */
  create(messages: readonly { readonly id: string; readonly topic: string }[]): { traceContexts: (string | null)[]; end(error?: unknown): void };
  /**
   * Runs `publish` in a `send {topic}` span, linked to the message's creation context. A message
   * stored without one (enqueued untraced) is handed to `publish` with the send span's context
   * instead, so consumers still get one.
   */
  send(message: OutboxMessage, system: string, publish: (message: OutboxMessage) => Promise<void>): Sending;
  /** A message was dead-lettered (its topic unknown when its payload could not be read). */
  deadLettered(topic: string | undefined, system: string): void;
  /**
   * Reports the backlog gauges from `read()`, one query per metric collection, while at least
   * one relay of this outbox runs; returns the function that stops this relay's share.
   */
  observeBacklog(read: () => Promise<BacklogReading>): () => void;
}

interface Instruments {
  sent: Counter;
  sendDuration: Histogram;
  deadLettered: Counter;
  latency: Histogram;
  pending: ObservableGauge;
  dead: ObservableGauge;
  oldestAge: ObservableGauge;
}

const spanName = (operation: string, topic: string) => `${operation} ${topic}`;

export function outboxTelemetry(options: TelemetryOptions | undefined): OutboxTelemetry | undefined {
  const api = telemetryApi(options);
  if (!api) return undefined;
  const otel = new Instrumentation<Instruments>(api, options ?? {}, (meter) => ({
    sent: meter.createCounter(OutboxMetrics.sent, { description: "Messages the relay attempted to publish (error.type set when the broker did not take them).", unit: "{message}" }),
    sendDuration: meter.createHistogram(OutboxMetrics.sendDuration, {
      description: "Duration of one publish by the relay, until the broker acknowledged it.",
      unit: "s",
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
    deadLettered: meter.createCounter(OutboxMetrics.deadLettered, { description: "Messages dead-lettered by the relay.", unit: "{message}" }),
    latency: meter.createHistogram(OutboxMetrics.latency, {
      description: "Time from a message's enqueue (its transaction's start) to its publish.",
      unit: "s",
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS },
    }),
    pending: meter.createObservableGauge(OutboxMetrics.pending, { description: "Messages waiting to be published (including ones backing off).", unit: "{message}" }),
    dead: meter.createObservableGauge(OutboxMetrics.dead, { description: "Dead-lettered messages in the outbox.", unit: "{message}" }),
    oldestAge: meter.createObservableGauge(OutboxMetrics.oldestAge, { description: "Age of the oldest pending message: the relay's lag.", unit: "s" }),
  }));
  const { context, propagation, trace, SpanKind, ROOT_CONTEXT } = api;

  const messagingAttributes = (system: string, operation: "create" | "send", topic: string | undefined): Attributes => {
    const attributes: Attributes = {
      [MessagingAttributes.system]: system,
      [MessagingAttributes.operationName]: operation,
      [MessagingAttributes.operationType]: operation,
    };
    if (topic !== undefined) attributes[MessagingAttributes.destination] = topic;
    return attributes;
  };

  /** The context as the registered propagator writes it, as JSON text; null when it writes nothing. */
  const injected = (ctx: Context): Record<string, string> | undefined => {
    const carrier: Record<string, string> = {};
    propagation.inject(ctx, carrier);
    for (const _ in carrier) return carrier;
    return undefined;
  };

  let observers = 0;
  let stopObserving: (() => void) | undefined;

  return {
    create(messages) {
      if (!otel.active) return { traceContexts: messages.map(() => null), end() {} };
      const parent = context.active();
      const spans: Span[] = [];
      const traceContexts = messages.map((m) => {
        const attributes = messagingAttributes(OUTBOX_SYSTEM, "create", m.topic);
        attributes[MessagingAttributes.messageId] = m.id;
        const span = otel.tracer.startSpan(spanName("create", m.topic), { kind: SpanKind.PRODUCER, attributes }, parent);
        spans.push(span);
        const carrier = injected(trace.setSpan(parent, span));
        return carrier ? JSON.stringify(carrier) : null;
      });
      return {
        traceContexts,
        end(error) {
          for (const span of spans) {
            if (error !== undefined) otel.failed(span, error);
            span.end();
          }
        },
      };
    },

    send(message, system, publish) {
      if (!otel.active) return { published: (async () => publish(message))(), end() {} };
      const attributes = messagingAttributes(system, "send", message.topic);
      const creation = creationContext(api, message.traceContext);
      const links: Link[] = creation ? [{ context: creation }] : [];
      // A root span: the relay's loop runs in whatever context start() was called in, which has
      // nothing to do with the message. The trace it belongs to is the link's.
      const span = otel.tracer.startSpan(
        spanName("send", message.topic),
        { kind: creation ? SpanKind.CLIENT : SpanKind.PRODUCER, attributes: { ...attributes, [MessagingAttributes.messageId]: message.id }, links, root: true },
        ROOT_CONTEXT,
      );
      const sendContext = trace.setSpan(ROOT_CONTEXT, span);
      let handed = message;
      if (!creation) {
        const carrier = injected(sendContext);
        if (carrier) handed = { ...message, traceContext: carrier };
      }
      const started = performance.now();
      const published = context.with(sendContext, async () => publish(handed));
      return {
        published,
        end(error) {
          const instruments = otel.instruments;
          instruments.sendDuration.record(secondsSince(started), error === undefined ? attributes : { ...attributes, "error.type": errorType(error) });
          if (error === undefined) {
            instruments.sent.add(1, attributes);
            instruments.latency.record(Math.max(0, Date.now() - message.createdAt.getTime()) / 1000, attributes);
          } else {
            instruments.sent.add(1, { ...attributes, "error.type": errorType(error) });
            otel.failed(span, error);
          }
          span.end();
        },
      };
    },

    deadLettered(topic, system) {
      if (!otel.active) return;
      const attributes: Attributes = { [MessagingAttributes.system]: system };
      if (topic !== undefined) attributes[MessagingAttributes.destination] = topic;
      otel.instruments.deadLettered.add(1, attributes);
    },

    observeBacklog(read) {
      if (observers++ === 0) {
        // Bound to the meter provider registered when the first relay starts.
        const { meter } = otel;
        const { pending, dead, oldestAge } = otel.instruments;
        const callback = async (result: { observe(gauge: ObservableGauge, value: number): void }) => {
          const backlog = await read();
          result.observe(pending, backlog.pending);
          result.observe(dead, backlog.dead);
          result.observe(oldestAge, backlog.oldestAgeMs / 1000);
        };
        meter.addBatchObservableCallback(callback, [pending, dead, oldestAge]);
        stopObserving = () => meter.removeBatchObservableCallback(callback, [pending, dead, oldestAge]);
      }
      let stopped = false;
      return () => {
        if (stopped) return;
        stopped = true;
        if (--observers === 0) {
          stopObserving?.();
          stopObserving = undefined;
        }
      };
    },
  };
}

/** The valid span context in a stored creation context, if any. */
function creationContext(api: OtelApi, carrier: Readonly<Record<string, string>> = {}) {
  for (const _ in carrier) {
    const spanContext = api.trace.getSpanContext(api.propagation.extract(api.ROOT_CONTEXT, carrier));
    return spanContext && api.trace.isSpanContextValid(spanContext) ? spanContext : undefined;
  }
  return undefined;
}
