/**
 * Telemetry of the outbox, by OpenTelemetry's messaging conventions: `enqueue` writes each message
 * in a `create {topic}` span and stores that span's context with it (the creation context); the
 * relay publishes each message in a `send {topic}` span linked to it, and the publishers carry
 * the creation context in the broker's own headers, where a consumer picks it up
 * ({@link continueTrace} in consumer.ts). Metrics: messages sent (and failed: `error.type`), dead
 * letters, commit-to-publish latency, and the backlog as observable gauges.
 */
import type { Context, Counter, Histogram, ObservableGauge, Span } from "@opentelemetry/api";
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

/** Attribute sets kept for reuse (systems x topics, error types per set); beyond that, made again. */
const ATTRIBUTE_SETS = 1000;

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

  // The metrics' attributes, made once per system and topic (and error type): the SDK hashes the
  // attributes of every record, and a relay records two histograms per message.
  const sendAttributesBy = new Map<string, Attributes>();
  const sendAttributes = (system: string, topic: string): Attributes => {
    const id = `${system}\u0000${topic}`;
    let attributes = sendAttributesBy.get(id);
    if (!attributes) {
      if (sendAttributesBy.size >= ATTRIBUTE_SETS) sendAttributesBy.clear();
      attributes = Object.freeze(messagingAttributes(system, "send", topic));
      sendAttributesBy.set(id, attributes);
    }
    return attributes;
  };
  const failedAttributesBy = new WeakMap<Attributes, Map<string, Attributes>>();
  const failedAttributes = (attributes: Attributes, type: string): Attributes => {
    let byType = failedAttributesBy.get(attributes);
    if (!byType) failedAttributesBy.set(attributes, (byType = new Map()));
    let failed = byType.get(type);
    if (!failed) {
      if (byType.size >= ATTRIBUTE_SETS) byType.clear();
      failed = Object.freeze({ ...attributes, "error.type": type });
      byType.set(type, failed);
    }
    return failed;
  };
  // Messages sent, added up per attribute set and added to the counter once per turn of the event
  // loop: a batch published at once is one add, not one per message.
  let counts = new Map<Counter, Map<Attributes, number>>();
  let countScheduled = false;
  const flushCounts = () => {
    countScheduled = false;
    const added = counts;
    counts = new Map();
    for (const [counter, byAttributes] of added) for (const [attributes, n] of byAttributes) counter.add(n, attributes);
  };
  const count = (counter: Counter, attributes: Attributes) => {
    let byAttributes = counts.get(counter);
    if (!byAttributes) counts.set(counter, (byAttributes = new Map()));
    byAttributes.set(attributes, (byAttributes.get(attributes) ?? 0) + 1);
    if (!countScheduled) {
      countScheduled = true;
      setImmediate(flushCounts);
    }
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
      const attributes = sendAttributes(system, message.topic);
      const creation = creationContext(api, message.traceContext);
      // A root span: the relay's loop runs in whatever context start() was called in, which has
      // nothing to do with the message. The trace it belongs to is the link's.
      const span = otel.tracer.startSpan(
        spanName("send", message.topic),
        {
          kind: creation ? SpanKind.CLIENT : SpanKind.PRODUCER,
          attributes: {
            [MessagingAttributes.system]: system,
            [MessagingAttributes.operationName]: "send",
            [MessagingAttributes.operationType]: "send",
            [MessagingAttributes.destination]: message.topic,
            [MessagingAttributes.messageId]: message.id,
          },
          links: creation ? [{ context: creation }] : undefined,
          root: true,
        },
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
          if (error === undefined) {
            instruments.sendDuration.record(secondsSince(started), attributes);
            instruments.latency.record(Math.max(0, Date.now() - message.createdAt.getTime()) / 1000, attributes);
            count(instruments.sent, attributes);
          } else {
            const failed = failedAttributes(attributes, errorType(error));
            instruments.sendDuration.record(secondsSince(started), failed);
            count(instruments.sent, failed);
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
