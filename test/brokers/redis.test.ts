/**
 * The Redis Streams publisher against a real server (REDIS_URL, default redis://127.0.0.1:6379),
 * consumed with node-redis itself (a consumer group, XREADGROUP and XACK); and the end-to-end
 * proof with the inbox. Skipped with a loud warning when the server does not answer, failed
 * instead under TXONCE_REQUIRE_BROKERS=1.
 */
import { createClient } from "redis";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import type { OutboxMessage } from "../../src/index.js";
import { jsonFormat, redisPublisher, type RedisStreamClientLike } from "../../src/outbox/publishers/redis.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { brokerAvailable, endToEnd, expectRetriedWhileUnreachable, uniqueName, until } from "./support.js";

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const available = await brokerAvailable("Redis", "REDIS_URL", url, async () => {
  const probe = createClient({ url, socket: { reconnectStrategy: false } });
  probe.on("error", () => {});
  await probe.connect();
  await probe.close();
});

type Client = ReturnType<typeof createClient>;
// The structural type matches the real client.
const _client: RedisStreamClientLike = null as unknown as Client;

interface Entry {
  id: string;
  message: Record<string, string>;
}

describe.skipIf(!available)("Redis Streams publisher", () => {
  let db: TestDatabase;
  let redis: Client;
  const streams: string[] = [];
  beforeAll(async () => {
    db = await createTestDatabase();
    redis = createClient({ url });
    await redis.connect();
  });
  afterAll(async () => {
    if (streams.length > 0) await redis?.del(streams);
    await redis?.close();
    await db?.drop();
  });
  const stream = () => {
    const name = uniqueName("txonce_test");
    streams.push(name);
    return name;
  };
  const entries = async (key: string) => (await redis.xRange(key, "-", "+")) as Entry[];

  test("a relay XADDs each message with its id, topic, key, headers and content type; the payload decodes", async () => {
    const key = stream();
    const t = txonce(db.prisma);
    const publisher = redisPublisher({ url, stream: () => key });
    const relay = t.outbox.relay({ publisher, pollInterval: 20 });
    await relay.start();
    try {
      const payload = { orderId: 42, at: new Date("2026-03-01T12:00:00Z"), big: 2n ** 70n, bytes: Buffer.from("hi") };
      const id = await db.prisma.$transaction((tx) =>
        t.outbox.enqueue(tx, { topic: "orders.created", key: "order-42", payload, headers: { "x-trace": "trace-1" } }),
      );
      await until(async () => (await entries(key)).length === 1);
      const [entry] = await entries(key);
      expect(entry!.message).toMatchObject({ id, topic: "orders.created", key: "order-42", "content-type": "application/vnd.txonce+json" });
      expect(JSON.parse(entry!.message.headers!)).toEqual({ "x-trace": "trace-1", "txonce-message-id": id, "txonce-topic": "orders.created", "txonce-key": "order-42" });
      expect(t.codec.decode(entry!.message.payload!)).toStrictEqual(payload);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("the stream defaults to the topic; maxLength trims; jsonFormat; a client you own stays open", async () => {
    const key = stream();
    const own = createClient({ url });
    await own.connect();
    try {
      const publisher = redisPublisher({ client: own, maxLength: 10, format: jsonFormat });
      const base: OutboxMessage = { id: "", seq: "1", topic: key, key: null, payload: null, encodedPayload: "", headers: {}, createdAt: new Date(), attempts: 1 };
      for (let i = 0; i < 300; i++) await publisher.publish({ ...base, id: `m-${i}`, payload: { i } });
      await publisher.close();
      const length = await redis.xLen(key);
      expect(length).toBeGreaterThanOrEqual(10);
      expect(length).toBeLessThan(300); // MAXLEN ~ trims whole macro nodes, so "about" 10
      const last = (await entries(key)).at(-1)!;
      expect(last.message).toMatchObject({ id: "m-299", "content-type": "application/json" });
      expect(JSON.parse(last.message.payload!)).toEqual({ i: 299 });
      expect(last.message.key).toBeUndefined();
      expect(await own.ping()).toBe("PONG");
    } finally {
      await own.close();
    }
  });

  test("an unreachable server: every message's publish fails and is retried; nothing is marked", () =>
    expectRetriedWhileUnreachable(db, redisPublisher({ url: "redis://127.0.0.1:1" }), "%ECONNREFUSED%"));

  test("a command the server refuses fails the publish (a key of another type); the relay retries until it can", async () => {
    const key = stream();
    await redis.set(key, "not a stream");
    const t = txonce(db.prisma);
    const publisher = redisPublisher({ url });
    const errors: string[] = [];
    const relay = t.outbox.relay({ publisher, pollInterval: 20, backoff: { initial: 50, max: 100 }, onFailed: (_m, e) => errors.push((e as Error).message) });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: key, payload: 1 }));
      await until(() => errors.length >= 2);
      expect(errors[0]).toMatch(/WRONGTYPE/);
      await redis.del(key);
      await until(async () => (await redis.exists(key)) === 1 && (await entries(key)).length === 1);
    } finally {
      await relay.stop();
      await publisher.close();
    }
  });

  test("end to end: every change has exactly one effect at the consumer, also when the relay is killed after publishing", async () => {
    const key = stream();
    await redis.xGroupCreate(key, "ledger", "0", { MKSTREAM: true });
    await endToEnd({
      db,
      topic: key,
      publisher: () => redisPublisher({ url }),
      processEnv: { PUBLISHER: "redis", PUBLISHER_OPTIONS: JSON.stringify({ url }) },
      deliveriesAfterCrash: 2,
      consume: async (handle) => {
        const reader = redis.duplicate();
        await reader.connect();
        let running = true;
        const loop = (async () => {
          while (running) {
            const replies = (await reader.xReadGroup("ledger", "consumer-1", { key, id: ">" }, { COUNT: 10, BLOCK: 100 })) as
              | { name: string; messages: Entry[] }[]
              | null;
            for (const entry of replies?.[0]?.messages ?? []) {
              // XACK only after the inbox committed: a consumer crash means a redelivery, never a loss.
              await handle({ id: entry.message.id!, body: entry.message.payload! });
              await reader.xAck(key, "ledger", entry.id);
            }
          }
        })();
        return {
          stop: async () => {
            running = false;
            await loop;
            await reader.close();
          },
        };
      },
    });
  });
});
