/**
 * `outbox.enqueue(tx, ...)` refuses a handle that is not in a transaction (its message would
 * commit at once and be published even if the business change rolled back), for Prisma and pg,
 * and accepts every transaction handle, on a real PostgreSQL.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { txonce as txoncePrisma } from "../src/adapters/prisma.js";
import { InvalidArgumentError } from "../src/index.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
let pool: pg.Pool;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 3 });
  pool = new pg.Pool({ connectionString: db.url, max: 3 });
  pool.on("error", () => {});
});
afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

let seq = 0;
const newTopic = () => `enqueue.${++seq}.${Math.random().toString(36).slice(2)}`;
const messages = async (topic: string) =>
  (await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE topic = $1", [topic])).rows[0].n as number;

async function refused(enqueue: () => Promise<unknown>, reason: RegExp) {
  const error = await enqueue().catch((e: unknown) => e);
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect(error).toMatchObject({ argument: "tx", reason: expect.stringMatching(reason) });
}

describe("Prisma", () => {
  test("the root client is refused, and nothing is written (the mistake type-checks: the root client fits Prisma.TransactionClient)", async () => {
    const t = txoncePrisma(db.prisma);
    const topic = newTopic();
    await refused(() => t.outbox.enqueue(db.prisma, { topic, payload: 1 }), /^this is the root Prisma client, not a transaction client/);
    await refused(() => t.outbox.enqueueMany(db.prisma, [{ topic, payload: 1 }]), /root Prisma client/);
    // Inside withIdempotency, with the root client by mistake: refused, so the change rolls back with nothing published.
    const key = `k-${topic}`;
    await expect(
      t.withIdempotency(key, async () => t.outbox.enqueue(db.prisma, { topic, payload: 1 })),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(await messages(topic)).toBe(0);
  });

  test("an extended client's root is refused too; its transaction clients are accepted", async () => {
    const extended = db.prisma.$extends({});
    const t = txoncePrisma(extended);
    const topic = newTopic();
    await refused(() => t.outbox.enqueue(extended, { topic, payload: 1 }), /root Prisma client/);
    await extended.$transaction((tx) => t.outbox.enqueue(tx, { topic, payload: 1 }));
    expect(await messages(topic)).toBe(1);
  });

  test("withIdempotency's tx and prisma.$transaction's tx are accepted, and roll back with the change", async () => {
    const t = txoncePrisma(db.prisma);
    const topic = newTopic();
    await t.withIdempotency(`k-${topic}`, (tx) => t.outbox.enqueue(tx, { topic, payload: 1 }));
    await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic, payload: 2 }));
    await expect(
      db.prisma.$transaction(async (tx) => {
        await t.outbox.enqueue(tx, { topic, payload: 3 });
        throw new Error("rolled back");
      }),
    ).rejects.toThrow("rolled back");
    expect(await messages(topic)).toBe(2);
  });
});

describe("pg", () => {
  test("the pool is refused", async () => {
    const t = txoncePg(pool);
    const topic = newTopic();
    await refused(() => t.outbox.enqueue(pool as unknown as pg.PoolClient, { topic, payload: 1 }), /^this is the pool, not the client of a transaction/);
    expect(await messages(topic)).toBe(0);
  });

  test("a client outside BEGIN is refused; the same client after BEGIN is accepted", async () => {
    const t = txoncePg(pool);
    const topic = newTopic();
    const client = await pool.connect();
    try {
      await refused(() => t.outbox.enqueue(client, { topic, payload: 1 }), /^this client is not in a transaction \(no BEGIN\)/);
      await client.query("BEGIN");
      await t.outbox.enqueue(client, { topic, payload: 2 });
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    expect(await messages(topic)).toBe(1);
  });

  test("withIdempotency's client is accepted", async () => {
    const t = txoncePg(pool);
    const topic = newTopic();
    await t.withIdempotency(`k-${topic}`, (client) => t.outbox.enqueue(client, { topic, payload: 1 }));
    expect(await messages(topic)).toBe(1);
  });
});
