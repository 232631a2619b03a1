/**
 * `txonce/publishers/nats`: publishes outbox messages to NATS JetStream and waits for the
 * stream's acknowledgement. The JetStream `msgID` (`Nats-Msg-Id`) is the outbox message id, so
 * the server drops a redelivery within the stream's `duplicate_window` (default 2 minutes), e.g.
 * after a relay crashed between publishing and marking. Needs `@nats-io/transport-node` and
 * `@nats-io/jetstream` (optional peer dependencies, the current official NATS client for Node).
 *
 * @example
 * const publisher = natsPublisher({ servers: "nats://localhost:4222" });
 * const relay = outbox.relay({ publisher });
 */
import { InvalidArgumentError } from "../../errors.js";
import type { OutboxMessage, Publisher } from "../message.js";
import { headersOf, lazy, PublishRejectedError, txonceFormat, type WireFormat } from "./common.js";

export { jsonFormat, txonceFormat, TXONCE_CONTENT_TYPE, MetadataHeaders, PublishRejectedError, type WireFormat } from "./common.js";

/** The subset of NATS message headers (`MsgHdrs`) the publisher uses. */
export interface NatsHeadersLike {
  set(name: string, value: string): void;
}

/** The subset of a JetStream client (`jetstream(nc)` of `@nats-io/jetstream`) the publisher uses. */
export interface JetStreamClientLike {
  publish(
    subject: string,
    payload: string | Uint8Array,
    /**
     * `headers` is the library's own `MsgHdrs`, made with its `headers()`; typed `never` here so
     * that the real client, whose `MsgHdrs` has more members than the publisher uses, matches.
     */
    options: { msgID: string; headers: never; timeout?: number },
  ): Promise<{ stream: string; seq: number; duplicate: boolean }>;
}

/** Options of {@link natsPublisher}: give it `servers` or `jetstream`. */
export interface NatsPublisherOptions {
  /**
   * Connect to these servers (`"nats://host:4222"` or a list). The publisher owns that
   * connection: it connects on the first publish (again after the connection closed for good)
   * and `close()` drains and closes it. (Default: none; one of `servers` and `jetstream` is required)
   */
  servers?: string | string[];
  /** More options for that connection (`user`, `pass`, `token`, `name`, ...), as `connect()` takes them. (Default: none) */
  connectOptions?: Record<string, unknown>;
  /**
   * Use your own JetStream client instead (`jetstream(nc)`); `close()` leaves its connection
   * alone. (Default: none)
   */
  jetstream?: JetStreamClientLike;
  /**
   * The subject of a message. A stream must capture it, or the publish fails (no responders) and
   * the relay retries. (Default: its `topic`)
   */
  subject?: (message: OutboxMessage) => string;
  /** How long to wait for the stream's acknowledgement, in ms. (Default: the client's, 5000) */
  ackTimeout?: number;
  /** How the payload is written; its content type goes in a `content-type` header. (Default: {@link txonceFormat}) */
  format?: WireFormat;
}

/** A {@link Publisher} for NATS JetStream, with `close()`. */
export interface NatsPublisher extends Publisher {
  close(): Promise<void>;
}

interface NatsConnectionLike {
  closed(): Promise<unknown>;
  drain(): Promise<void>;
}

/**
 * A publisher that sends each message to `subject(message)` with `msgID` = the message id,
 * headers = its headers plus `txonce-message-id`, `txonce-topic`, `txonce-key` and
 * `content-type`, and resolves on the stream's acknowledgement (also when the server reports a
 * duplicate: it already has the message).
 */
export function natsPublisher(options: NatsPublisherOptions): NatsPublisher {
  const { servers, jetstream: givenClient } = options;
  if ((servers === undefined) === (givenClient === undefined)) {
    throw new InvalidArgumentError("options", "expected exactly one of servers and jetstream");
  }
  const subjectOf = options.subject ?? ((message: OutboxMessage) => message.topic);
  const format = options.format ?? txonceFormat;
  let closed = false;

  const library = lazy(async () => {
    const transport = (await import("@nats-io/transport-node")) as unknown as {
      headers(): NatsHeadersLike;
      connect(options: Record<string, unknown>): Promise<NatsConnectionLike>;
    };
    return transport;
  });
  const own = lazy(async () => {
    const transport = await library.get();
    const { jetstream } = (await import("@nats-io/jetstream")) as unknown as { jetstream(nc: NatsConnectionLike): JetStreamClientLike };
    const nc = await transport.connect({ ...options.connectOptions, servers });
    const self = own.current();
    // The client reconnects by itself; closed() resolves only once it gave up (or was closed).
    void nc.closed().then(() => own.reset(self));
    return { nc, js: jetstream(nc) };
  });

  return {
    system: "nats",
    async publish(message) {
      if (closed) throw new PublishRejectedError("the NATS publisher is closed", message.id);
      const subject = subjectOf(message);
      const body = format.encode(message);
      const { headers } = await library.get();
      const js = givenClient ?? (await own.get()).js;
      const h = headers();
      for (const [name, value] of Object.entries(headersOf(message))) h.set(name, value);
      h.set("content-type", format.contentType);
      await js.publish(subject, body, {
        msgID: message.id,
        headers: h as never,
        ...(options.ackTimeout === undefined ? {} : { timeout: options.ackTimeout }),
      });
    },
    async close() {
      closed = true;
      const connection = own.current();
      own.reset();
      await connection?.then(({ nc }) => nc.drain()).catch(() => {});
    },
  };
}
