/**
 * What the publishers share: how a message is written on the wire, the metadata names they use,
 * and the error they reject with when a broker refuses a message.
 */
import { TxonceError } from "../../errors.js";
import type { OutboxMessage } from "../message.js";

/**
 * How a message's payload is written on the wire. The default, {@link txonceFormat}, sends the
 * codec text as stored (consumers decode it with `codec.decode`, so `Date`, `BigInt`, `Map` ...
 * come back as they were); {@link jsonFormat} sends plain JSON for consumers that are not txonce.
 */
export interface WireFormat {
  /** The content type the publisher declares (AMQP `contentType`, HTTP `Content-Type`, a stream field). */
  readonly contentType: string;
  /** The body of one message. Throwing fails the publish (the relay retries, then dead-letters). */
  encode(message: OutboxMessage): string | Uint8Array;
}

/** The content type of txonce's codec text. */
export const TXONCE_CONTENT_TYPE = "application/vnd.txonce+json";

/** The codec text as stored (`message.encodedPayload`); decode with `txonce(...).codec.decode(body)`. */
export const txonceFormat: WireFormat = {
  contentType: TXONCE_CONTENT_TYPE,
  encode: (message) => message.encodedPayload,
};

/**
 * Plain `JSON.stringify(message.payload)`, `application/json`. Lossy for what JSON cannot hold
 * (`Date` becomes a string, `Map` an empty object) and fails on `BigInt`: use it for payloads of
 * plain JSON values.
 */
export const jsonFormat: WireFormat = {
  contentType: "application/json",
  encode: (message) => JSON.stringify(message.payload),
};

/**
 * Metadata headers every publisher adds next to the message's own headers (which win on a clash
 * only for names other than these) and its trace context (`traceparent`, `tracestate`). Header
 * names are lower case, as HTTP/2 and NATS tools show them.
 */
export const MetadataHeaders = {
  /** The message id (UUID v7): the consumer's idempotency key. */
  id: "txonce-message-id",
  /** The outbox topic. */
  topic: "txonce-topic",
  /** The ordering key, when the message has one. */
  key: "txonce-key",
} as const;

/**
 * The message's headers, its trace context (W3C `traceparent` and `tracestate` when it was
 * enqueued in a trace: continue it with `continueTrace`) and txonce's metadata headers, each
 * winning over the ones before.
 */
export function headersOf(message: OutboxMessage): Record<string, string> {
  return {
    ...message.headers,
    ...message.traceContext,
    [MetadataHeaders.id]: message.id,
    [MetadataHeaders.topic]: message.topic,
    ...(message.key === null ? {} : { [MetadataHeaders.key]: message.key }),
  };
}

/**
 * A broker, or a webhook endpoint, did not take a message: a negative acknowledgement, an
 * unroutable message, an error status. The relay counts it as a failed attempt.
 */
export class PublishRejectedError extends TxonceError {
  readonly code = "TXONCE_PUBLISH_REJECTED";
  constructor(
    message: string,
    /** The id of the outbox message that was refused. */
    readonly messageId: string,
    /**
     * Whether trying again is pointless (e.g. a webhook's 400): the relay still retries it until
     * `maxAttempts`, so an `onFailed` hook may act on it sooner.
     */
    readonly permanent = false,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A lazily created resource that is created again after it fails or is lost. */
export function lazy<T>(create: () => Promise<T>): { get(): Promise<T>; reset(value?: Promise<T>): void; current(): Promise<T> | undefined } {
  let pending: Promise<T> | undefined;
  return {
    get() {
      if (!pending) {
        const attempt = create();
        pending = attempt;
        // A failed creation is forgotten so the next publish tries again.
        attempt.catch(() => {
          if (pending === attempt) pending = undefined;
        });
      }
      return pending;
    },
    reset(value) {
      if (value === undefined || pending === value) pending = undefined;
    },
    current: () => pending,
  };
}
