/**
 * `txonce/publishers/redis`: appends outbox messages to Redis Streams with `XADD`. Needs `redis`
 * (node-redis, the client Redis maintains; an optional peer dependency) when the publisher
 * connects by itself.
 *
 * Each entry has the fields `id` (the outbox message id: the consumer's idempotency key),
 * `topic`, `key` (when the message has one), `headers` (JSON), `content-type` and `payload`, and
 * `traceparent` / `tracestate` when the message was enqueued in a trace.
 * The entry's stream id is Redis's own (`*`): outbox ids are not in Redis's order across keys.
 *
 * @example
 * const publisher = redisPublisher({ url: "redis://localhost:6379", maxLength: 100_000 });
 * const relay = outbox.relay({ publisher });
 */
import { InvalidArgumentError } from "../../errors.js";
import type { OutboxMessage, Publisher } from "../message.js";
import { headersOf, lazy, PublishRejectedError, txonceFormat, type WireFormat } from "./common.js";

export { jsonFormat, txonceFormat, TXONCE_CONTENT_TYPE, MetadataHeaders, PublishRejectedError, type WireFormat } from "./common.js";

/** The `XADD` options the publisher passes (node-redis' `XAddOptions`). */
export interface RedisXAddOptions {
  TRIM?: { strategy: "MAXLEN"; strategyModifier: "~" | "="; threshold: number };
  IDMP?: { pid: string; iid: string };
}

/** The subset of a node-redis client (`createClient()`, connected) the publisher uses. */
export interface RedisStreamClientLike {
  xAdd(key: string, id: string, message: Record<string, string>, options?: RedisXAddOptions): Promise<unknown>;
}

/** Options of {@link redisPublisher}: give it `url` or `client`. */
export interface RedisPublisherOptions {
  /**
   * Connect to this server (`redis://host:6379/0`). The publisher owns that client: it connects
   * on the first publish, fails publishes at once while disconnected (no offline queue) and
   * `close()` closes it. (Default: none; one of `url` and `client` is required)
   */
  url?: string;
  /**
   * Use your own connected node-redis client instead; `close()` leaves it alone. With its offline
   * queue on (node-redis' default), a publish during an outage waits for the reconnect, up to the
   * relay's `publishTimeout`. (Default: none)
   */
  client?: RedisStreamClientLike;
  /** The stream key of a message. (Default: its `topic`) */
  stream?: (message: OutboxMessage) => string;
  /**
   * Trim each stream to about this many entries on every `XADD` (`MAXLEN ~`). Entries that no
   * consumer group has read yet are trimmed too: size it for your slowest consumer.
   * (Default: none, streams grow until you trim them)
   */
  maxLength?: number;
  /**
   * Redis 8.6 or newer only: send `IDMP <producerId> <message id>`, so the server drops a
   * redelivered message instead of appending it twice. Keep it stable across restarts of the
   * relay. (Default: none; consumers dedupe with the inbox)
   */
  idempotentProducerId?: string;
  /** How the payload is written. (Default: {@link txonceFormat}, the codec text) */
  format?: WireFormat;
}

/** A {@link Publisher} for Redis Streams, with `close()`. */
export interface RedisPublisher extends Publisher {
  close(): Promise<void>;
}

interface OwnedRedisClient extends RedisStreamClientLike {
  connect(): Promise<unknown>;
  close(): Promise<void>;
  destroy(): void;
  on(event: "error", listener: (error: Error) => void): unknown;
}

/**
 * The fields of the stream entry written for a message; its trace context (`traceparent`,
 * `tracestate`) is in `headers` and also in fields of its own, so that `continueTrace` can take
 * the entry's fields as they are.
 */
export function redisStreamFields(message: OutboxMessage, format: WireFormat = txonceFormat): Record<string, string> {
  const body = format.encode(message);
  const fields: Record<string, string> = {
    id: message.id,
    topic: message.topic,
    ...(message.key === null ? {} : { key: message.key }),
    headers: JSON.stringify(headersOf(message)),
    "content-type": format.contentType,
    payload: typeof body === "string" ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("base64"),
  };
  for (const [name, value] of Object.entries(message.traceContext ?? {})) fields[name] ??= value;
  return fields;
}

/** A publisher that `XADD`s each message to `stream(message)` and resolves once Redis replied with the entry id. */
export function redisPublisher(options: RedisPublisherOptions): RedisPublisher {
  const { url, client: givenClient } = options;
  if ((url === undefined) === (givenClient === undefined)) {
    throw new InvalidArgumentError("options", "expected exactly one of url and client");
  }
  const { maxLength, idempotentProducerId } = options;
  if (maxLength !== undefined && (!Number.isInteger(maxLength) || maxLength < 1)) {
    throw new InvalidArgumentError("maxLength", `expected a positive integer, got ${String(maxLength)}`);
  }
  const streamOf = options.stream ?? ((message: OutboxMessage) => message.topic);
  const format = options.format ?? txonceFormat;
  let closed = false;

  const own = lazy(async () => {
    const { createClient } = (await import("redis")) as unknown as {
      createClient(options: Record<string, unknown>): OwnedRedisClient;
    };
    let connected = false;
    const client = createClient({
      url,
      disableOfflineQueue: true,
      socket: {
        // The first connection fails at once (the relay retries the publish with its backoff);
        // a lost one is re-established in the background, and publishes fail meanwhile.
        reconnectStrategy: (retries: number, cause: Error) => (connected ? Math.min(50 * 2 ** retries, 2000) : cause),
      },
    });
    // Without an "error" listener a lost connection would crash the process; node-redis
    // reconnects by itself and publishes fail meanwhile.
    client.on("error", () => {});
    try {
      await client.connect();
      connected = true;
    } catch (error) {
      client.destroy();
      throw error;
    }
    return client;
  });

  return {
    system: "redis",
    async publish(message) {
      if (closed) throw new PublishRejectedError("the Redis publisher is closed", message.id);
      const fields = redisStreamFields(message, format);
      const client = givenClient ?? (await own.get());
      const xAddOptions: RedisXAddOptions = {
        ...(maxLength === undefined ? {} : { TRIM: { strategy: "MAXLEN", strategyModifier: "~", threshold: maxLength } }),
        ...(idempotentProducerId === undefined ? {} : { IDMP: { pid: idempotentProducerId, iid: message.id } }),
      };
      await client.xAdd(streamOf(message), "*", fields, xAddOptions);
    },
    async close() {
      closed = true;
      const client = own.current();
      own.reset();
      await client?.then((c) => c.close()).catch(() => {});
    },
  };
}
