/**
 * Type tests (run by `vitest` through its typecheck mode, never executed): the structural types
 * of the adapters still match the real clients (Prisma 7, node-postgres, Kysely, Drizzle, Knex,
 * TypeORM, postgres.js), and the operation gets the library's own transaction type and returns a
 * typed result. An upstream change of a client's types breaks CI here, not users.
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
import type { PgTransaction } from "drizzle-orm/pg-core";
import type { NodePgDatabase, NodePgQueryResultHKT } from "drizzle-orm/node-postgres";
import type { PostgresJsDatabase } from "drizzle-orm/postgres-js";
import type { Knex } from "knex";
import type { Generated, Kysely, Transaction } from "kysely";
import type postgres from "postgres";
import type { DataSource, EntityManager } from "typeorm";
import { txonce as txonceDrizzle, type DrizzleDatabaseLike } from "../src/adapters/drizzle.js";
import { txonce as txonceKnex, type KnexLike } from "../src/adapters/knex.js";
import { txonce as txonceKysely, type KyselyLike, type KyselyTransactionOf } from "../src/adapters/kysely.js";
import { txonce as txoncePostgres, type PostgresSqlLike } from "../src/adapters/postgres.js";
import { txonce as txonceTypeorm, type TypeormDataSourceLike } from "../src/adapters/typeorm.js";
import { txonceExtension } from "../src/adapters/prisma.js";

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

// ---------------------------------------------------------------------------------------------
// The other adapters: each structural type still matches the real client, and the operation's
// `tx` is the library's own transaction type.

interface KyselyDb {
  charges: { id: Generated<number>; account_id: string; amount: string };
}
declare const kysely: Kysely<KyselyDb>;
declare const drizzleOnPg: NodePgDatabase;
declare const drizzleOnPostgresJs: PostgresJsDatabase;
declare const knex: Knex;
declare const dataSource: DataSource;
declare const sql: postgres.Sql;

describe("Kysely adapter", () => {
  test("Kysely<DB> matches KyselyLike, and the operation gets Transaction<DB>", () => {
    expectTypeOf<Kysely<KyselyDb>>().toExtend<KyselyLike<Transaction<KyselyDb>>>();
    expectTypeOf<KyselyTransactionOf<Kysely<KyselyDb>>>().toEqualTypeOf<Transaction<KyselyDb>>();
    const id = txonceKysely(kysely).withIdempotency(key, async (trx) => {
      expectTypeOf(trx).toEqualTypeOf<Transaction<KyselyDb>>();
      return (await trx.insertInto("charges").values({ account_id: "a", amount: "1" }).returning("id").executeTakeFirstOrThrow()).id;
    });
    expectTypeOf(id).toEqualTypeOf<Promise<number>>();
    txonceKysely(kysely, { transaction: { isolationLevel: "serializable", accessMode: "read write" } });
    // @ts-expect-error Prisma's spelling
    txonceKysely(kysely, { transaction: { isolationLevel: "Serializable" } });
    // @ts-expect-error a pg pool is not a Kysely instance
    txonceKysely(pool);
  });
});

describe("Drizzle adapter", () => {
  test("drizzle on node-postgres and on postgres.js match DrizzleDatabaseLike; the operation gets Drizzle's transaction", () => {
    type PgTx = Parameters<Parameters<NodePgDatabase["transaction"]>[0]>[0];
    type JsTx = Parameters<Parameters<PostgresJsDatabase["transaction"]>[0]>[0];
    expectTypeOf<NodePgDatabase>().toExtend<DrizzleDatabaseLike<PgTx>>();
    expectTypeOf<PostgresJsDatabase>().toExtend<DrizzleDatabaseLike<JsTx>>();
    expectTypeOf<PgTx["rollback"]>().toEqualTypeOf<PgTransaction<NodePgQueryResultHKT>["rollback"]>();
    void txonceDrizzle(drizzleOnPg).withIdempotency(key, async (tx) => {
      expectTypeOf(tx).toEqualTypeOf<PgTx>();
      return 1;
    });
    void txonceDrizzle(drizzleOnPostgresJs).withIdempotency(key, async (tx) => {
      expectTypeOf(tx).toEqualTypeOf<JsTx>();
      return 1;
    });
    txonceDrizzle(drizzleOnPg, { transaction: { isolationLevel: "repeatable read", deferrable: false } });
    // @ts-expect-error a Kysely instance is not a Drizzle database
    txonceDrizzle(kysely);
  });
});

describe("Knex adapter", () => {
  test("Knex matches KnexLike, and the operation gets Knex.Transaction", () => {
    expectTypeOf<Knex>().toExtend<KnexLike<Knex.Transaction>>();
    void txonceKnex(knex).withIdempotency(key, async (trx) => {
      expectTypeOf(trx).toEqualTypeOf<Knex.Transaction>();
      return 1;
    });
    txonceKnex(knex, { transaction: { isolationLevel: "serializable", readOnly: false } });
    // @ts-expect-error a pg pool is not a Knex instance
    txonceKnex(pool);
  });
});

describe("TypeORM adapter", () => {
  test("DataSource matches TypeormDataSourceLike, and the operation gets the transaction's EntityManager", () => {
    expectTypeOf<DataSource>().toExtend<TypeormDataSourceLike<EntityManager>>();
    void txonceTypeorm(dataSource).withIdempotency(key, async (manager) => {
      expectTypeOf(manager).toEqualTypeOf<EntityManager>();
      return 1;
    });
    txonceTypeorm(dataSource, { transaction: { isolationLevel: "SERIALIZABLE" } });
    // @ts-expect-error lower case is not TypeORM's spelling
    txonceTypeorm(dataSource, { transaction: { isolationLevel: "serializable" } });
    // @ts-expect-error an EntityManager is not a DataSource
    txonceTypeorm(dataSource.manager);
  });
});

describe("postgres.js adapter", () => {
  test("postgres.Sql matches PostgresSqlLike, and the operation gets its TransactionSql", () => {
    expectTypeOf<postgres.Sql>().toExtend<PostgresSqlLike<postgres.TransactionSql>>();
    void txoncePostgres(sql).withIdempotency(key, async (tx) => {
      expectTypeOf(tx).toEqualTypeOf<postgres.TransactionSql>();
      return 1;
    });
    txoncePostgres(sql, { transaction: { isolationLevel: "serializable", accessMode: "read write" } });
    // @ts-expect-error a pg pool is not a postgres.js instance
    txoncePostgres(pool);
  });
});

describe("withIdempotencyIn", () => {
  test("takes the client's own transaction type and gives it to the operation", () => {
    void txonceKysely(kysely).withIdempotencyIn({} as Transaction<KyselyDb>, key, async (trx) => {
      expectTypeOf(trx).toEqualTypeOf<Transaction<KyselyDb>>();
      return 1;
    });
    // @ts-expect-error the transaction options belong to the caller's transaction
    void txoncePg(pool).withIdempotencyIn({} as pg.PoolClient, key, async () => 1, { transaction: { isolationLevel: "serializable" } });
    // @ts-expect-error a pg client is not a Kysely transaction
    void txonceKysely(kysely).withIdempotencyIn({} as pg.PoolClient, key, async () => 1);
  });
});

describe("Prisma client extension", () => {
  test("tx is the extended client's transaction client, with the extensions registered before and after txonce's", () => {
    const db = prisma
      .$extends({ model: { charge: { async before() { return "before" as const; } } } })
      .$extends(txonceExtension({ retention: "48h" }))
      .$extends({ model: { charge: { async after() { return "after" as const; } } } });
    const charge = db.$withIdempotency(key, async (tx) => {
      expectTypeOf(tx).not.toBeAny();
      expectTypeOf(tx.charge.before).returns.resolves.toEqualTypeOf<"before">();
      expectTypeOf(tx.charge.after).returns.resolves.toEqualTypeOf<"after">();
      return tx.charge.create(chargeData);
    });
    expectTypeOf(charge).toEqualTypeOf<Promise<Charge>>();
    expectTypeOf(db.$withIdempotencyOutcome(key, async () => 1)).toEqualTypeOf<Promise<IdempotencyOutcome<number>>>();
    void db.$transaction(async (tx) => db.$withIdempotencyIn(tx, key, async (inner) => inner.charge.after()));
    expectTypeOf(db.$outbox.enqueue).toBeFunction();
    expectTypeOf(db.$txonce().cleanup).toBeFunction();
    // @ts-expect-error not an option
    txonceExtension({ retentionMs: 1 });
  });
});
