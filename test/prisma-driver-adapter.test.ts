/**
 * `txonceAdapter`: what only the wrapped driver adapter has, beside the conformance and faults
 * suites (where it is a row of its own; a save the server refuses at COMMIT is a case there): txonce's statements go through the adapter and not
 * through Prisma, the save goes with the COMMIT, each txonce transaction gets its own, the
 * application's transactions are left alone, and a transaction Prisma has ended is never written
 * to (its connection may already serve someone else).
 */
import { PGlite } from "@electric-sql/pglite";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { PrismaPGlite } from "pglite-prisma-adapter";
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from "vitest";
import { PrismaClient } from "../generated/prisma/client.js";
import { InvalidArgumentError } from "../src/index.js";
import { txonce, txonceAdapter } from "../src/adapters/prisma.js";
import { withLiterals } from "../src/sql/literals.js";
import { schemaSql } from "../src/sql/schema.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
const clients: PrismaClient[] = [];
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 2 });
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.$disconnect()));
  await db?.drop();
});

/** A client on the test database with its adapter wrapped, logging the statements Prisma sends. */
function wrappedClient(max: number, options: ConstructorParameters<typeof PrismaPg>[1] = {}) {
  const sent: string[] = [];
  const ignore = () => {};
  const prisma = new PrismaClient({
    adapter: txonceAdapter(new PrismaPg({ connectionString: db.url, max }, { onPoolError: ignore, onConnectionError: ignore, ...options })),
    log: [{ emit: "event", level: "query" }],
  });
  prisma.$on("query", (event) => sent.push(event.query));
  clients.push(prisma);
  return { prisma, sent };
}

let seq = 0;
const newKey = (label: string) => `${label}-${++seq}`;
const charges = async (amount: number) =>
  (await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount])).rows[0].n as number;
const stored = async (key: string) =>
  (await db.pool.query("SELECT result FROM txonce_idempotency_keys WHERE key = $1", [key])).rows as { result: string | null }[];

describe("txonceAdapter", () => {
  test("txonce's claim and save go through the adapter, not Prisma: Prisma sends only the operation's statement and COMMIT", async () => {
    const { prisma, sent } = wrappedClient(2);
    const t = txonce(prisma);
    const key = newKey("direct");
    const charge = await t.withIdempotency(key, (tx) => tx.charge.create({ data: { accountId: "acc", amount: 101 } }));
    expect(sent.filter((q) => q.includes("txonce_idempotency_keys"))).toEqual([]);
    expect(sent.some((q) => q.includes('INSERT INTO "public"."charges"'))).toBe(true);
    expect((await stored(key))[0]?.result).toContain(String(charge.id));
    // Replayed by an instance without the cache, from the database: the poll goes through the adapter too.
    const again = await txonce(prisma, { replayCache: false }).withIdempotencyOutcome(key, async () => ({ id: -1 }));
    expect(again).toMatchObject({ replayed: true, value: { id: charge.id } });
    expect(sent.filter((q) => q.includes("txonce_idempotency_keys"))).toEqual([]);
  });

  test("the save is sent with the COMMIT: one round trip, seen by the server as one query", async () => {
    const { prisma } = wrappedClient(1);
    const t = txonce(prisma);
    const key = newKey("merged");
    await t.withIdempotency(key, (tx) => tx.charge.create({ data: { accountId: "acc", amount: 102 } }));
    // The statement the connection last ran is the save and the COMMIT together.
    const { rows } = await db.pool.query<{ query: string }>(
      "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND query LIKE '%by_ctid%'",
    );
    expect(rows.map((r) => r.query.trim().endsWith("COMMIT"))).toContain(true);
    expect((await stored(key))[0]?.result).not.toBeNull();
  });

  test("round trips over @prisma/adapter-pg: a first execution is 3 (the claim with BEGIN, the operation, the save with COMMIT), a cold replay 2 (the claim with BEGIN, the poll with ROLLBACK)", async () => {
    // A pool of one connection, each query sent on it recorded: what goes over the wire.
    const wire: string[] = [];
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pool.on("error", () => {});
    pool.on("connect", (client) => {
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as { query: unknown }).query = (...args: unknown[]) => {
        const first = args[0] as string | { text: string };
        wire.push(typeof first === "string" ? first : first.text);
        return query(...args);
      };
    });
    const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPg(pool)), log: [{ emit: "event", level: "query" }] });
    const logged: string[] = [];
    prisma.$on("query", (event) => logged.push(event.query));
    onTestFinished(async () => {
      await prisma.$disconnect();
      await pool.end();
    });
    const key = newKey("trips");
    await prisma.$queryRawUnsafe("SELECT 1"); // connected, outside the count
    wire.length = 0;
    const charge = await txonce(prisma).withIdempotency(key, (tx) => tx.charge.create({ data: { accountId: "acc", amount: 104 } }));
    expect(wire).toHaveLength(3);
    expect(wire[0]).toMatch(/^BEGIN;\s*INSERT INTO txonce_idempotency_keys/);
    expect(wire[1]).toContain('INSERT INTO "public"."charges"');
    expect(wire[2]).toMatch(/COMMIT$/);
    expect(logged.some((q) => q.includes('INSERT INTO "public"."charges"'))).toBe(true);
    wire.length = 0;
    logged.length = 0;
    const cold = await txonce(prisma, { replayCache: false }).withIdempotencyOutcome(key, async () => ({ id: -1 }));
    expect(cold).toMatchObject({ replayed: true, value: { id: charge.id } });
    // The claim was sent before Prisma started a transaction: finding the key taken, txonce
    // rolled back and no Prisma transaction was started (Prisma logged nothing, not even ROLLBACK).
    expect(logged).toEqual([]);
    expect(wire).toHaveLength(2);
    expect(wire[0]).toMatch(/^BEGIN;\s*INSERT INTO txonce_idempotency_keys/);
    expect(wire[1]).toMatch(/^ROLLBACK;\s*SELECT k.fingerprint/);
    // Under an isolation level, BEGIN is followed by SET TRANSACTION: the claim goes on its own,
    // the poll still with the ROLLBACK.
    wire.length = 0;
    const isolated = txonce(prisma, { replayCache: false, transaction: { isolationLevel: "Serializable" } });
    await expect(isolated.withIdempotencyOutcome(key, async () => ({ id: -1 }))).resolves.toMatchObject({ replayed: true });
    expect(wire[0]).toBe("BEGIN");
    expect(wire.at(-1)).toMatch(/^ROLLBACK;\s*SELECT k.fingerprint/);
    // The connection is clean after each: an application transaction on it works.
    await expect(prisma.$transaction(async (tx) => tx.account.findUnique({ where: { id: "acc" } }))).resolves.toMatchObject({ id: "acc" });
  });

  test("a claim sent with BEGIN that fails (no tables in the schema named) fails the call, and the transaction it began is rolled back", async () => {
    const { prisma } = wrappedClient(1);
    await expect(txonce(prisma, { schema: "no_such_schema" }).withIdempotency(newKey("noschema"), async () => 1)).rejects.toMatchObject({
      code: "TXONCE_SCHEMA_NOT_INSTALLED",
    });
    // The only connection of the pool is not left inside the aborted transaction.
    const key = newKey("after");
    await expect(txonce(prisma).withIdempotency(key, async () => "ok")).resolves.toBe("ok");
    expect(await stored(key)).toEqual([{ result: expect.stringContaining("ok") }]);
  });

  test("results with quotes, backslashes, unicode and parameter-like text are stored and replayed exactly", async () => {
    const { prisma } = wrappedClient(2);
    const t = txonce(prisma);
    const key = newKey("literals");
    const value = { text: "it's a \\back\\slash\\ and ''quotes'' $1::text $2 E'x' \u00e9\u{1F600} \n\t\r", nested: ["\\", "'", "\\'", "$$"] };
    await expect(t.withIdempotency(key, async (tx) => (await tx.charge.create({ data: { accountId: "acc", amount: 103 } }), value))).resolves.toEqual(value);
    const replay = await txonce(prisma, { replayCache: false }).withIdempotencyOutcome(key, async () => ({ text: "", nested: [] }));
    expect(replay).toMatchObject({ replayed: true, value });
    expect(withLiterals("SELECT $1::text, $2::int, $3::text, $10::text", ["a'b\\c", 5, null, "ten", "", "", "", "", "", "x"])).toBe(
      "SELECT E'a''b\\\\c'::text, 5::int, NULL::text, E'x'::text",
    );
  });

  test("an operation that moves its own key row: the save finds it by key, and the result is stored", async () => {
    const { prisma } = wrappedClient(2);
    const t = txonce(prisma);
    const key = newKey("moved");
    await t.withIdempotency(key, async (tx) => {
      await tx.$executeRawUnsafe("UPDATE txonce_idempotency_keys SET fingerprint = fingerprint WHERE key = $1", key);
      return "moved";
    });
    expect(await stored(key)).toEqual([{ result: expect.stringContaining("moved") }]);
  });

  test.each([
    ["the save sent with COMMIT", {}],
    ["the save on its own (prepared statements)", { statementNameGenerator: (query: { sql: string }) => `s_${query.sql.length}` }],
  ])("a transaction Prisma timed out during the operation is never written to (%s): the save is refused as Prisma refuses it", async (_name, options) => {
    // A spy between Prisma and the adapter: statements sent on a transaction after Prisma ended it.
    let late = 0;
    const ignore = () => {};
    const inner = new PrismaPg({ connectionString: db.url, max: 1 }, { onPoolError: ignore, onConnectionError: ignore, ...options });
    const spied = {
      provider: inner.provider as "postgres",
      adapterName: inner.adapterName,
      // What txonceAdapter reads to know whether statements are prepared (PrismaPg's options).
      options: (inner as unknown as { options: unknown }).options,
      async connect() {
        const adapter = await inner.connect();
        const start = adapter.startTransaction.bind(adapter);
        adapter.startTransaction = async (isolationLevel) => {
          const tx = await start(isolationLevel);
          let ended = false;
          const { queryRaw, executeRaw, rollback, commit } = tx;
          tx.queryRaw = (q) => ((late += ended ? 1 : 0), queryRaw.call(tx, q));
          tx.executeRaw = (q) => ((late += ended ? 1 : 0), executeRaw.call(tx, q));
          tx.rollback = () => ((ended = true), rollback.call(tx));
          tx.commit = () => ((ended = true), commit.call(tx));
          return tx;
        };
        return adapter;
      },
    };
    const prisma = new PrismaClient({ adapter: txonceAdapter(spied) });
    clients.push(prisma);
    const t = txonce(prisma, { transaction: { timeout: 200 } });
    const key = newKey("timed-out");
    const amount = 105 + Number(Object.keys(options).length);
    const error = await t
      .withIdempotency(key, async (tx) => {
        await tx.charge.create({ data: { accountId: "acc", amount } });
        await new Promise((resolve) => setTimeout(resolve, 600));
        return "late";
      })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(late).toBe(0);
    expect(await charges(amount)).toBe(0);
    expect(await stored(key)).toEqual([]);
    await expect(t.withIdempotency(newKey("next"), async () => "next")).resolves.toBe("next");
    await expect(t.withIdempotency(key, async () => "again")).resolves.toBe("again");
  });

  test("60 concurrent calls and application transactions on a pool of 3: each call's claim and save land in its own transaction", async () => {
    const { prisma } = wrappedClient(3);
    const t = txonce(prisma);
    const keys = Array.from({ length: 60 }, (_, i) => newKey(`many-${i}`));
    const results = await Promise.all([
      ...keys.map((key, i) =>
        t.withIdempotency(key, async (tx) => {
          const charge = await tx.charge.create({ data: { accountId: "acc", amount: 1000 + i } });
          await new Promise((resolve) => setTimeout(resolve, i % 7));
          return { i, id: charge.id };
        }, { transaction: { maxWait: 20_000 } }),
      ),
      ...Array.from({ length: 20 }, (_, i) =>
        prisma.$transaction(async (tx) => tx.charge.create({ data: { accountId: "acc", amount: 2000 + i } }), { maxWait: 20_000 }),
      ),
    ]);
    const { rows } = await db.pool.query<{ key: string; result: string }>("SELECT key, result FROM txonce_idempotency_keys WHERE key = ANY($1)", [keys]);
    expect(rows).toHaveLength(60);
    for (const row of rows) {
      const i = keys.indexOf(row.key);
      expect(row.result).toContain(`"i":${i},`);
      expect(row.result).toContain(`"id":${(results[i] as { id: number }).id}`);
    }
  });

  test("the application's own transactions are untouched, and a client disconnected and used again still works", async () => {
    const { prisma, sent } = wrappedClient(2);
    const t = txonce(prisma);
    await prisma.$transaction(async (tx) => tx.charge.create({ data: { accountId: "acc", amount: 106 } }));
    expect(await charges(106)).toBe(1);
    await t.withIdempotency(newKey("before-disconnect"), async () => 1);
    await prisma.$disconnect();
    await expect(t.withIdempotency(newKey("after-disconnect"), async () => 2)).resolves.toBe(2);
    const key = newKey("after-disconnect-inspect");
    await t.withIdempotency(key, async () => "inspected", { scope: "tenant" });
    await prisma.$disconnect();
    // Until Prisma connects the adapter again, txonce's statements go through Prisma (which connects it).
    await expect(t.keys.inspect({ scope: "tenant", key })).resolves.toMatchObject({ status: "completed", result: "inspected" });
    const throughPrisma = sent.filter((q) => q.includes("txonce_idempotency_keys")).length;
    await expect(t.keys.inspect({ scope: "tenant", key })).resolves.toMatchObject({ status: "completed" });
    await t.withIdempotency(newKey("reconnected"), async () => 3);
    expect(sent.filter((q) => q.includes("txonce_idempotency_keys"))).toHaveLength(throughPrisma);
  });

  test("under PrismaPg's statementNameGenerator (prepared statements), the save goes on its own, before COMMIT", async () => {
    const { prisma } = wrappedClient(2, { statementNameGenerator: (query) => `s_${Buffer.from(query.sql).toString("base64url").slice(0, 40)}_${query.sql.length}` });
    const key = newKey("named");
    await expect(txonce(prisma).withIdempotency(key, async () => "named")).resolves.toBe("named");
    expect(await stored(key)).toEqual([{ result: expect.stringContaining("named") }]);
  });

  test("over PGlite (pglite-prisma-adapter, which commits without a COMMIT statement): the same results", async () => {
    const pglite = new PGlite();
    try {
      await pglite.exec(schemaSql);
      const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPGlite(pglite)) });
      clients.push(prisma);
      const t = txonce(prisma);
      const key = newKey("pglite");
      await expect(t.withIdempotency(key, async () => ({ n: 1 }))).resolves.toEqual({ n: 1 });
      await expect(txonce(prisma, { replayCache: false }).withIdempotencyOutcome(key, async () => ({ n: 2 }))).resolves.toMatchObject({ replayed: true, value: { n: 1 } });
      await expect(t.withIdempotency(newKey("pglite-throws"), async () => Promise.reject(new Error("no")))).rejects.toThrow("no");
      expect((await pglite.query<{ n: number }>("SELECT count(*)::int AS n FROM txonce_idempotency_keys")).rows[0]?.n).toBe(1);
    } finally {
      await pglite.close();
    }
  });

  test("bad input is refused before anything: not an adapter, or not PostgreSQL; wrapping twice wraps once", () => {
    expect(() => txonceAdapter({} as never)).toThrow(InvalidArgumentError);
    expect(() => txonceAdapter(null as never)).toThrow(InvalidArgumentError);
    expect(() => txonceAdapter({ provider: "mysql", adapterName: "x", connect: async () => ({}) } as never)).toThrow(/PostgreSQL/);
    const once = txonceAdapter(new PrismaPg({ connectionString: db.url }));
    expect(txonceAdapter(once)).toBe(once);
  });
});
