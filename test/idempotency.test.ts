/**
 * withIdempotency through Prisma 7, beside the conformance suite (adapters.test.ts, which every
 * adapter passes: first call, replay, rollback, fingerprints, scopes, expiry, isolation levels
 * ...): what is Prisma's own (Decimal, its error codes, extended clients, timeouts), the cost of a
 * replay in statements, the replay cache, the codec's refusals, and the whole list of bad input.
 */
import { Decimal } from "@prisma/client/runtime/client";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  SchemaNotInstalledError,
  TxonceError,
  UnencodableValueError,
} from "../src/index.js";
import { txonce, type PrismaClientLike } from "../src/adapters/prisma.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
let keySeq = 0;
const newKey = (label = "k") => `${label}-${++keySeq}-${Math.random().toString(36).slice(2)}`;

beforeAll(async () => {
  db = await createTestDatabase();
  await db.prisma.account.create({ data: { id: "acc", balance: 1_000_000 } });
});
afterAll(async () => {
  await db?.drop();
});

async function keyRows(key: string) {
  const { rows } = await db.pool.query(
    "SELECT scope, key, fingerprint, result, created_at, expires_at FROM txonce_idempotency_keys WHERE key = $1 ORDER BY scope",
    [key],
  );
  return rows;
}
async function chargeCount(amount: number) {
  const { rows } = await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [amount]);
  return rows[0].n as number;
}
let amountSeq = 1000;
const newAmount = () => ++amountSeq;

describe("first call", () => {
  test("returns the operation's value unchanged, and withIdempotency works destructured", async () => {
    const { withIdempotency } = txonce(db.prisma);
    const value = { ok: true, at: new Date("2026-01-02T03:04:05.678Z") };
    await expect(withIdempotency(newKey(), async () => value)).resolves.toBe(value);
  });

  test("leaves the caller's lock_timeout alone inside the operation", async () => {
    const { withIdempotency } = txonce(db.prisma, { lockTimeout: "1234ms" });
    const inside = await withIdempotency(newKey(), async (tx) =>
      tx.$queryRawUnsafe<{ lock_timeout: string }[]>("SHOW lock_timeout"),
    );
    expect(inside[0]!.lock_timeout).toBe("0");
  });
});

describe("replay", () => {
  test("restores every supported type faithfully", async () => {
    const { withIdempotency } = txonce(db.prisma);
    const original = {
      date: new Date("2026-11-27T12:34:56.789Z"),
      big: 12345678901234567890n,
      decimal: new Decimal("12345678901234567890.0123456789"),
      bytes: new Uint8Array([0, 1, 2, 253, 254, 255]),
      buffer: Buffer.from("héllo"),
      nothing: null,
      missing: undefined,
      nested: { list: [1, "two", { three: [new Date(0), -0, Number.NaN, Infinity] }], empty: {} },
      map: new Map<unknown, unknown>([["a", 1], [2, new Set(["x"])]]),
      regexp: /ab+c/gi,
      url: new URL("https://example.com/a?b=c"),
      floats: new Float64Array([1.5, -2.25]),
    };
    const key = newKey();
    await withIdempotency(key, async () => original);
    const replayed = await withIdempotency<typeof original>(key, async () => {
      throw new Error("must not run");
    });
    expect(replayed).toStrictEqual(original);
    expect(replayed).not.toBe(original);
    expect(replayed.decimal).toBeInstanceOf(Decimal);
    expect(replayed.decimal.equals(original.decimal)).toBe(true);
    expect(Buffer.isBuffer(replayed.buffer)).toBe(true);
    expect(replayed.bytes.constructor).toBe(Uint8Array);
    expect("missing" in replayed).toBe(true);
    expect(replayed.big).toBe(original.big);
    expect(Object.is(replayed.nested.list[2] && (replayed.nested.list[2] as { three: unknown[] }).three[1], -0)).toBe(true);
  });

  test.each([
    ["undefined", undefined],
    ["null", null],
    ["a string", "plain"],
    ["a bigint", -42n],
    ["an array", [1, [2, [3]]]],
  ])("replays %s as a top-level result", async (_label, value) => {
    const { withIdempotency } = txonce(db.prisma);
    const key = newKey();
    await withIdempotency(key, async () => value);
    await expect(withIdempotency(key, async () => "other")).resolves.toStrictEqual(value);
  });

  test("costs no query in the process that stored it, one transaction and one poll in a process that has not seen it", async () => {
    const counts = { queries: 0, transactions: 0, inTransaction: 0 };
    const counting: PrismaClientLike = {
      $queryRawUnsafe: (...args: Parameters<typeof db.prisma.$queryRawUnsafe>) => {
        counts.queries++;
        return db.prisma.$queryRawUnsafe(...args);
      },
      $transaction: ((fn: (tx: unknown) => Promise<unknown>, options?: object) => {
        counts.transactions++;
        return db.prisma.$transaction((tx) => {
          const countingTx = new Proxy(tx, {
            get: (target, property) =>
              property === "$queryRawUnsafe"
                ? (...args: Parameters<typeof tx.$queryRawUnsafe>) => {
                    counts.inTransaction++;
                    return target.$queryRawUnsafe(...args);
                  }
                : Reflect.get(target, property),
          });
          return fn(countingTx);
        }, options);
      }) as PrismaClientLike["$transaction"],
      $connect: () => db.prisma.$connect(),
    };
    const reset = () => Object.assign(counts, { queries: 0, transactions: 0, inTransaction: 0 });
    const here = txonce(counting);
    const key = newKey();
    await here.withIdempotency(key, async () => "first");
    // No lookup before the transaction: claim and save inside it.
    expect(counts).toEqual({ queries: 0, transactions: 1, inTransaction: 2 });
    reset();
    await expect(here.withIdempotency(key, async () => "again")).resolves.toBe("first");
    expect(counts).toEqual({ queries: 0, transactions: 0, inTransaction: 0 });
    reset();
    // Another instance stands for another process: its claim finds the key taken, rolls back, and
    // one poll outside the transaction returns the record...
    const elsewhere = txonce(counting);
    await expect(elsewhere.withIdempotency(key, async () => "again")).resolves.toBe("first");
    expect(counts).toEqual({ queries: 1, transactions: 1, inTransaction: 1 });
    reset();
    // ...which it keeps from then on.
    await expect(elsewhere.withIdempotency(key, async () => "again")).resolves.toBe("first");
    expect(counts).toEqual({ queries: 0, transactions: 0, inTransaction: 0 });
  });
});

describe("the replay cache", () => {
  test("drops a record when it expires by the database's clock: the next call runs", async () => {
    const { withIdempotencyOutcome } = txonce(db.prisma);
    const key = newKey();
    // Long enough for the replay below to come before the expiry on a loaded machine.
    const first = await withIdempotencyOutcome(key, async () => "old", { retention: 2000 });
    await expect(withIdempotencyOutcome(key, async () => "new")).resolves.toMatchObject({ value: "old", replayed: true });
    await sleep(first.expiresAt.getTime() - Date.now() + 50);
    const second = await withIdempotencyOutcome(key, async () => "new");
    expect(second).toMatchObject({ value: "new", replayed: false });
    expect((await keyRows(key))[0].result).toContain("new");
  });

  test("a record deleted behind txonce's back is replayed from memory for at most maxAge; off, never", async () => {
    const cached = txonce(db.prisma, { replayCache: { maxAge: 300 } });
    const uncached = txonce(db.prisma, { replayCache: false });
    const key = newKey();
    await cached.withIdempotency(key, async () => "kept");
    await uncached.withIdempotency(key, async () => "other"); // reads it, keeps nothing
    await db.pool.query("DELETE FROM txonce_idempotency_keys WHERE key = $1", [key]);
    await expect(cached.withIdempotency(key, async () => "ran")).resolves.toBe("kept");
    await expect(uncached.withIdempotency(key, async () => "ran again")).resolves.toBe("ran again");
    await db.pool.query("DELETE FROM txonce_idempotency_keys WHERE key = $1", [key]);
    await sleep(350);
    await expect(cached.withIdempotency(key, async () => "ran")).resolves.toBe("ran");
  });

  test("maxBytes bounds what is kept: least recently used first, a result larger than the bound never", async () => {
    const counting = { queries: 0 };
    const client: PrismaClientLike = {
      $queryRawUnsafe: (...args: Parameters<typeof db.prisma.$queryRawUnsafe>) => {
        counting.queries++;
        return db.prisma.$queryRawUnsafe(...args);
      },
      $transaction: db.prisma.$transaction.bind(db.prisma) as PrismaClientLike["$transaction"],
      $connect: () => db.prisma.$connect(),
    };
    const small = txonce(client, { replayCache: { maxBytes: 4000 } });
    const big = "x".repeat(3000);
    const [k1, k2, k3] = [newKey(), newKey(), newKey()];
    await small.withIdempotency(k1, async () => "a");
    await small.withIdempotency(k2, async () => "b");
    await small.withIdempotency(k3, async () => big); // 6 kB encoded: not kept
    const replayed = async (key: string) => {
      const before = counting.queries;
      await small.withIdempotency(key, async () => "ran");
      return counting.queries === before ? "memory" : "database";
    };
    expect(await replayed(k1)).toBe("memory");
    expect(await replayed(k2)).toBe("memory");
    expect(await replayed(k3)).toBe("database");
  });
});

describe("values the codec cannot restore", () => {
  class Money {
    constructor(readonly cents: bigint, readonly currency: string) {}
  }

  test.each([
    ["a function", { onDone: () => 1 }, "$.onDone", "a function"],
    ["a symbol", { tag: Symbol("x") }, "$.tag", "a symbol"],
    ["an unknown class", { items: [new Money(5n, "EUR")] }, "$.items[0]", "an instance of class Money"],
    ["a WeakMap", new WeakMap(), "$", "an instance of class WeakMap"],
  ])("refuses %s: rolls back, stores nothing, says where", async (_label, value, path, found) => {
    const { withIdempotency } = txonce(db.prisma);
    const key = newKey();
    const amount = newAmount();
    const error = await withIdempotency(key, async (tx) => {
      await tx.charge.create({ data: { accountId: "acc", amount } });
      return value;
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnencodableValueError);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ code: "TXONCE_UNENCODABLE_VALUE", argument: "result", path });
    expect((error as UnencodableValueError).found).toContain(found);
    expect((error as Error).message).toContain(path);
    expect(await keyRows(key)).toEqual([]);
    expect(await chargeCount(amount)).toBe(0);
  });

  test("stores a class once it is registered as a custom type", async () => {
    const { withIdempotency } = txonce(db.prisma, {
      types: [
        {
          name: "Money",
          isApplicable: (v): v is Money => v instanceof Money,
          serialize: (m: Money) => ({ cents: m.cents.toString(), currency: m.currency }),
          deserialize: (s: { cents: string; currency: string }) => new Money(BigInt(s.cents), s.currency),
        },
      ],
    });
    const key = newKey();
    await withIdempotency(key, async () => ({ price: new Money(1999n, "EUR") }));
    const replayed = await withIdempotency<unknown>(key, async () => null);
    expect(replayed).toStrictEqual({ price: new Money(1999n, "EUR") });
    expect((replayed as { price: Money }).price).toBeInstanceOf(Money);
  });
});

describe("when the operation throws", () => {
  test("a database error inside the operation also rolls everything back", async () => {
    const { withIdempotency } = txonce(db.prisma);
    const key = newKey();
    const error = await withIdempotency(key, (tx) =>
      tx.charge.create({ data: { accountId: "no-such-account", amount: 1 } }),
    ).catch((e: unknown) => e);
    expect(error).not.toBeInstanceOf(TxonceError);
    expect((error as { code?: string }).code).toBe("P2003"); // Prisma's foreign key violation, untouched
    expect(await keyRows(key)).toEqual([]);
  });
});

describe("fingerprint", () => {
  test("array order, types and presence matter", async () => {
    const { withIdempotency } = txonce(db.prisma);
    const cases: [unknown, unknown][] = [
      [[1, 2], [2, 1]],
      [{ n: 1n }, { n: "1" }],
      [{ at: new Date(0) }, { at: new Date(0).toISOString() }],
      [{ a: 1 }, undefined],
    ];
    for (const [first, second] of cases) {
      const key = newKey();
      await withIdempotency(key, async () => 1, { fingerprint: first });
      await expect(withIdempotency(key, async () => 2, { fingerprint: second })).rejects.toBeInstanceOf(
        IdempotencyKeyReusedError,
      );
    }
  });
});

describe("expiry", () => {
  test("a record that expires while the operation of a retry would run is replaced in one transaction", async () => {
    // A failed replacement leaves the expired row as it was.
    const key = newKey();
    await txonce(db.prisma).withIdempotency(key, async () => "old");
    await db.pool.query("UPDATE txonce_idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1", [key]);
    const { withIdempotency } = txonce(db.prisma);
    await expect(withIdempotency(key, async () => { throw new Error("nope"); })).rejects.toThrow("nope");
    const [row] = await keyRows(key);
    expect(row.result).toContain("old");
    await expect(withIdempotency(key, async () => "fresh")).resolves.toBe("fresh");
  });
});

describe("bad input is refused before anything is written", () => {
  const invalid: [string, () => Promise<unknown>, string][] = [];
  const add = (label: string, argument: string, call: (t: ReturnType<typeof txonce>) => Promise<unknown>) =>
    invalid.push([label, () => call(txonce(db.prisma)), argument]);
  add("an empty key", "key", (t) => t.withIdempotency("", async () => 1));
  add("a numeric key", "key", (t) => t.withIdempotency(42 as unknown as string, async () => 1));
  add("an undefined key", "key", (t) => t.withIdempotency(undefined as unknown as string, async () => 1));
  add("a 256-character key", "key", (t) => t.withIdempotency("k".repeat(256), async () => 1));
  add("a key with NUL", "key", (t) => t.withIdempotency("a\u0000b", async () => 1));
  add("an empty scope", "scope", (t) => t.withIdempotency("k", async () => 1, { scope: "" }));
  add("a 256-character scope", "scope", (t) => t.withIdempotency("k", async () => 1, { scope: "s".repeat(256) }));
  add("a non-string scope", "scope", (t) => t.withIdempotency("k", async () => 1, { scope: 7 as unknown as string }));
  add("a retention that is not a duration", "retention", (t) => t.withIdempotency("k", async () => 1, { retention: "two days" }));
  add("a zero retention", "retention", (t) => t.withIdempotency("k", async () => 1, { retention: 0 }));
  add("a negative retention", "retention", (t) => t.withIdempotency("k", async () => 1, { retention: "-5m" }));
  add("a zero lockTimeout", "lockTimeout", (t) => t.withIdempotency("k", async () => 1, { lockTimeout: 0 }));
  add("a fingerprint holding a function", "fingerprint", (t) => t.withIdempotency("k", async () => 1, { fingerprint: { f() {} } }));
  add("an operation that is not a function", "operation", (t) => t.withIdempotency("k", "run" as never));

  test.each(invalid)("%s", async (_label, call, argument) => {
    const { rows: before } = await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys");
    const error = await call().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ argument, name: expect.stringMatching(/Error$/) });
    expect((error as TxonceError).code).toMatch(/^TXONCE_/);
    const { rows: after } = await db.pool.query("SELECT count(*)::int AS n FROM txonce_idempotency_keys");
    expect(after[0].n).toBe(before[0].n);
  });

  test("a 255-character key and scope are accepted, and the limit is configurable", async () => {
    await expect(txonce(db.prisma).withIdempotency("k".repeat(255), async () => 1, { scope: "s".repeat(255) })).resolves.toBe(1);
    const strict = txonce(db.prisma, { maxKeyLength: 8 });
    await expect(strict.withIdempotency("123456789", async () => 1)).rejects.toMatchObject({ argument: "key" });
  });

  test("the length counts Unicode code points, as the message says: 255 emoji are accepted, 256 are not", async () => {
    const thumbs = "\u{1F44D}"; // two UTF-16 units
    const key = thumbs.repeat(255);
    expect(key.length).toBe(510);
    await expect(txonce(db.prisma).withIdempotency(key, async () => "ok", { scope: "emoji" })).resolves.toBe("ok");
    const error = await txonce(db.prisma).withIdempotency(thumbs.repeat(256), async () => 1).catch((e: unknown) => e);
    expect(error).toMatchObject({ argument: "key", reason: "is 256 characters long, the limit is 255 (counted in Unicode code points)" });
    await expect(txonce(db.prisma, { maxKeyLength: 3 }).withIdempotency("é\u{1F44D}x", async () => 3, { scope: "é" })).resolves.toBe(3);
  });

  test("bad defaults are refused when the instance is made", () => {
    expect(() => txonce(db.prisma, { retention: "soon" })).toThrow(InvalidArgumentError);
    expect(() => txonce(db.prisma, { lockTimeout: "soon" })).toThrow(InvalidArgumentError);
    expect(() => txonce(db.prisma, { maxKeyLength: 0 })).toThrow(InvalidArgumentError);
    expect(() => txonce(db.prisma, { replayCache: { maxBytes: -1 } })).toThrow(/replayCache.maxBytes/);
    expect(() => txonce(db.prisma, { replayCache: { maxAge: "never" } })).toThrow(/replayCache.maxAge/);
  });

  test("lockTimeout may be longer than the transaction timeout: a waiting call holds no transaction", async () => {
    const key = newKey();
    const t = txonce(db.prisma, { lockTimeout: "3s", transaction: { timeout: 500 } });
    const elsewhere = txonce(db.newPrisma({ max: 2 }), { lockTimeout: "3s", transaction: { timeout: 500 } });
    const first = t.withIdempotency(key, async () => {
      await sleep(400);
      return "first";
    });
    await sleep(50);
    // Waits ~350 ms across the other instance's attempt; each of its own transactions is short.
    await expect(elsewhere.withIdempotency(key, async () => "second")).resolves.toBe("first");
    await expect(first).resolves.toBe("first");
  });
});

describe("transaction options", () => {
  test("timeout: an operation that outlives it is rolled back and nothing is stored", async () => {
    const { withIdempotency } = txonce(db.prisma, { lockTimeout: 50, transaction: { timeout: 300 } });
    const key = newKey();
    const amount = newAmount();
    await expect(
      withIdempotency(key, async (tx) => {
        await tx.charge.create({ data: { accountId: "acc", amount } });
        await new Promise((resolve) => setTimeout(resolve, 600));
        return "late";
      }),
    ).rejects.toThrow();
    expect(await keyRows(key)).toEqual([]);
    expect(await chargeCount(amount)).toBe(0);
  });
});

test("a database without the txonce tables gives SchemaNotInstalledError", async () => {
  const bare = db.newPrisma({ max: 1 });
  await bare.$executeRawUnsafe("CREATE SCHEMA IF NOT EXISTS empty_schema");
  await bare.$executeRawUnsafe("SET search_path TO empty_schema");
  const error = await txonce(bare).withIdempotency(newKey(), async () => 1).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(SchemaNotInstalledError);
  expect(error).toMatchObject({ code: "TXONCE_SCHEMA_NOT_INSTALLED" });
  expect((error as Error).cause).toBeDefined();
  // Looked up once the claim's transaction let go of the pool's one connection (not timed out
  // waiting for it): the schema searched and where the tables are.
  expect(error).toMatchObject({ schema: "empty_schema", foundIn: ["public"] });
  expect((error as Error).message).toMatch(/^The txonce tables are not in schema "empty_schema" \(the connection's search_path\) of this database \(found in schema "public": pass \{ schema: "public" \}\)\.$/);
});
