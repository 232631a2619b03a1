/**
 * What a caller is told when the database fails under withIdempotency, with real faults: a TCP
 * proxy (test/support/fault-proxy.ts) that cuts the connection before or after the server ran
 * COMMIT, during the claim, or refuses connections, and `pg_terminate_backend`. One suite, run
 * for txonce/prisma, txonce/pg and the adapters on node-postgres: Kysely, Drizzle, Knex, TypeORM.
 * (Not yet for postgres.js, alone or under Drizzle: a postgres.js query on a server that accepts
 * and closes every connection did not settle within 20 s, connect_timeout 1, so the look-up of a
 * COMMIT that got no answer does not end either.)
 *
 * The rule it proves: whatever the error, the key is either committed with the operation's
 * writes or rolled back with them, and a retry with the same key replays in the first case and
 * runs afresh in the second.
 */
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  ConnectionLostError,
  ConnectionTerminatedError,
  DatabaseUnavailableError,
  NoConnectionError,
  OutcomeUnknownError,
  type Txonce,
} from "../src/index.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { txonce as txoncePrisma, txonceAdapter } from "../src/adapters/prisma.js";
import { PrismaClient } from "../generated/prisma/client.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { startFaultProxy, type FaultProxy } from "./support/fault-proxy.js";
import { adapterRows, pgPool, type Subject as AdapterSubject } from "./support/adapters.js";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import knexFactory from "knex";
import { DataSource } from "typeorm";
import { txonce as txonceTypeorm } from "../src/adapters/typeorm.js";
import { Kysely, PostgresDialect } from "kysely";
import { txonce as txonceDrizzle } from "../src/adapters/drizzle.js";
import { txonce as txonceKnex } from "../src/adapters/knex.js";
import { txonce as txonceKysely } from "../src/adapters/kysely.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('acc', 0)");
});
afterAll(async () => {
  await db?.drop();
});

/** What the suite needs from an adapter: txonce over a client that connects through `url`. */
interface Subject {
  t: Txonce<unknown, never>;
  /** The operation: inserts a charge of `amount` and returns its id. */
  charge(tx: unknown, amount: number): Promise<number>;
  /** The same client, but with a pool of one connection and the shortest wait for it. */
  starved(): Promise<{ t: Txonce<unknown, never>; hold(): Promise<() => Promise<void>> }>;
  /**
   * The text of the COMMIT the client sends, NUL-terminated as in the wire protocol (so that a key
   * containing "committed" does not match): Drizzle, Kysely and postgres.js write `commit`.
   */
  commit?: string;
  /** The save goes in the COMMIT's round trip (txonceAdapter): a failure while storing is the COMMIT's. */
  savesWithCommit?: boolean;
  close(): Promise<void>;
}

/** A pg pool that waits at most 200 ms for a connection, and a way to hold its only one. */
function starvedPgPool(url: string, pools: pg.Pool[]) {
  const pool = pgPool(url, 1, { connectionTimeoutMillis: 200 });
  pools.push(pool);
  return {
    pool,
    hold: async () => {
      const held = await pool.connect();
      return async () => held.release();
    },
  };
}

/** The conformance suite's row of an adapter, for the cases that need no starved pool. */
function fromRow(name: string, extra: (url: string, pools: pg.Pool[]) => Pick<Subject, "starved"> & Partial<Subject>): (url: string) => Promise<Subject> {
  return async (url) => {
    const row = adapterRows.find((r) => r.name === name)!;
    const pools: pg.Pool[] = [];
    const subject: AdapterSubject = await row.open(url, 4);
    return {
      t: subject.txonce() as Txonce<unknown, never>,
      charge: async (tx, amount) => (await subject.charge(tx, amount)).id,
      close: async () => {
        await subject.close();
        await Promise.all(pools.map((p) => p.end().catch(() => {})));
      },
      ...extra(url, pools),
    };
  };
}

const INSERT = "INSERT INTO charges (account_id, amount) VALUES ('acc', $1) RETURNING id";

function prismaSubject(url: string, wrap: boolean): Subject {
  const clients: PrismaClient[] = [];
  const client = (max: number) => {
    const ignore = () => {};
    const adapter = new PrismaPg({ connectionString: url, max }, { onPoolError: ignore, onConnectionError: ignore });
    const c = new PrismaClient({ adapter: wrap ? txonceAdapter(adapter) : adapter });
    clients.push(c);
    return c;
  };
  const prisma = client(4);
  return {
    savesWithCommit: wrap,
    t: txoncePrisma(prisma) as unknown as Txonce<unknown, never>,
    charge: async (tx, amount) =>
      (await (tx as PrismaClient).$queryRawUnsafe<{ id: number }[]>(INSERT, amount))[0]!.id,
    starved: async () => {
      const one = client(1);
      return {
        t: txoncePrisma(one, { transaction: { maxWait: 200 } }) as unknown as Txonce<unknown, never>,
        hold: async () => {
          let release!: () => void;
          const held = new Promise<void>((resolve) => (release = resolve));
          let started!: () => void;
          const running = new Promise<void>((resolve) => (started = resolve));
          const tx = one.$transaction(async () => {
            started();
            await held;
          }, { timeout: 10_000 });
          await running;
          return async () => {
            release();
            await tx;
          };
        },
      };
    },
    close: async () => {
      await Promise.all(clients.map((c) => c.$disconnect()));
    },
  };
}

const adapters: Record<string, (url: string) => Subject | Promise<Subject>> = {
  "txonce/prisma": (url) => prismaSubject(url, false),
  // The client's driver adapter wrapped by txonceAdapter: txonce's statements go through it.
  "txonce/prisma (txonceAdapter)": (url) => prismaSubject(url, true),
  "txonce/pg": (url) => {
    const pools: pg.Pool[] = [];
    const pool = (config: pg.PoolConfig) => {
      const p = new pg.Pool({ connectionString: url, ...config });
      p.on("error", () => {});
      pools.push(p);
      return p;
    };
    return {
      savesWithCommit: true,
      t: txoncePg(pool({ max: 4 })) as unknown as Txonce<unknown, never>,
      charge: async (tx, amount) => (await (tx as pg.PoolClient).query(INSERT, [amount])).rows[0].id as number,
      starved: async () => {
        const one = pool({ max: 1, connectionTimeoutMillis: 200 });
        return {
          t: txoncePg(one) as unknown as Txonce<unknown, never>,
          hold: async () => {
            const held = await one.connect();
            return async () => held.release();
          },
        };
      },
      close: async () => {
        await Promise.all(pools.map((p) => p.end().catch(() => {})));
      },
    };
  },
  "txonce/kysely": fromRow("txonce/kysely", (url, pools) => ({
    commit: "commit\u0000",
    starved: async () => {
      const { pool, hold } = starvedPgPool(url, pools);
      return { t: txonceKysely(new Kysely({ dialect: new PostgresDialect({ pool }) })) as unknown as Txonce<unknown, never>, hold };
    },
  })),
  "txonce/drizzle (node-postgres)": fromRow("txonce/drizzle (node-postgres)", (url, pools) => ({
    commit: "commit\u0000",
    starved: async () => {
      const { pool, hold } = starvedPgPool(url, pools);
      return { t: txonceDrizzle(drizzlePg({ client: pool })) as unknown as Txonce<unknown, never>, hold };
    },
  })),
  "txonce/knex": fromRow("txonce/knex", (url) => ({
    starved: async () => {
      const knex = knexFactory({ client: "pg", connection: url, pool: { min: 0, max: 1 }, acquireConnectionTimeout: 200 });
      return {
        t: txonceKnex(knex) as unknown as Txonce<unknown, never>,
        hold: async () => {
          let release!: () => void;
          const held = new Promise<void>((resolve) => (release = resolve));
          let started!: () => void;
          const running = new Promise<void>((resolve) => (started = resolve));
          const trx = knex.transaction(async () => {
            started();
            await held;
          });
          await running;
          return async () => {
            release();
            await trx;
            await knex.destroy();
          };
        },
      };
    },
  })),
  "txonce/typeorm": fromRow("txonce/typeorm", (url) => ({
    starved: async () => {
      // initialize() connects once; that connection goes idle and is closed at once, so that the
      // pool has none left when the proxy refuses new ones.
      const dataSource = new DataSource({ type: "postgres", url, poolSize: 1, extra: { connectionTimeoutMillis: 200, idleTimeoutMillis: 1 } });
      await dataSource.initialize();
      await new Promise((resolve) => setTimeout(resolve, 50));
      return {
        t: txonceTypeorm(dataSource) as unknown as Txonce<unknown, never>,
        hold: async () => {
          const runner = dataSource.createQueryRunner();
          await runner.connect();
          return async () => {
            await runner.release();
            await dataSource.destroy();
          };
        },
      };
    },
  })),
};

describe.each(Object.entries(adapters))("%s", (_name, make) => {
  let proxy: FaultProxy;
  let subject: Subject;
  let amount = 100 * (1 + Object.keys(adapters).indexOf(_name));
  const nextAmount = () => ++amount;
  beforeAll(async () => {
    proxy = await startFaultProxy(db.url);
    subject = await make(proxy.url);
  });
  afterAll(async () => {
    await subject?.close();
    await proxy?.close();
  });

  const charges = async (value: number) =>
    (await db.pool.query("SELECT count(*)::int AS n FROM charges WHERE amount = $1", [value])).rows[0].n as number;
  const keyRows = async (key: string) =>
    (await db.pool.query("SELECT result FROM txonce_idempotency_keys WHERE key = $1", [key])).rows;
  const newKey = (label: string) => `${_name}-${label}-${Math.random().toString(36).slice(2)}`;

  test("the connection is cut after the server ran COMMIT: the call finds out it committed and returns the value", async () => {
    const key = newKey("committed");
    const value = nextAmount();
    const cut = proxy.arm(subject.commit ?? "COMMIT", "cut-after-answer");
    const outcome = await subject.t.withIdempotencyOutcome(key, (tx) => subject.charge(tx, value));
    await cut;
    expect(outcome.replayed).toBe(false);
    expect(await charges(value)).toBe(1);
    expect(await keyRows(key)).toHaveLength(1);
    await expect(subject.t.withIdempotency(key, async () => "must not run")).resolves.toBe(outcome.value);
  });

  test("the connection is cut before COMMIT reached the server: ConnectionLostError, nothing stored, a retry runs afresh", async () => {
    const key = newKey("rolled-back");
    const value = nextAmount();
    const cut = proxy.arm(subject.commit ?? "COMMIT", "cut-before");
    const error = await subject.t.withIdempotency(key, (tx) => subject.charge(tx, value)).catch((e: unknown) => e);
    await cut;
    expect(error).toBeInstanceOf(ConnectionLostError);
    expect(error).toBeInstanceOf(DatabaseUnavailableError);
    expect(error).toMatchObject({ code: "TXONCE_CONNECTION_LOST", during: "commit", key, scope: "" });
    expect((error as Error).cause).toBeDefined();
    expect(await charges(value)).toBe(0);
    expect(await keyRows(key)).toEqual([]);
    const retried = await subject.t.withIdempotencyOutcome(key, (tx) => subject.charge(tx, value));
    expect(retried.replayed).toBe(false);
    expect(await charges(value)).toBe(1);
  });

  test("cut after the server ran COMMIT and a look-up that never gets an answer: OutcomeUnknownError once lockTimeout has passed, not a hang", async () => {
    const key = newKey("unknown-stalled");
    const value = nextAmount();
    const cut = proxy.arm(subject.commit ?? "COMMIT", "cut-after-answer");
    void cut.then(() => proxy.stallConnections(true));
    const error = await subject.t
      .withIdempotency(key, (tx) => subject.charge(tx, value), { lockTimeout: 300 })
      .catch((e: unknown) => e)
      .finally(() => proxy.stallConnections(false));
    expect(error).toBeInstanceOf(OutcomeUnknownError);
    expect(await charges(value)).toBe(1);
    const retried = await subject.t.withIdempotencyOutcome(key, (tx) => subject.charge(tx, value));
    expect(retried.replayed).toBe(true);
  });

  test.for([
    ["after the server ran COMMIT", "cut-after-answer", true],
    ["before COMMIT reached the server", "cut-before", false],
  ] as const)(
    "cut %s and no connection to look it up: OutcomeUnknownError, and a retry with the same key is right either way",
    async ([, fault, committed]) => {
      const key = newKey(`unknown-${fault}`);
      const value = nextAmount();
      const cut = proxy.arm(subject.commit ?? "COMMIT", fault);
      void cut.then(() => proxy.refuseConnections(true));
      const error = await subject.t
        .withIdempotency(key, (tx) => subject.charge(tx, value), { lockTimeout: 300 })
        .catch((e: unknown) => e);
      proxy.refuseConnections(false);
      expect(error).toBeInstanceOf(OutcomeUnknownError);
      expect(error).toMatchObject({ code: "TXONCE_OUTCOME_UNKNOWN", key });
      expect((error as Error).message).toMatch(/retrying with the same key is safe/);
      expect(await charges(value)).toBe(committed ? 1 : 0);
      let ran = false;
      const retried = await subject.t.withIdempotencyOutcome(key, async (tx) => {
        ran = true;
        return subject.charge(tx, value);
      });
      expect(retried.replayed).toBe(committed);
      expect(ran).toBe(!committed);
      expect(await charges(value)).toBe(1);
    },
  );

  test("the connection is cut during the claim: ConnectionLostError, nothing stored", async () => {
    const key = newKey("claim");
    const value = nextAmount();
    let ran = false;
    const cut = proxy.arm("INSERT INTO txonce_idempotency_keys", "cut-before");
    const error = await subject.t
      .withIdempotency(key, async (tx) => {
        ran = true;
        return subject.charge(tx, value);
      })
      .catch((e: unknown) => e);
    await cut;
    expect(error).toBeInstanceOf(ConnectionLostError);
    expect(error).toMatchObject({ during: "claim" });
    expect(ran).toBe(false);
    expect(await keyRows(key)).toEqual([]);
  });

  test("the backend is terminated (pg_terminate_backend) while the result is being stored: ConnectionTerminatedError, nothing stored", async () => {
    const key = newKey("terminated");
    const value = nextAmount();
    const terminated = proxy.arm("UPDATE txonce_idempotency_keys", {
      hook: async () => {
        const { rows } = await db.pool.query(
          "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
        );
        expect(rows.map((r) => r.done)).toEqual([true]);
        await new Promise((resolve) => setTimeout(resolve, 100)); // the FATAL reaches the client first
      },
    });
    const error = await subject.t.withIdempotency(key, (tx) => subject.charge(tx, value)).catch((e: unknown) => e);
    await terminated;
    expect(error).toBeInstanceOf(DatabaseUnavailableError);
    // The FATAL 57P01 arrives while the statement is under way, or just before it is sent (the
    // driver then fails it without a code): either way the connection is gone.
    expect(error).toSatisfy((e: unknown) => e instanceof ConnectionTerminatedError || e instanceof ConnectionLostError);
    expect(error).toMatchObject({ during: subject.savesWithCommit ? "commit" : "save" });
    expect(await charges(value)).toBe(0);
    expect(await keyRows(key)).toEqual([]);
  });

  test("no connection to start the transaction (the pool stays busy past its wait): NoConnectionError", async () => {
    const { t, hold } = await subject.starved();
    const release = await hold();
    try {
      const error = await t.withIdempotency(newKey("starved"), async () => 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(NoConnectionError);
      expect(error).toMatchObject({ code: "TXONCE_NO_CONNECTION", during: "begin" });
    } finally {
      await release();
    }
  });

  test("the server refuses connections: NoConnectionError", async () => {
    const { t } = await subject.starved();
    proxy.refuseConnections(true);
    try {
      const error = await t.withIdempotency(newKey("refused"), async () => 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(NoConnectionError);
      expect(error).toMatchObject({ during: "begin" });
    } finally {
      proxy.refuseConnections(false);
    }
  });
});
