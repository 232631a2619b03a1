/**
 * One trace from an HTTP request to the consumer's inbox, through the outbox, the relay and a real
 * RabbitMQ: the request's handler (txonce/express) enqueues a message, the relay publishes it
 * with the RabbitMQ publisher, and a consumer handles it in `continueTrace` with the inbox. The
 * spans are read from the OpenTelemetry SDK's in-memory exporter.
 *
 * The HTTP server span comes from a small middleware that does what
 * `@opentelemetry/instrumentation-http` does for a request (extract `traceparent`, start a SERVER
 * span, run the handler in its context): that instrumentation patches `node:http` when it is
 * loaded before it, which a vitest worker cannot arrange.
 */
import type { AddressInfo } from "node:net";
import { context, propagation, SpanKind, trace } from "@opentelemetry/api";
import amqplib from "amqplib";
import express from "express";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import { idempotency } from "../../src/http/express.js";
import { continueTrace } from "../../src/index.js";
import { rabbitmqPublisher } from "../../src/outbox/publishers/rabbitmq.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { parentOf, registerTestTelemetry, type TestTelemetry } from "../support/telemetry.js";
import { brokerAvailable, uniqueName, until } from "./support.js";

const url = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const available = await brokerAvailable("RabbitMQ", "RABBITMQ_URL", url, async () => {
  const connection = await amqplib.connect(url);
  await connection.close();
});

describe.skipIf(!available)("telemetry end to end through RabbitMQ", () => {
  let db: TestDatabase;
  let otel: TestTelemetry;
  let connection: amqplib.ChannelModel;
  beforeAll(async () => {
    otel = registerTestTelemetry();
    db = await createTestDatabase();
    connection = await amqplib.connect(url);
  });
  afterAll(async () => {
    await connection?.close();
    await db?.drop();
    await otel?.shutdown();
  });

  test("HTTP request, withIdempotency, create, send (linked), RabbitMQ, process and the inbox: one trace", async () => {
    const tracer = trace.getTracer("test");
    const t = txonce(db.prisma);
    const consumer = txonce(db.prisma);
    const topic = uniqueName("orders.created");

    // RabbitMQ: an exchange and a queue, consumed through continueTrace and the inbox.
    const channel = await connection.createChannel();
    const exchange = uniqueName("txonce_otel");
    await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: true });
    const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, "#");
    const handled: string[] = [];
    await channel.consume(queue, async (m) => {
      if (!m) return;
      await continueTrace({ headers: m.properties.headers, system: "rabbitmq" }, () =>
        consumer.withIdempotency(m.properties.messageId as string, async () => void handled.push(m.properties.messageId as string), {
          scope: "consumer:payouts",
          name: "payout",
        }),
      );
      channel.ack(m);
    });

    // The API: a SERVER span per request (what instrumentation-http does), then txonce/express.
    const app = express();
    app.use(express.json());
    app.use((req, res, next) => {
      const parent = propagation.extract(context.active(), req.headers);
      const span = tracer.startSpan(`${req.method} ${req.path}`, { kind: SpanKind.SERVER }, parent);
      res.on("finish", () => span.end());
      context.with(trace.setSpan(parent, span), next);
    });
    const idempotent = idempotency(t);
    app.post(
      "/orders",
      idempotent(async (req, tx) => {
        const id = await t.outbox.enqueue(tx, { topic, key: String(req.body.order), payload: req.body });
        return { status: 201, body: { id } };
      }),
    );
    const server = app.listen(0);
    await new Promise<void>((resolve) => server.once("listening", resolve));
    const publisher = rabbitmqPublisher({ url, exchange });
    const relay = t.outbox.relay({ publisher, pollInterval: 20 });
    await relay.start();
    try {
      // The client: a CLIENT span whose context goes out in `traceparent`.
      const messageId = await tracer.startActiveSpan("POST /orders (client)", { kind: SpanKind.CLIENT }, async (span) => {
        const headers: Record<string, string> = { "content-type": "application/json", "idempotency-key": uniqueName("key") };
        propagation.inject(context.active(), headers);
        const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`, {
          method: "POST",
          headers,
          body: JSON.stringify({ order: 42 }),
        });
        span.end();
        expect(response.status).toBe(201);
        return ((await response.json()) as { id: string }).id;
      });
      await until(() => handled.includes(messageId), 15_000, "the consumer handled the message");
      await until(() => otel.spansNamed(`send ${topic}`).length === 1 && otel.spansNamed(`process ${topic}`).length === 1);

      const spans = otel.spans.getFinishedSpans();
      const one = (name: string) => {
        const found = otel.spansNamed(name);
        expect(found, name).toHaveLength(1);
        return found[0]!;
      };
      const client = one("POST /orders (client)");
      const serverSpan = one("POST /orders");
      const call = one("withIdempotency POST /orders");
      const create = one(`create ${topic}`);
      const send = one(`send ${topic}`);
      const process = one(`process ${topic}`);
      const inbox = one("withIdempotency payout");

      // The producer's side, parent by parent: client > server > withIdempotency > create.
      expect(parentOf(serverSpan, spans)).toBe(client);
      expect(parentOf(call, spans)).toBe(serverSpan);
      expect(call.attributes["txonce.idempotency.outcome"]).toBe("executed");
      expect(parentOf(create, spans)).toBe(call);
      expect(create.attributes).toMatchObject({ "messaging.system": "txonce", "messaging.destination.name": topic, "messaging.message.id": messageId });
      // The relay's publish: its own trace, linked to the creation context.
      expect(send.links.map((l) => l.context.spanId)).toEqual([create.spanContext().spanId]);
      expect(send.attributes).toMatchObject({ "messaging.system": "rabbitmq", "messaging.operation.type": "send", "messaging.message.id": messageId, "messaging.batch.message_count": 1 });
      // The consumer: the AMQP headers carried the creation context; process > inbox.
      expect(parentOf(process, spans)).toBe(create);
      expect(process.attributes).toMatchObject({ "messaging.system": "rabbitmq", "messaging.destination.name": topic, "messaging.message.id": messageId });
      expect(parentOf(inbox, spans)).toBe(process);
      expect(inbox.attributes["txonce.idempotency.outcome"]).toBe("executed");
      // One trace from the client to the inbox.
      const traceId = client.spanContext().traceId;
      for (const span of [serverSpan, call, create, process, inbox]) expect(span.spanContext().traceId, span.name).toBe(traceId);
      expect(send.spanContext().traceId).not.toBe(traceId);

      expect(await otel.total("messaging.client.sent.messages", { "messaging.system": "rabbitmq", "messaging.destination.name": topic })).toBe(1);
      expect(await otel.total("messaging.process.duration", { "messaging.system": "rabbitmq", "messaging.destination.name": topic })).toBe(1);
    } finally {
      await relay.stop();
      await publisher.close();
      await channel.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
