/**
 * The NATS JetStream publisher against a real server (NATS_URL, default nats://127.0.0.1:4222),
 * consumed with @nats-io/jetstream itself; and the end-to-end proof with the inbox. Skipped with
 * a loud warning when the server does not answer, failed instead under TXONCE_REQUIRE_BROKERS=1.
 */
import { AckPolicy, jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import type { OutboxMessage } from "../../src/index.js";
import { jsonFormat, natsPublisher, type JetStreamClientLike } from "../../src/outbox/publishers/nats.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { brokerAvailable, endToEnd, expectRetriedWhileUnreachable, uniqueName, until } from "./support.js";

const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const available = await brokerAvailable("NATS JetStream", "NATS_URL", url, async () => {
  const nc = await connect({ servers: url, reconnect: false });
  try {
    await (await jetstreamManager(nc)).getAccountInfo(); // JetStream is enabled
  } finally {
    await nc.close();
  }
});

// The structural type matches the real client.
const _client: JetStreamClientLike = null as unknown as JetStreamClient;

describe.skipIf(!available)("NATS JetStream publisher", () => {
  let db: TestDatabase;
  let nc: NatsConnection;
  let js: JetStreamClient;
  let jsm: JetStreamManager;
  const streams: string[] = [];
  beforeAll(async () => {
    db = await createTestDatabase();
    nc = await connect({ servers: url });
    js = jetstream(nc);
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    for (const stream of streams) await jsm?.streams.delete(stream).catch(() => {});
    await nc?.close();
    await db?.drop();
  });

  /** A fresh stream capturing `<prefix>.>`, with a durable consumer whose messages land in `received`. */
  async function streamWithConsumer() {
    const name = uniqueName("TXONCE");
    const prefix = name.toLowerCase();
    await jsm.streams.add({ name, subjects: [`${prefix}.>`], duplicate_window: nanos(60_000) });
    streams.push(name);
    await jsm.consumers.add(name, { durable_name: "test", ack_policy: AckPolicy.Explicit });
    return { name, prefix };
  }
  async function consumeInto(stream: string, received: JsMsg[], handle: (m: JsMsg) => Promise<void> = async () => {}) {
    const consumer = await js.consumers.get(stream, "test");
    const messages = await consumer.consume();
    const loop = (async () => {
      for await (const m of messages) {
        received.push(m);
        await handle(m);
        m.ack();
      }
    })();
    return {
      stop: async () => {
        await messages.close();
        await loop;
      },
    };
  }

  test("a relay publishes each message with msgID = id and its headers; the body decodes to the payload", async () => {
    const { name, prefix } = await streamWithConsumer();
    const received: JsMsg[] = [];
    const consumer = await consumeInto(name, received);
    const t = txonce(db.prisma);
    const publisher = natsPublisher({ servers: url });
    const relay = t.outbox.relay({ publisher, pollInterval: 20 });
    await relay.start();
    try {
      const payload = { orderId: 42, at: new Date("2026-03-01T12:00:00Z"), big: 2n ** 70n, map: new Map([["k", 1]]) };
      const id = await db.prisma.$transaction((tx) =>
        t.outbox.enqueue(tx, { topic: `${prefix}.orders.created`, key: "order-42", payload, headers: { "x-trace": "trace-1" } }),
      );
      await until(() => received.length === 1);
      const [m] = received;
      expect(m!.subject).toBe(`${prefix}.orders.created`);
      expect(m!.headers?.get("Nats-Msg-Id")).toBe(id);
      expect(m!.headers?.get("txonce-message-id")).toBe(id);
      expect(m!.headers?.get("txonce-topic")).toBe(`${prefix}.orders.created`);
      expect(m!.headers?.get("txonce-key")).toBe("order-42");
      expect(m!.headers?.get("x-trace")).toBe("trace-1");
      expect(m!.headers?.get("content-type")).toBe("application/vnd.txonce+json");
      expect(t.codec.decode(m!.string())).toStrictEqual(payload);
    } finally {
      await relay.stop();
      await publisher.close();
      await consumer.stop();
    }
  });

  test("the server drops a redelivery of the same message id; a client you own is left open", async () => {
    const { name, prefix } = await streamWithConsumer();
    const publisher = natsPublisher({ jetstream: js, subject: (m) => `${prefix}.${m.topic}`, format: jsonFormat });
    const message: OutboxMessage = {
      id: "0197f000-0000-7000-8000-0000000000aa",
      seq: "1",
      topic: "dup",
      key: null,
      payload: { n: 1 },
      encodedPayload: "unused with jsonFormat",
      headers: {},
      createdAt: new Date(),
      attempts: 1,
    };
    await publisher.publish(message);
    await publisher.publish({ ...message, attempts: 2 }); // resolves: the server has it
    await publisher.close();
    const info = await jsm.streams.info(name);
    expect(info.state.messages).toBe(1);
    const received: JsMsg[] = [];
    const consumer = await consumeInto(name, received);
    await until(() => received.length === 1);
    expect(JSON.parse(received[0]!.string())).toEqual({ n: 1 });
    expect(received[0]!.headers?.get("content-type")).toBe("application/json");
    await consumer.stop();
    expect(nc.isClosed()).toBe(false);
  });

  test("a subject no stream captures fails the publish; the relay retries and delivers once a stream exists", async () => {
    const prefix = uniqueName("txonce_late").toLowerCase();
    const t = txonce(db.prisma);
    const publisher = natsPublisher({ servers: url, ackTimeout: 1000 });
    const failures: { message: OutboxMessage; error: unknown }[] = [];
    const relay = t.outbox.relay({ publisher, pollInterval: 20, backoff: { initial: 50, max: 100 }, onFailed: (message, error) => failures.push({ message, error }) });
    await relay.start();
    try {
      const id = await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: `${prefix}.event`, payload: "hello" }));
      await until(() => failures.length >= 2);
      expect(failures[0]!.message.id).toBe(id);
      const name = prefix.toUpperCase();
      await jsm.streams.add({ name, subjects: [`${prefix}.>`] });
      streams.push(name);
      await until(async () => (await db.pool.query("SELECT published_at FROM txonce_outbox_messages WHERE id = $1", [id])).rows[0].published_at !== null);
      expect((await jsm.streams.info(name)).state.messages).toBe(1);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("an unreachable server: every message's publish fails and is retried; nothing is marked", () =>
    expectRetriedWhileUnreachable(db, natsPublisher({ servers: "nats://127.0.0.1:1" })));

  test("end to end: every change has exactly one effect at the consumer, also when the relay is killed after publishing", async () => {
    const { name, prefix } = await streamWithConsumer();
    await endToEnd({
      db,
      topic: `${prefix}.charges.created`,
      publisher: () => natsPublisher({ servers: url }),
      processEnv: { PUBLISHER: "nats", PUBLISHER_OPTIONS: JSON.stringify({ servers: url }) },
      // The survivor's publish is acknowledged as a duplicate and never delivered again.
      deliveriesAfterCrash: 1,
      consume: async (handle) => {
        // JetStream drops the survivor's republish, so the inbox is proven here by a consumer
        // that "crashes" after its inbox committed and before it acked: the first delivery is
        // negatively acknowledged, JetStream delivers it again, and the inbox applies it once.
        const consumer = await js.consumers.get(name, "test");
        const messages = await consumer.consume();
        let naked = false;
        const loop = (async () => {
          for await (const m of messages) {
            await handle({ id: m.headers!.get("Nats-Msg-Id"), body: m.string() });
            if (!naked) {
              naked = true;
              m.nak();
            } else {
              m.ack();
            }
          }
        })();
        return {
          stop: async () => {
            await messages.close();
            await loop;
          },
        };
      },
    });
  });
});
