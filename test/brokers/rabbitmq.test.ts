/**
 * The RabbitMQ publisher against a real broker (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672),
 * consumed with amqplib itself; and the end-to-end proof with the inbox. Skipped with a loud
 * warning when the broker does not answer, failed instead under TXONCE_REQUIRE_BROKERS=1.
 */
import amqplib from "amqplib";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import type { OutboxMessage } from "../../src/index.js";
import { jsonFormat, PublishRejectedError, rabbitmqPublisher, type AmqpConnectionLike } from "../../src/outbox/publishers/rabbitmq.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { brokerAvailable, endToEnd, expectRetriedWhileUnreachable, uniqueName, until } from "./support.js";

const url = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const available = await brokerAvailable("RabbitMQ", "RABBITMQ_URL", url, async () => {
  const connection = await amqplib.connect(url);
  await connection.close();
});

// The structural types match the real client.
const _connection: AmqpConnectionLike = null as unknown as amqplib.ChannelModel;

describe.skipIf(!available)("RabbitMQ publisher", () => {
  let db: TestDatabase;
  let connection: amqplib.ChannelModel;
  let channel: amqplib.Channel;
  beforeAll(async () => {
    db = await createTestDatabase();
    connection = await amqplib.connect(url);
    channel = await connection.createChannel();
  });
  afterAll(async () => {
    await connection?.close();
    await db?.drop();
  });

  /** A fresh topic exchange with a queue bound to `pattern`, consumed into `received`. */
  async function exchangeWithQueue(pattern = "#") {
    const exchange = uniqueName("txonce_test");
    await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: true });
    const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, pattern);
    const received: amqplib.ConsumeMessage[] = [];
    await channel.consume(queue, (m) => m && received.push(m), { noAck: true });
    return { exchange, queue, received };
  }

  test("a relay publishes each message with its id, headers, content type and persistence; the body decodes to the payload", async () => {
    const { exchange, received } = await exchangeWithQueue();
    const t = txonce(db.prisma);
    const publisher = rabbitmqPublisher({ url, exchange });
    const relay = t.outbox.relay({ publisher, pollInterval: 20 });
    await relay.start();
    try {
      const payload = { orderId: 42, total: 19.99, at: new Date("2026-03-01T12:00:00Z"), big: 2n ** 70n, tags: new Set(["a"]) };
      const id = await db.prisma.$transaction((tx) =>
        t.outbox.enqueue(tx, { topic: "orders.created", key: "order-42", payload, headers: { "x-trace": "trace-1" } }),
      );
      await until(() => received.length === 1);
      const [m] = received;
      expect(m!.fields.routingKey).toBe("orders.created");
      expect(m!.fields.exchange).toBe(exchange);
      expect(m!.properties).toMatchObject({
        messageId: id,
        contentType: "application/vnd.txonce+json",
        deliveryMode: 2,
        type: "orders.created",
        headers: { "x-trace": "trace-1", "txonce-message-id": id, "txonce-topic": "orders.created", "txonce-key": "order-42" },
      });
      expect(typeof m!.properties.timestamp).toBe("number");
      expect(t.codec.decode(m!.content.toString("utf8"))).toStrictEqual(payload);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("jsonFormat sends plain JSON; routingKey and exchange can be functions of the message", async () => {
    const { exchange, received } = await exchangeWithQueue("custom.#");
    const t = txonce(db.prisma);
    const publisher = rabbitmqPublisher({ url, exchange: () => exchange, routingKey: (m) => `custom.${m.topic}`, format: jsonFormat, persistent: false });
    const relay = t.outbox.relay({ publisher, pollInterval: 20 });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "plain", payload: { n: 1, s: "x" } }));
      await until(() => received.length === 1);
      expect(received[0]!.fields.routingKey).toBe("custom.plain");
      expect(received[0]!.properties.contentType).toBe("application/json");
      expect(received[0]!.properties.deliveryMode).toBe(1);
      expect(JSON.parse(received[0]!.content.toString())).toEqual({ n: 1, s: "x" });
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("an exchange that does not exist fails the publish; the relay retries and delivers once it exists", async () => {
    const exchange = uniqueName("txonce_missing");
    const t = txonce(db.prisma);
    const publisher = rabbitmqPublisher({ url, exchange });
    const failures: { message: OutboxMessage; error: unknown }[] = [];
    const relay = t.outbox.relay({
      publisher,
      pollInterval: 20,
      backoff: { initial: 50, max: 100 },
      onFailed: (message, error) => failures.push({ message, error }),
    });
    await relay.start();
    try {
      const id = await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "late.exchange", payload: "hello" }));
      await until(() => failures.length >= 2); // and the channel the broker closed was opened again
      expect(failures[0]!.message.id).toBe(id);
      expect(failures[0]!.error).toBeInstanceOf(PublishRejectedError);
      // The broker's own reason, not amqplib's bare "channel closed".
      expect((failures[0]!.error as Error).message).toBe(
        `RabbitMQ did not confirm the message (exchange "${exchange}", routing key "late.exchange"): ` +
          `Channel closed by server: 404 (NOT-FOUND) with message "NOT_FOUND - no exchange '${exchange}' in vhost '/'" ` +
          `(declare the exchange before publishing, e.g. channel.assertExchange("${exchange}", "topic"), or publish to amq.topic)`,
      );

      await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: true });
      const { queue } = await channel.assertQueue("", { exclusive: true });
      await channel.bindQueue(queue, exchange, "#");
      const received: amqplib.ConsumeMessage[] = [];
      await channel.consume(queue, (m) => m && received.push(m), { noAck: true });
      await until(() => received.length === 1);
      expect(received[0]!.properties.messageId).toBe(id);
      await until(async () => (await db.pool.query("SELECT published_at FROM txonce_outbox_messages WHERE id = $1", [id])).rows[0].published_at !== null);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("mandatory: an unroutable message fails the publish instead of being dropped", async () => {
    const { exchange, received } = await exchangeWithQueue("routed.#");
    const t = txonce(db.prisma);
    const publisher = rabbitmqPublisher({ url, exchange, mandatory: true });
    const failed: string[] = [];
    const published: string[] = [];
    const relay = t.outbox.relay({
      publisher,
      pollInterval: 20,
      backoff: { initial: "1h" },
      onFailed: (m, error) => failed.push(`${m.topic}: ${(error as Error).message}`),
      onPublished: (ms) => published.push(...ms.map((m) => m.topic)),
    });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) =>
        t.outbox.enqueueMany(tx, [
          { topic: "routed.yes", payload: 1 },
          { topic: "nobody.listens", payload: 2 },
        ]),
      );
      await until(() => failed.length === 1 && published.length === 1);
      expect(published).toEqual(["routed.yes"]);
      expect(failed[0]).toMatch(/^nobody\.listens: .*unroutable/);
      expect(received.map((m) => m.fields.routingKey)).toEqual(["routed.yes"]);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("an unreachable broker: every message's publish fails and is retried; nothing is marked", () =>
    expectRetriedWhileUnreachable(db, rabbitmqPublisher({ url: "amqp://guest:guest@127.0.0.1:1" }), "%ECONNREFUSED%"));

  test("on a connection you own: close() closes only the publisher's channel", async () => {
    const own = await amqplib.connect(url);
    let connectionClosed = false;
    own.on("close", () => (connectionClosed = true));
    try {
      const { exchange, received } = await exchangeWithQueue();
      const publisher = rabbitmqPublisher({ connection: own, exchange });
      const message = { id: "0197f000-0000-7000-8000-000000000001", seq: "1", topic: "t", key: null, payload: 1, encodedPayload: '{"json":1}', headers: {}, createdAt: new Date(), attempts: 1 };
      await publisher.publish(message);
      await until(() => received.length === 1);
      await publisher.close();
      await expect(publisher.publish(message)).rejects.toBeInstanceOf(PublishRejectedError);
      const check = await own.createChannel(); // still open
      await check.close();
      expect(connectionClosed).toBe(false);
    } finally {
      await own.close();
    }
  });

  test("end to end: every change has exactly one effect at the consumer, also when the relay is killed after publishing", async () => {
    const exchange = uniqueName("txonce_e2e");
    await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: false });
    const consumerChannel = await connection.createChannel();
    const { queue } = await consumerChannel.assertQueue(uniqueName("ledger"), { exclusive: true });
    await consumerChannel.bindQueue(queue, exchange, "charges.*");
    await consumerChannel.prefetch(10);
    try {
      await endToEnd({
        db,
        topic: "charges.created",
        publisher: () => rabbitmqPublisher({ url, exchange }),
        processEnv: { PUBLISHER: "rabbitmq", PUBLISHER_OPTIONS: JSON.stringify({ url, exchange }) },
        deliveriesAfterCrash: 2,
        consume: async (handle) => {
          const { consumerTag } = await consumerChannel.consume(queue, (m) => {
            if (!m) return;
            // Ack only after the inbox committed: a consumer crash means a redelivery, never a loss.
            void handle({ id: m.properties.messageId as string, body: m.content.toString("utf8") }).then(
              () => consumerChannel.ack(m),
              () => consumerChannel.nack(m),
            );
          });
          return { stop: async () => void (await consumerChannel.cancel(consumerTag)) };
        },
      });
    } finally {
      await consumerChannel.close();
      await channel.deleteExchange(exchange);
    }
  });
});
