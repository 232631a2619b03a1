/**
 * `txonce/publishers/rabbitmq`: publishes outbox messages to RabbitMQ on a confirm channel, so
 * `publish` resolves only once the broker has acknowledged the message. Needs `amqplib` (an
 * optional peer dependency), loaded only when the publisher connects by itself.
 *
 * @example
 * const publisher = rabbitmqPublisher({ url: "amqp://guest:guest@localhost:5672", exchange: "events" });
 * const relay = outbox.relay({ publisher });
 * await relay.start();
 * // on shutdown
 * await relay.stop();
 * await publisher.close();
 */
import { InvalidArgumentError } from "../../errors.js";
import type { OutboxMessage, Publisher } from "../message.js";
import { headersOf, lazy, PublishRejectedError, txonceFormat, type WireFormat } from "./common.js";

export { jsonFormat, txonceFormat, TXONCE_CONTENT_TYPE, MetadataHeaders, PublishRejectedError, type WireFormat } from "./common.js";

/** The AMQP publish properties this publisher sets (a subset of amqplib's `Options.Publish`). */
export interface AmqpPublishProperties {
  messageId: string;
  contentType: string;
  headers: Record<string, string>;
  persistent: boolean;
  mandatory: boolean;
  timestamp: number;
  type: string;
}

/** The subset of an amqplib `ConfirmChannel` the publisher uses. */
export interface AmqpConfirmChannelLike {
  publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: AmqpPublishProperties,
    callback: (error: unknown) => void,
  ): boolean;
  on(event: "return", listener: (message: { properties: { messageId?: string } }) => void): unknown;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "close", listener: () => void): unknown;
  close(): Promise<void>;
}

/** The subset of an amqplib connection (`ChannelModel`, what `amqplib.connect()` returns) the publisher uses. */
export interface AmqpConnectionLike {
  createConfirmChannel(): Promise<AmqpConfirmChannelLike>;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "close", listener: () => void): unknown;
  close(): Promise<void>;
}

/** Options of {@link rabbitmqPublisher}: give it `url` or `connection`. */
export interface RabbitMqPublisherOptions {
  /**
   * Connect to this broker (`amqp://user:password@host:5672/vhost`). The publisher owns that
   * connection: it connects on the first publish, reconnects after the connection is lost, and
   * `close()` closes it. (Default: none; one of `url` and `connection` is required)
   */
  url?: string;
  /**
   * Use your own amqplib connection instead. The publisher opens a confirm channel of its own on
   * it (again after that channel closes); `close()` closes that channel but never your connection.
   * Reconnecting is yours: once that connection is gone, publishes fail (and the relay retries)
   * until you start a relay with a publisher on a new one. (Default: none)
   */
  connection?: AmqpConnectionLike;
  /**
   * The exchange to publish to: a name, or a function of the message. The default `amq.topic`
   * exists on every RabbitMQ broker; declare and bind your own exchanges and queues (the
   * publisher declares nothing). Publishing to an exchange that does not exist fails the publish.
   * (Default: `"amq.topic"`)
   */
  exchange?: string | ((message: OutboxMessage) => string);
  /** The routing key of a message. (Default: its `topic`) */
  routingKey?: (message: OutboxMessage) => string;
  /**
   * Publish with `mandatory`, and fail the publish when the broker returns the message because
   * no queue is bound for it. Without it, an unroutable message is confirmed and dropped by the
   * broker. (Default: `false`)
   */
  mandatory?: boolean;
  /** Mark messages persistent (delivery mode 2), so durable queues keep them across a broker restart. (Default: `true`) */
  persistent?: boolean;
  /** How the payload is written. (Default: {@link txonceFormat}, the codec text, `application/vnd.txonce+json`) */
  format?: WireFormat;
}

/** A {@link Publisher} for RabbitMQ, with `close()`. */
export interface RabbitMqPublisher extends Publisher {
  close(): Promise<void>;
}

/**
 * A publisher that sends each message with `messageId` set to the outbox message id, its
 * headers plus `txonce-message-id`, `txonce-topic` and `txonce-key`, `type` = topic, `timestamp`
 * = enqueue time, and waits for the broker's confirm (a nack, a closed channel or, with
 * `mandatory`, a returned message rejects).
 */
export function rabbitmqPublisher(options: RabbitMqPublisherOptions): RabbitMqPublisher {
  const { url, connection: givenConnection } = options;
  if ((url === undefined) === (givenConnection === undefined)) {
    throw new InvalidArgumentError("options", "expected exactly one of url and connection");
  }
  const exchangeOf = typeof options.exchange === "function" ? options.exchange : () => (options.exchange as string | undefined) ?? "amq.topic";
  const routingKeyOf = options.routingKey ?? ((message: OutboxMessage) => message.topic);
  const mandatory = options.mandatory ?? false;
  const persistent = options.persistent ?? true;
  const format = options.format ?? txonceFormat;
  let closed = false;

  const ownConnection = lazy(async () => {
    const amqplib = (await import("amqplib")) as unknown as { connect(url: string): Promise<AmqpConnectionLike> };
    const connection = await amqplib.connect(url!);
    const forget = () => ownConnection.reset(current);
    const current = ownConnection.current();
    connection.on("error", forget);
    connection.on("close", forget);
    return connection;
  });
  const connectionOf = () => (givenConnection ? Promise.resolve(givenConnection) : ownConnection.get());

  // Messages the broker returned as unroutable (mandatory); a return comes before the confirm.
  const returned = new Set<string>();
  // Why the broker closed a channel (e.g. `404 (NOT-FOUND) ... no exchange 'x'`): amqplib emits it
  // as the channel's "error", then fails the unconfirmed publishes with a bare "channel closed".
  const closeReasons = new WeakMap<AmqpConfirmChannelLike, Error>();
  const channel = lazy(async () => {
    const connection = await connectionOf();
    const ch = await connection.createConfirmChannel();
    const self = channel.current();
    // Without an "error" listener a channel error would crash the process; the channel is
    // opened again on the next publish.
    ch.on("error", (error) => {
      closeReasons.set(ch, error);
      channel.reset(self);
    });
    ch.on("close", () => channel.reset(self));
    ch.on("return", (message) => {
      if (message.properties.messageId) returned.add(message.properties.messageId);
    });
    return ch;
  });

  return {
    system: "rabbitmq",
    async publish(message) {
      if (closed) throw new PublishRejectedError("the RabbitMQ publisher is closed", message.id);
      const body = format.encode(message);
      const content = typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
      const exchange = exchangeOf(message);
      const routingKey = routingKeyOf(message);
      const ch = await channel.get();
      await new Promise<void>((resolve, reject) => {
        ch.publish(
          exchange,
          routingKey,
          content,
          {
            messageId: message.id,
            contentType: format.contentType,
            headers: headersOf(message),
            persistent,
            mandatory,
            timestamp: Math.floor(message.createdAt.getTime() / 1000),
            type: message.topic,
          },
          (error) => {
            const wasReturned = returned.delete(message.id);
            if (error) {
              const cause = closeReasons.get(ch) ?? error;
              const reason = cause instanceof Error ? cause.message : "negative acknowledgement";
              const hint = (cause as { code?: unknown }).code === 404 && /no exchange/.test(reason)
                ? ` (declare the exchange before publishing, e.g. channel.assertExchange("${exchange}", "topic"), or publish to amq.topic)`
                : "";
              reject(new PublishRejectedError(`RabbitMQ did not confirm the message (exchange "${exchange}", routing key "${routingKey}"): ${reason}${hint}`, message.id, false, { cause }));
            } else if (wasReturned) {
              reject(new PublishRejectedError(`RabbitMQ returned the message as unroutable (exchange "${exchange}", routing key "${routingKey}")`, message.id));
            } else {
              resolve();
            }
          },
        );
      });
    },
    async close() {
      closed = true;
      const ch = channel.current();
      channel.reset();
      await ch?.then((c) => c.close()).catch(() => {});
      if (!givenConnection) {
        const connection = ownConnection.current();
        ownConnection.reset();
        await connection?.then((c) => c.close()).catch(() => {});
      }
    },
  };
}
