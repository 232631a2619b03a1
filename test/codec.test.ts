/**
 * What the codec stores and refuses, on every path that uses it: results (through a real
 * withIdempotency on PostgreSQL, so the replay is the decoded row), fingerprints and outbox
 * payloads. Plain data with the prototypes query-string parsers give it, circular values, errors.
 */
import { parse as parseQueryString } from "node:querystring";
import qs from "qs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { Codec } from "../src/codec.js";
import { UnencodableValueError } from "../src/errors.js";
import { fingerprintOf } from "../src/fingerprint.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ prismaPoolSize: 2 });
});
afterAll(async () => {
  await db?.drop();
});

let keySeq = 0;
const newKey = () => `codec-${++keySeq}-${Math.random().toString(36).slice(2)}`;

/** Stores `value` as a result, then replays it: what a retry gets. */
async function storedAndReplayed(value: unknown): Promise<unknown> {
  const { withIdempotencyOutcome } = txonce(db.prisma);
  const key = newKey();
  await withIdempotencyOutcome(key, async () => value);
  const replay = await withIdempotencyOutcome<unknown>(key, async () => "must not run");
  expect(replay.replayed).toBe(true);
  return replay.value;
}

/** Refused as a result: the error, and nothing stored. */
async function refusedAsResult(value: unknown): Promise<UnencodableValueError> {
  const key = newKey();
  const error = await txonce(db.prisma).withIdempotency(key, async () => value).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(UnencodableValueError);
  const { rows } = await db.pool.query("SELECT 1 FROM txonce_idempotency_keys WHERE key = $1", [key]);
  expect(rows).toEqual([]);
  return error as UnencodableValueError;
}

/** fast-querystring's objects (behind @fastify/formbody): a prototype that is an empty object without a prototype. */
function fastQuerystringObject(entries: Record<string, unknown>): Record<string, unknown> {
  function Empty() {}
  Empty.prototype = Object.create(null);
  return Object.assign(new (Empty as unknown as new () => object)(), entries) as Record<string, unknown>;
}

describe("plain data, whatever prototype its parser gave it", () => {
  const parsed: [string, () => Record<string, unknown>][] = [
    ["Object.create(null)", () => Object.assign(Object.create(null) as object, { amount: "1.00" })],
    ["node:querystring (express.urlencoded())", () => parseQueryString("amount=1.00&tag=a&tag=b")],
    ["qs with plainObjects", () => qs.parse("amount=1.00&meta[order]=42&items[0]=x", { plainObjects: true })],
    ["fast-querystring's prototype (@fastify/formbody)", () => fastQuerystringObject({ amount: "1.00", tag: ["a", "b"] })],
  ];

  test.each(parsed)("%s: stored and replayed as an object literal", async (_name, make) => {
    const value = make();
    const replayed = await storedAndReplayed({ body: value });
    expect(replayed).toEqual({ body: { ...value } });
    expect(Object.getPrototypeOf((replayed as { body: object }).body)).toBe(Object.prototype);
  });

  test.each(parsed)("%s: fingerprints like the same object literal", (_name, make) => {
    const codec = new Codec();
    const value = make();
    const literal = JSON.parse(JSON.stringify(value)) as unknown;
    expect(fingerprintOf(codec, value)).toBe(fingerprintOf(codec, literal));
  });

  test("a prototype with methods or a constructor is a class, not plain data", async () => {
    class Money {
      constructor(readonly cents: number) {}
    }
    const withMethod = Object.create({ total() { return 1; } }) as object;
    expect((await refusedAsResult({ price: new Money(5) })).found).toMatch(/^an instance of class Money \(register it with the `types` option\)$/);
    expect((await refusedAsResult(withMethod)).path).toBe("$");
  });
});

describe("circular values are refused on every path, with where the cycle closes", () => {
  const circular = () => {
    const order: Record<string, unknown> = { id: 1, lines: [] };
    (order.lines as unknown[]).push({ order });
    return order;
  };

  test("as a result: UnencodableValueError, nothing stored", async () => {
    const error = await refusedAsResult(circular());
    expect(error).toMatchObject({ argument: "result", path: "$.lines[0].order", found: "a circular reference (to $)" });
  });

  test("as a fingerprint: refused before anything runs", async () => {
    let ran = false;
    const error = await txonce(db.prisma)
      .withIdempotency(newKey(), async () => (ran = true), { fingerprint: { body: circular() } })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ argument: "fingerprint", path: "$.body.lines[0].order", found: "a circular reference (to $.body)" });
    expect(ran).toBe(false);
  });

  test("as an outbox payload", async () => {
    const t = txonce(db.prisma);
    const error = await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "t", payload: circular() })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnencodableValueError);
    expect(error).toMatchObject({ argument: "messages[0].payload", found: "a circular reference (to $)" });
  });

  test("through a Map and a Set too", () => {
    const codec = new Codec();
    const map = new Map<string, unknown>();
    map.set("self", map);
    const set = new Set<unknown>();
    set.add({ set });
    expect(() => codec.encode(map)).toThrow(/a circular reference \(to \$\) at \$\.get\("self"\)/);
    expect(() => codec.encode([set])).toThrow(/a circular reference \(to \$\[0\]\)/);
  });

  test("the same object in two places is not a cycle: stored once, replayed shared", async () => {
    const address = { city: "Lyon" };
    const replayed = (await storedAndReplayed({ billing: address, shipping: address })) as Record<string, unknown>;
    expect(replayed).toEqual({ billing: { city: "Lyon" }, shipping: { city: "Lyon" } });
    expect(replayed.billing).toBe(replayed.shipping);
  });
});

describe("errors as results", () => {
  test.each([Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError].map((c) => [c.name, c] as const))(
    "%s is stored as its class, name and message, and replayed as that class",
    async (_name, ErrorClass) => {
      const replayed = (await storedAndReplayed({ error: new ErrorClass("card declined") })) as { error: Error };
      expect(replayed.error).toBeInstanceOf(ErrorClass);
      expect(Object.getPrototypeOf(replayed.error)).toBe(ErrorClass.prototype);
      expect(replayed.error.name).toBe(ErrorClass.name);
      expect(replayed.error.message).toBe("card declined");
      expect(replayed.error.stack).toBe(`${ErrorClass.name}: card declined`);
    },
  );

  test("a name of its own is kept (set by assignment, as is usual)", async () => {
    const error = new Error("no funds");
    error.name = "DeclinedError";
    const replayed = (await storedAndReplayed(error)) as Error;
    expect(replayed).toBeInstanceOf(Error);
    expect(replayed.name).toBe("DeclinedError");
    expect(replayed.message).toBe("no funds");
  });

  test("an error with a cause or properties of its own is refused: they would be lost", async () => {
    const withCause = new Error("declined", { cause: new Error("card expired") });
    const withCode = Object.assign(new TypeError("declined"), { code: "card_declined" });
    expect((await refusedAsResult(withCause)).found).toMatch(/^an error \(Error\) with a `cause` property, which would be lost/);
    expect((await refusedAsResult({ e: withCode })).found).toMatch(/^an error \(TypeError\) with a `code` property, which would be lost/);
  });

  test("an error class of your own is refused like any class, unless registered", async () => {
    class DeclinedError extends Error {}
    expect((await refusedAsResult(new DeclinedError("x"))).found).toBe(
      "an instance of class DeclinedError, an error class of your own (register it with the `types` option, or return a plain object)",
    );
  });
});

test("a node-postgres query result is refused with what to return instead", async () => {
  const result = await db.pool.query("SELECT 1 AS one");
  expect((await refusedAsResult(result)).found).toBe(
    "a query result (an instance of class Result); return its `rows`, or the values you need from them, instead",
  );
});
