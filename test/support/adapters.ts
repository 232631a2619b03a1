/**
 * The adapters under test, one row each, for the conformance suite (test/adapters.test.ts) and
 * the benchmark: how to open a client of that library on a database, insert a charge through the
 * library's own API, run the library's own transaction, and what txonce's transaction options
 * look like there. A new adapter is a new row here.
 */
import { PrismaPg } from "@prisma/adapter-pg";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import { numeric, pgTable, serial, text, timestamp } from "drizzle-orm/pg-core";
import knexFactory from "knex";
import { Kysely, PostgresDialect, type Generated } from "kysely";
import pg from "pg";
import postgres from "postgres";
import { DataSource, EntitySchema } from "typeorm";
import { PrismaClient } from "../../generated/prisma/client.js";
import { txonce as txonceDrizzle } from "../../src/adapters/drizzle.js";
import { txonce as txonceKnex } from "../../src/adapters/knex.js";
import { txonce as txonceKysely } from "../../src/adapters/kysely.js";
import { txonce as txoncePg } from "../../src/adapters/pg.js";
import { txonce as txoncePostgres } from "../../src/adapters/postgres.js";
import { txonce as txoncePrisma, txonceAdapter, txonceExtension } from "../../src/adapters/prisma.js";
import { txonce as txonceTypeorm } from "../../src/adapters/typeorm.js";
import type { Row, Txonce, TxonceOptions } from "../../src/index.js";

/** A charge as the suite compares it: what the library returned, stored and replayed as is. */
export type Charge = { id: number } & Record<string, unknown>;

/** One client of a library on the test database, and everything the suite does with it. */
export interface Subject {
  /** txonce over this client (each call is a new instance: its own replay cache, like another process). */
  txonce(options?: TxonceOptions<any>): Txonce<any, any>;
  /** The client itself, as the application holds it. */
  readonly client: unknown;
  /** A transaction of the library's own (not txonce's), for the outbox and withIdempotencyIn. */
  transaction<T>(work: (tx: any) => Promise<T>): Promise<T>;
  /** Inserts a charge of `amount` for account `acc` through the library's API, in `tx`. */
  charge(tx: any, amount: number): Promise<Charge>;
  /** Runs one statement in `tx` through the library's API (raw SQL), returning its rows. */
  select(tx: any, sql: string): Promise<Row[]>;
  close(): Promise<void>;
}

export interface AdapterRow {
  /** The entry point, e.g. `txonce/kysely`. */
  readonly name: string;
  /** The adapter's `txonce(client)`, for what is not a client of its kind. */
  txonceOf(client: unknown): unknown;
  /**
   * Opens a client on `url` with a pool of at most `max` connections. With `schema`, txonce's
   * tables are in that schema, which is not on the connection's search_path: the client is told
   * where its schema lies (PrismaPg's `schema`, TypeORM's `schema`: txonce takes it from there),
   * or txonce gets the `schema` option.
   */
  open(url: string, max: number, schema?: string): Subject | Promise<Subject>;
  /**
   * Whether the adapter can tell that a transaction the application opened (not txonce) has
   * ended (docs/adapters.md, "what each supports").
   */
  readonly tellsEndedTransactions: boolean;
  /** txonce's `transaction` option for each isolation level, in the library's spelling. */
  readonly isolation: { readonly repeatableRead: object; readonly serializable: object };
}

const INSERT = "INSERT INTO charges (account_id, amount) VALUES ('acc', $1) RETURNING id, amount, created_at";

/**
 * A pg pool as docs/adapters.md advises for Kysely and Drizzle: those libraries leave a client
 * they checked out without an "error" listener, so a connection that breaks mid-transaction
 * would crash the process with an uncaught "error" event; listened to, the failure reaches the
 * statement that was running (or the next one) instead.
 */
export function pgPool(url: string, max: number, options: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max, ...options });
  pool.on("error", () => {}); // idle connections terminated when the test database is dropped
  pool.on("connect", (client) => client.on("error", () => {}));
  return pool;
}

function prismaClient(url: string, max: number, schema?: string, wrap = false): PrismaClient {
  const ignore = () => {};
  const adapter = new PrismaPg({ connectionString: url, max }, { schema, onPoolError: ignore, onConnectionError: ignore });
  return new PrismaClient({ adapter: wrap ? txonceAdapter(adapter) : adapter });
}

/** The `schema` option for txonce when the client cannot say it: the test's options win. */
const withSchema = (schema: string | undefined, options: TxonceOptions<any> | undefined) => (schema === undefined ? options : { schema, ...options });

interface KyselyDb {
  charges: { id: Generated<number>; account_id: string; amount: string | number; created_at: Generated<Date> };
}

const drizzleCharges = pgTable("charges", {
  id: serial("id").primaryKey(),
  accountId: text("account_id").notNull(),
  amount: numeric("amount", { precision: 12, scale: 2 }).notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, precision: 3 }).notNull().defaultNow(),
});

const TypeormCharge = new EntitySchema<{ id: number; accountId: string; amount: string; createdAt: Date }>({
  name: "Charge",
  tableName: "charges",
  columns: {
    id: { type: Number, primary: true, generated: true },
    accountId: { type: String, name: "account_id" },
    amount: { type: "numeric", precision: 12, scale: 2 },
    createdAt: { type: "timestamptz", name: "created_at", createDate: true },
  },
});

/** A row for Prisma: `make` is how txonce is put on the client (the function, or the extension). */
function prismaRow(name: string, make: (prisma: PrismaClient, options?: TxonceOptions<any>) => unknown, wrap = false): AdapterRow {
  return {
    name,
    tellsEndedTransactions: false,
    txonceOf: (client) => txoncePrisma(client as never),
    isolation: { repeatableRead: { isolationLevel: "RepeatableRead" }, serializable: { isolationLevel: "Serializable" } },
    open(url, max, schema) {
      const prisma = prismaClient(url, max, schema, wrap);
      return {
        client: prisma,
        txonce: (options) => make(prisma, options) as Txonce<any, any>,
        transaction: (work) => prisma.$transaction((tx) => work(tx)),
        charge: (tx: PrismaClient, amount) => tx.charge.create({ data: { accountId: "acc", amount } }),
        select: (tx: PrismaClient, sql) => tx.$queryRawUnsafe<Row[]>(sql),
        close: () => prisma.$disconnect(),
      };
    },
  };
}

export const adapterRows: readonly AdapterRow[] = [
  prismaRow("txonce/prisma", (prisma, options) => txoncePrisma(prisma, options)),
  // Each instance is the extension on a client of its own over the same pool.
  prismaRow("txonce/prisma (client extension)", (prisma, options) => prisma.$extends(txonceExtension(options)).$txonce()),
  // The client's driver adapter wrapped by txonceAdapter: txonce's statements go through it.
  prismaRow("txonce/prisma (txonceAdapter)", (prisma, options) => txoncePrisma(prisma, options), true),
  {
    name: "txonce/pg",
    tellsEndedTransactions: true,
    txonceOf: (client) => txoncePg(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const pool = pgPool(url, max);
      return {
        client: pool,
        txonce: (options) => txoncePg(pool, withSchema(schema, options)) as Txonce<any, any>,
        async transaction(work) {
          const client = await pool.connect();
          try {
            await client.query("BEGIN");
            const result = await work(client);
            await client.query("COMMIT");
            return result;
          } catch (error) {
            await client.query("ROLLBACK");
            throw error;
          } finally {
            client.release();
          }
        },
        charge: async (client: pg.PoolClient, amount) => (await client.query(INSERT, [amount])).rows[0] as Charge,
        select: async (client: pg.PoolClient, sql) => (await client.query(sql)).rows as Row[],
        close: () => pool.end(),
      };
    },
  },
  {
    name: "txonce/kysely",
    tellsEndedTransactions: false,
    txonceOf: (client) => txonceKysely(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const db = new Kysely<KyselyDb>({ dialect: new PostgresDialect({ pool: pgPool(url, max) }) });
      return {
        client: db,
        txonce: (options) => txonceKysely(db, withSchema(schema, options)) as Txonce<any, any>,
        transaction: (work) => db.transaction().execute((trx) => work(trx)),
        charge: (trx: Kysely<KyselyDb>, amount) =>
          trx.insertInto("charges").values({ account_id: "acc", amount }).returning(["id", "amount", "created_at"]).executeTakeFirstOrThrow(),
        select: async (trx: Kysely<KyselyDb>, sql) => (await trx.executeQuery<Row>({ sql, parameters: [] } as never)).rows,
        close: () => db.destroy(),
      };
    },
  },
  {
    name: "txonce/drizzle (node-postgres)",
    tellsEndedTransactions: true,
    txonceOf: (client) => txonceDrizzle(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const pool = pgPool(url, max);
      const db = drizzlePg({ client: pool });
      return {
        client: db,
        txonce: (options) => txonceDrizzle(db, withSchema(schema, options)) as Txonce<any, any>,
        transaction: (work) => db.transaction((tx) => work(tx)),
        charge: async (tx: typeof db, amount) => (await tx.insert(drizzleCharges).values({ accountId: "acc", amount: String(amount) }).returning())[0]!,
        select: async (tx: typeof db, sql) => (await tx.execute(sql)).rows as Row[],
        close: () => pool.end(),
      };
    },
  },
  {
    name: "txonce/drizzle (postgres.js)",
    tellsEndedTransactions: false,
    txonceOf: (client) => txonceDrizzle(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const sql = postgres(url, { max, onnotice: () => {} });
      const db = drizzlePostgresJs({ client: sql });
      return {
        client: db,
        txonce: (options) => txonceDrizzle(db, withSchema(schema, options)) as Txonce<any, any>,
        transaction: (work) => db.transaction((tx) => work(tx)),
        charge: async (tx: typeof db, amount) => (await tx.insert(drizzleCharges).values({ accountId: "acc", amount: String(amount) }).returning())[0]!,
        select: async (tx: typeof db, text) => [...(await tx.execute(text))] as Row[],
        close: () => sql.end(),
      };
    },
  },
  {
    name: "txonce/knex",
    tellsEndedTransactions: true,
    txonceOf: (client) => txonceKnex(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const knex = knexFactory({ client: "pg", connection: url, pool: { min: 0, max } });
      return {
        client: knex,
        txonce: (options) => txonceKnex(knex, withSchema(schema, options)) as Txonce<any, any>,
        transaction: (work) => knex.transaction((trx) => work(trx)),
        charge: async (trx: typeof knex, amount) =>
          (await trx("charges").insert({ account_id: "acc", amount }).returning(["id", "amount", "created_at"]))[0] as Charge,
        select: async (trx: typeof knex, sql) => ((await trx.raw(sql)) as { rows: Row[] }).rows,
        close: () => knex.destroy(),
      };
    },
  },
  {
    name: "txonce/typeorm",
    tellsEndedTransactions: true,
    txonceOf: (client) => txonceTypeorm(client as never),
    isolation: { repeatableRead: { isolationLevel: "REPEATABLE READ" }, serializable: { isolationLevel: "SERIALIZABLE" } },
    async open(url, max, schema) {
      const dataSource = new DataSource({ type: "postgres", url, poolSize: max, entities: [TypeormCharge], schema });
      await dataSource.initialize();
      return {
        client: dataSource,
        txonce: (options) => txonceTypeorm(dataSource, options) as Txonce<any, any>,
        transaction: (work) => dataSource.transaction((manager) => work(manager)),
        charge: async (manager: DataSource["manager"], amount) =>
          ({ ...(await manager.getRepository(TypeormCharge).save({ accountId: "acc", amount: String(amount) })) }) as Charge,
        select: (manager: DataSource["manager"], sql) => manager.query(sql),
        close: () => dataSource.destroy(),
      };
    },
  },
  {
    name: "txonce/postgres",
    tellsEndedTransactions: false,
    txonceOf: (client) => txoncePostgres(client as never),
    isolation: { repeatableRead: { isolationLevel: "repeatable read" }, serializable: { isolationLevel: "serializable" } },
    open(url, max, schema) {
      const sql = postgres(url, { max, onnotice: () => {} });
      return {
        client: sql,
        txonce: (options) => txoncePostgres(sql, withSchema(schema, options)) as Txonce<any, any>,
        transaction: async (work) => (await sql.begin((tx) => work(tx))) as never,
        charge: async (tx: postgres.TransactionSql, amount) =>
          ({ ...(await tx`INSERT INTO charges ${tx({ account_id: "acc", amount })} RETURNING id, amount, created_at`)[0] }) as Charge,
        select: async (tx: postgres.TransactionSql, text) => [...(await tx.unsafe(text))] as Row[],
        close: () => sql.end(),
      };
    },
  },
];
