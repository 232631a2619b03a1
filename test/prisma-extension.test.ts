/**
 * What only Prisma has, beside the conformance suite (which runs the client extension as a row
 * of its own): the extension's `tx` carries the client's other extensions, and read replicas.
 *
 * The replica here is a deliberately stale one: a second database cloned from the same template
 * before any record was written, that `@prisma/extension-read-replicas` (and, for raw queries, a
 * small extension that routes them like a replica extension could) points at. If txonce read a
 * replica to decide (the poll of a taken key), a replay would find nothing there: it would wait
 * out `lockTimeout` or run the operation twice.
 */
import { readReplicas } from "@prisma/extension-read-replicas";
import { Prisma } from "@prisma/client/extension";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { InvalidArgumentError } from "../src/index.js";
import { txonce, txonceExtension } from "../src/adapters/prisma.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
let replica: TestDatabase;
beforeAll(async () => {
  [db, replica] = await Promise.all([createTestDatabase({ prismaPoolSize: 4 }), createTestDatabase({ prismaPoolSize: 2 })]);
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
  await replica.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await Promise.all([db?.drop(), replica?.drop()]);
});

let seq = 0;
const newKey = (label: string) => `${label}-${++seq}`;
const charges = async (amount: number) =>
  (await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount])).rows[0].n as number;

describe("the client extension", () => {
  test("tx carries the client's other extensions, registered before or after txonce's, and the operation's statements go through them", async () => {
    const seen: string[] = [];
    const client = db.prisma
      .$extends({ model: { charge: { before: async () => "before" } } })
      .$extends(txonceExtension())
      .$extends({
        model: { charge: { after: async () => "after" } },
        query: { charge: { create: ({ args, query }) => (seen.push("charge.create"), query(args)) } },
      });
    const key = newKey("extensions");
    const outcome = await client.$withIdempotencyOutcome(key, async (tx) => {
      const charge = await tx.charge.create({ data: { accountId: "acc", amount: 11 } });
      return { id: charge.id, before: await tx.charge.before(), after: await tx.charge.after() };
    });
    expect(outcome).toMatchObject({ replayed: false, value: { before: "before", after: "after" } });
    expect(seen).toEqual(["charge.create"]);
    await expect(client.$withIdempotency(key, async () => ({ id: -1 }))).resolves.toStrictEqual(outcome.value);
  });

  test("$outbox enqueues in the operation's transaction; $txonce() is the same instance on every call", async () => {
    const client = db.prisma.$extends(txonceExtension());
    const topic = `extension.${newKey("topic")}`;
    await client.$withIdempotency(newKey("outbox"), async (tx) => client.$outbox.enqueue(tx, { topic, payload: 1 }));
    await expect(client.$transaction(async (tx) => {
      await client.$outbox.enqueue(tx, { topic, payload: 2 });
      throw new Error("rolled back");
    })).rejects.toThrow("rolled back");
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE topic = $1", [topic])).rows[0].n).toBe(1);
    expect(client.$txonce()).toBe(client.$txonce());
    await expect(client.$outbox.enqueue(client, { topic, payload: 3 })).rejects.toMatchObject({ argument: "tx" });
  });

  test("bad options are refused when the extension is added; a transaction client is not a client", async () => {
    expect(() => db.prisma.$extends(txonceExtension({ retention: "soon" }))).toThrow(InvalidArgumentError);
    const client = db.prisma.$extends(txonceExtension());
    const error = await client
      .$transaction(async (tx) => (tx as unknown as typeof client).$withIdempotency(newKey("in-tx"), async () => 1))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as InvalidArgumentError).reason).toMatch(/got a transaction client/);
  });
});

describe("read replicas", () => {
  test("with @prisma/extension-read-replicas on a stale replica: model reads go to the replica, txonce's reads to the primary", async () => {
    const client = db.prisma.$extends(readReplicas({ replicas: [replica.prisma as never] }));
    const key = newKey("replicas");
    await txonce(client).withIdempotency(key, (tx) => tx.charge.create({ data: { accountId: "acc", amount: 21 } }));
    // The replica is stale: outside a transaction, the extension reads it...
    expect(await client.charge.count({ where: { amount: 21 } })).toBe(0);
    expect(await charges(21)).toBe(1);
    // ...but a cold replay (another instance, nothing in memory) finds the record on the primary.
    let ran = false;
    const replay = await txonce(client).withIdempotencyOutcome(key, async (tx) => {
      ran = true;
      return tx.charge.create({ data: { accountId: "acc", amount: 21 } });
    });
    expect(replay.replayed).toBe(true);
    expect(ran).toBe(false);
    expect(await charges(21)).toBe(1);
  });

  test("a replica extension that also routes raw queries: txonce polls the primary through $primary(), and the relay and cleanup write there", async () => {
    const primary = db.prisma;
    const routed: string[] = [];
    // Routes raw queries outside a transaction to the stale replica, as a replica extension that
    // sends raw reads to replicas would, and offers $primary() as @prisma/extension-read-replicas does.
    const client = primary.$extends(
      Prisma.defineExtension({
        client: { $primary: () => primary },
        query: {
          $queryRawUnsafe({ args, query, __internalParams }: { args: unknown[]; query: (a: unknown[]) => Promise<unknown>; __internalParams?: { transaction?: unknown } }) {
            if (__internalParams?.transaction) return query(args);
            routed.push("replica");
            return replica.prisma.$queryRawUnsafe(...(args as [string, ...unknown[]]));
          },
        } as never,
      }),
    );
    // The routing is real: a raw read on the client sees the stale replica.
    const key = newKey("raw-replicas");
    await txonce(primary).withIdempotency(key, async () => "stored on the primary");
    expect(await client.$queryRawUnsafe("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key = $1", key)).toEqual([{ n: 0 }]);
    expect(routed).toEqual(["replica"]);
    // txonce's cold replay polls the primary: found at once.
    const t = txonce(client, { lockTimeout: 300 });
    await expect(t.withIdempotencyOutcome(key, async () => "ran again")).resolves.toMatchObject({ replayed: true, value: "stored on the primary" });
    await db.pool.query("UPDATE txonce_idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", [key]);
    await expect(t.cleanup()).resolves.toMatchObject({ finished: true });
    expect((await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys WHERE key = $1", [key])).rows[0].n).toBe(0);
    expect(routed).toEqual(["replica"]);
  });
});
