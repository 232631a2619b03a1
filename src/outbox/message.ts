import type { Duration } from "../duration.js";

/** A message to enqueue. */
export interface OutboxMessageInput<Payload = unknown> {
  /** Where it goes: an exchange/routing key, a subject, a stream, a URL path; publishers decide. */
  topic: string;
  /** The content, stored with txonce's codec: anything a result may hold (`Date`, `BigInt`, ...). */
  payload: Payload;
  /**
   * Ordering key: messages with the same key are published one at a time, in commit order, and a
   * failing one holds back only its own key. Use the aggregate's id (order id, account id).
   * (Default: none, no ordering)
   */
  key?: string;
  /** String headers, passed to the publisher. (Default: none) */
  headers?: Record<string, string>;
  /** Publish no earlier than this long after commit. (Default: `0`) */
  delay?: Duration;
}

/** A message as the relay hands it to a publisher. */
export interface OutboxMessage<Payload = unknown> {
  /** Time-ordered UUID v7. Consumers use it as their idempotency key. */
  readonly id: string;
  /** Enqueue order (commit order within a key), as a decimal string. */
  readonly seq: string;
  readonly topic: string;
  readonly key: string | null;
  /** The decoded payload. */
  readonly payload: Payload;
  /** The payload as stored: txonce's codec text, which `codec.decode` turns back into `payload`. */
  readonly encodedPayload: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly createdAt: Date;
  /** This attempt's number, from 1. */
  readonly attempts: number;
  /**
   * The trace context of the code that enqueued the message (W3C `traceparent` and `tracestate`,
   * as the registered OpenTelemetry propagator wrote it), for the publisher to carry in the
   * broker's headers; empty when nothing was traced (the relay always sets it; it is optional for
   * messages made by hand, e.g. in a publisher's tests). See docs/observability.md.
   */
  readonly traceContext?: Readonly<Record<string, string>>;
}

/**
 * Sends messages to a broker. `publish` resolves once the broker has the message (e.g. a
 * RabbitMQ publisher confirm, a JetStream ack) and rejects when it does not: that is the
 * per-message success or failure the relay acts on. It may be called concurrently for messages of
 * different keys.
 */
export interface Publisher {
  publish(message: OutboxMessage): Promise<void>;
  /**
   * The broker, as OpenTelemetry's `messaging.system` names it (`"rabbitmq"`, `"kafka"` ...), for
   * the relay's `send` spans and metrics. (Default: `"txonce"`)
   */
  readonly system?: string;
  /** Releases the publisher's connections; the relay does not call it. */
  close?(): Promise<void>;
}

/**
 * Calls `publish(message)` now and returns its promise, a synchronous throw as a rejection. (Not
 * an `async` wrapper: that adds promises per message, each followed by the context manager's
 * hooks when an OpenTelemetry SDK is registered on Node 20-22.)
 */
export function startPublish(publish: Publisher["publish"], message: OutboxMessage): Promise<void> {
  try {
    return Promise.resolve(publish(message));
  } catch (error) {
    return Promise.reject(error as Error);
  }
}
