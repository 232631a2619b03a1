/**
 * Type tests (run by `vitest` through its typecheck mode, never executed): the structural types
 * of the adapters still match the real Prisma 7 client and node-postgres, and the operation gets
 * a typed transaction handle and returns a typed result.
 */
import type pg from "pg";
import { describe, expectTypeOf, test } from "vitest";
import type { Charge, PrismaClient } from "../generated/prisma/client.js";
import {
  txonce as txoncePg,
  type PgClientLike,
  type PgPoolLike,
  type PgTransactionOptions,
} from "../src/adapters/pg.js";
import {
  txonce,
  type PrismaClientLike,
  type PrismaTransactionLike,
  type PrismaTransactionOptions,
  type TransactionClientOf,
  type Txonce,
} from "../src/adapters/prisma.js";
import type { Idempotency, IdempotencyOutcome } from "../src/index.js";

declare const prisma: PrismaClient;
declare const pool: pg.Pool;
declare const key: string;

/** Methods of a `PrismaClient` that its interactive transaction client does not have. */
type ClientOnlyMethods = "$connect" | "$disconnect" | "$on" | "$extends";
type Simplify<T> = { [K in keyof T]: T[K] };

const chargeData = { data: { accountId: "a1", amount: 10 } };

/** An extended client: a computed result field and a model method. */
function extend(client: PrismaClient) {
  return client.$extends({
    result: {
      charge: {
        amountCents: {
          needs: { amount: true },
          compute: (charge) => charge.amount.mul(100).toNumber(),
        },
      },
    },
    model: {
      charge: {
        async latest(accountId: string) {
          return accountId.length;
        },
      },
    },
  });
}
const extended = extend(prisma);
type ExtendedClient = typeof extended;

describe("Prisma adapter", () => {
  test("the generated PrismaClient matches PrismaClientLike", () => {
    expectTypeOf<PrismaClient>().toExtend<PrismaClientLike>();
    expectTypeOf<PrismaClient>().toExtend<PrismaTransactionLike>();
    expectTypeOf(txonce).toBeCallableWith(prisma);
    expectTypeOf(txonce(prisma)).toEqualTypeOf<Txonce<PrismaClient>>();
  });

  test("TransactionClientOf gives the interactive transaction client", () => {
    type Tx = TransactionClientOf<PrismaClient>;
    expectTypeOf<Tx>().not.toBeAny();
    expectTypeOf<Tx>().not.toBeNever();
    expectTypeOf<Tx>().toHaveProperty("charge");
    expectTypeOf<Tx["charge"]>().toHaveProperty("create");
    expectTypeOf<Tx>().toExtend<PrismaTransactionLike>();
    expectTypeOf<Tx>().not.toEqualTypeOf<PrismaClient>();
    // Prisma's ITX deny list. `$transaction` is NOT on it in Prisma 7: a transaction client's
    // `$transaction` opens a nested transaction (a savepoint), so it is deliberately not checked.
    expectTypeOf<Extract<keyof Tx, ClientOnlyMethods>>().toBeNever();
    expectTypeOf<Extract<keyof PrismaClient, ClientOnlyMethods>>().toEqualTypeOf<ClientOnlyMethods>();
    expectTypeOf<TransactionClientOf<{ notAClient: true }>>().toBeNever();
  });

  test("withIdempotency passes a typed tx and returns the operation's result type", () => {
    const { withIdempotency, withIdempotencyOutcome } = txonce(prisma);
    const charge = withIdempotency(key, async (tx) => {
      expectTypeOf(tx).not.toBeAny();
      expectTypeOf(tx).toEqualTypeOf<TransactionClientOf<PrismaClient>>();
      return tx.charge.create(chargeData);
    });
    expectTypeOf(charge).toEqualTypeOf<Promise<Charge>>();
    expectTypeOf(charge).resolves.toHaveProperty("amount");

    const outcome = withIdempotencyOutcome(key, async (tx) => tx.charge.create(chargeData));
    expectTypeOf(outcome).toEqualTypeOf<Promise<IdempotencyOutcome<Charge>>>();
    expectTypeOf(outcome).resolves.toHaveProperty("replayed").toEqualTypeOf<boolean>();

    // A value that is not a promise-returning operation is rejected.
    // @ts-expect-error the operation must return a promise
    void withIdempotency(key, (tx) => tx.charge);
    // @ts-expect-error the transaction client cannot disconnect the client
    void withIdempotency(key, async (tx) => tx.$disconnect());
    // @ts-expect-error no such model
    void withIdempotency(key, async (tx) => tx.refund.create(chargeData));
  });

  test("options are typed with Prisma's transaction options", () => {
    expectTypeOf<Txonce<PrismaClient>>().toExtend<
      Idempotency<TransactionClientOf<PrismaClient>, PrismaTransactionOptions>
    >();
    txonce(prisma, { retention: "7d", lockTimeout: 1000, transaction: { isolationLevel: "Serializable" } });
    const { withIdempotency } = txonce(prisma);
    void withIdempotency(key, async () => 1, { scope: "acct_1", transaction: { timeout: 10_000 } });
    // @ts-expect-error not a Prisma isolation level
    void withIdempotency(key, async () => 1, { transaction: { isolationLevel: "serializable" } });
    // @ts-expect-error not an option
    txonce(prisma, { retentionMs: 1000 });
  });

  test("an extended client keeps its extensions on tx and in the result", () => {
    expectTypeOf<ExtendedClient>().toExtend<PrismaClientLike>();
    type Tx = TransactionClientOf<ExtendedClient>;
    expectTypeOf<Tx>().not.toBeAny();
    expectTypeOf<Tx>().not.toBeNever();
    expectTypeOf<Extract<keyof Tx, ClientOnlyMethods>>().toBeNever();

    const { withIdempotency } = txonce(extended);
    const charge = withIdempotency(key, async (tx) => {
      expectTypeOf(tx).not.toBeAny();
      expectTypeOf(tx.charge.latest).toEqualTypeOf<(accountId: string) => Promise<number>>();
      return tx.charge.create(chargeData);
    });
    expectTypeOf(charge).resolves.toEqualTypeOf<Simplify<Charge & { amountCents: number }>>();
  });

  test("something that is not a Prisma client is rejected", () => {
    // @ts-expect-error a pg pool is not a Prisma client
    txonce(pool);
    // @ts-expect-error $transaction is missing
    txonce({ $queryRawUnsafe: async () => [] });
  });
});

describe("pg adapter", () => {
  test("pg.Pool matches PgPoolLike and pg.PoolClient matches PgClientLike", () => {
    expectTypeOf<pg.Pool>().toExtend<PgPoolLike>();
    expectTypeOf<pg.PoolClient>().toExtend<PgClientLike>();
  });

  test("the operation gets a pg.PoolClient and returns its result type", () => {
    const { withIdempotency, withIdempotencyOutcome } = txoncePg(pool);
    const id = withIdempotency(key, async (client) => {
      expectTypeOf(client).not.toBeAny();
      expectTypeOf(client).toEqualTypeOf<pg.PoolClient>();
      const { rows } = await client.query<{ id: number }>("INSERT INTO charges DEFAULT VALUES RETURNING id");
      return rows[0]!.id;
    });
    expectTypeOf(id).toEqualTypeOf<Promise<number>>();
    expectTypeOf(withIdempotencyOutcome(key, async () => "ok")).toEqualTypeOf<
      Promise<IdempotencyOutcome<string>>
    >();
    expectTypeOf(txoncePg(pool)).toExtend<Idempotency<pg.PoolClient, PgTransactionOptions>>();
  });

  test("options are typed with pg's transaction options", () => {
    txoncePg(pool, { transaction: { isolationLevel: "repeatable read" } });
    // @ts-expect-error not a pg isolation level (Prisma's spelling)
    txoncePg(pool, { transaction: { isolationLevel: "RepeatableRead" } });
    // @ts-expect-error a Prisma client is not a pg pool
    txoncePg(prisma);
  });
});
