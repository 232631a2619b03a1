/**
 * Relays killed over and over while they publish a keyed backlog to the real RabbitMQ
 * (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672): three relay processes, one of them
 * SIGKILLed and restarted every ~0.6 s, while a producer keeps committing. Afterwards: nothing
 * lost, every key's first deliveries in commit order, no message charged an attempt that it did
 * not get (each hand-off to the publisher is logged to a file first), duplicates within what the
 * killed relays held, and nothing pending or leased, within a generous deadline that fails the
 * test if the relays stall (not a performance assertion).
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import amqplib from "amqplib";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { brokerAvailable, sleep, startRelayProcess, stopProcess, uniqueName, until } from "./support.js";

const url = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const available = await brokerAvailable("RabbitMQ", "RABBITMQ_URL", url, async () => {
  const connection = await amqplib.connect(url);
  await connection.close();
});

const KEYS = 100;
const PER_TRANSACTION = 10;
const BACKLOG = 2_000; // committed before the relays start
const LIVE = 2_000; // committed while they run and are killed
const RELAYS = 3;
const KILLS = 12;
const BATCH_SIZE = 20;
const WORKERS = 2;
const LEASE_MS = 1_500;
/** What one killed relay can have handed to the broker without recording it: per worker, batchSize publishes in flight and batchSize ended but not written. */
const IN_FLIGHT_PER_RELAY = 2 * BATCH_SIZE * WORKERS;

describe.skipIf(!available)("relays killed while publishing to RabbitMQ", () => {
  let db: TestDatabase;
  let connection: amqplib.ChannelModel;
  let logDir: string;
  beforeAll(async () => {
    db = await createTestDatabase();
    connection = await amqplib.connect(url);
    logDir = mkdtempSync(join(tmpdir(), "txonce-crashes-"));
  });
  afterAll(async () => {
    await connection?.close();
    await db?.drop();
    if (logDir) rmSync(logDir, { recursive: true, force: true });
  });

  test("SIGKILLed again and again: nothing lost, per-key order, attempts only for real hand-offs, bounded duplicates, no stall", { timeout: 120_000 }, async () => {
    const producer = txonce(db.prisma);
    const exchange = uniqueName("txonce_crashes");
    const channel = await connection.createChannel();
    await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: false });
    const { queue } = await channel.assertQueue("", { exclusive: true });
    await channel.bindQueue(queue, exchange, "#");
    const deliveries: { id: string; key: string; n: number }[] = [];
    await channel.consume(
      queue,
      (m) => {
        if (!m) return;
        const { key, n } = producer.codec.decode<{ key: string; n: number }>(m.content.toString("utf8"));
        deliveries.push({ id: m.properties.messageId as string, key, n });
      },
      { noAck: true },
    );

    // Each transaction enqueues PER_TRANSACTION messages on random keys; a key's n counts up in commit order.
    const next = new Map<string, number>();
    let committed = 0;
    const commit = async () => {
      await db.prisma.$transaction(async (tx) => {
        const messages = Array.from({ length: PER_TRANSACTION }, () => {
          const key = `key-${Math.floor(Math.random() * KEYS)}`;
          const n = next.get(key) ?? 0;
          next.set(key, n + 1);
          return { topic: "crash.test", key, payload: { key, n } };
        });
        await producer.outbox.enqueueMany(tx, messages);
      });
      committed += PER_TRANSACTION;
    };
    while (committed < BACKLOG) await commit();

    let serial = 0;
    const start = () => {
      const relay = startRelayProcess({
        DATABASE_URL: db.url,
        PUBLISHER: "rabbitmq",
        PUBLISHER_OPTIONS: JSON.stringify({ url, exchange }),
        RELAY_LEASE_MS: String(LEASE_MS),
        RELAY_BATCH_SIZE: String(BATCH_SIZE),
        RELAY_WORKERS: String(WORKERS),
        RELAY_PUBLISH_LOG: join(logDir, `relay-${++serial}.log`),
      });
      return relay;
    };
    const relays = Array.from({ length: RELAYS }, start);
    await Promise.all(relays.map((r) => r.ready));
    // Producers serialize per key on its lock: one producer, committing while the relays run.
    const producing = (async () => {
      while (committed < BACKLOG + LIVE) {
        await commit();
        await sleep(20);
      }
    })();
    let kills = 0;
    try {
      while (kills < KILLS) {
        await sleep(500 + Math.random() * 300);
        const i = Math.floor(Math.random() * RELAYS);
        relays[i]!.child.kill("SIGKILL");
        await relays[i]!.exited;
        kills++;
        relays[i] = start();
        await relays[i]!.ready;
      }
      await producing;
      const total = BACKLOG + LIVE;
      // Generous: the relays drain this in a few seconds; a stall fails here.
      await until(
        async () => {
          const { rows } = await db.pool.query(
            "SELECT count(*) FILTER (WHERE published_at IS NULL)::int AS pending, count(*) FILTER (WHERE lease_token IS NOT NULL)::int AS leased FROM txonce_outbox_messages",
          );
          return rows[0].pending === 0 && rows[0].leased === 0 && new Set(deliveries.map((d) => d.id)).size === total;
        },
        60_000,
        "every message published, recorded and delivered",
      );
    } finally {
      await Promise.all(relays.map((r) => stopProcess(r.child)));
      await channel.close();
    }

    const { rows } = await db.pool.query<{ id: string; attempts: number; dead: boolean }>(
      "SELECT id::text, attempts, dead_at IS NOT NULL AS dead FROM txonce_outbox_messages",
    );
    expect(rows).toHaveLength(BACKLOG + LIVE);
    expect(rows.filter((r) => r.dead)).toEqual([]);

    // Nothing lost.
    const delivered = new Map<string, number>();
    for (const d of deliveries) delivered.set(d.id, (delivered.get(d.id) ?? 0) + 1);
    expect(rows.filter((r) => !delivered.has(r.id))).toEqual([]);

    // Per key, the first delivery of each message in commit order.
    const firsts = new Map<string, number[]>();
    const seen = new Set<string>();
    for (const d of deliveries) {
      if (seen.has(d.id)) continue;
      seen.add(d.id);
      firsts.set(d.key, [...(firsts.get(d.key) ?? []), d.n]);
    }
    for (const [key, order] of firsts) expect(order, key).toEqual(Array.from({ length: next.get(key)! }, (_, n) => n));

    // No message charged an attempt it did not get: attempts <= hand-offs to the publisher.
    const handOffs = new Map<string, number>();
    for (const file of readdirSync(logDir)) {
      for (const id of readFileSync(join(logDir, file), "utf8").split("\n")) if (id) handOffs.set(id, (handOffs.get(id) ?? 0) + 1);
    }
    const overcharged = rows.filter((r) => r.attempts > (handOffs.get(r.id) ?? 0));
    expect(overcharged).toEqual([]);
    expect(rows.every((r) => r.attempts >= 1)).toBe(true);

    // Duplicates only from what the killed relays had in flight.
    const duplicates = deliveries.length - delivered.size;
    expect(duplicates).toBeLessThanOrEqual(kills * IN_FLIGHT_PER_RELAY);
    const charged = rows.reduce((sum, r) => sum + r.attempts, 0);
    const handed = [...handOffs.values()].reduce((a, b) => a + b, 0);
    console.log(
      `${kills} kills: ${deliveries.length} deliveries of ${delivered.size} messages (${duplicates} duplicates, at most ${kills * IN_FLIGHT_PER_RELAY} allowed), ` +
        `${handed} hand-offs, ${charged} attempts charged, max attempts ${Math.max(...rows.map((r) => r.attempts))}`,
    );
  });
});
