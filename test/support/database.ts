/**
 * A database of the test file's own, cloned from the migrated template that global-setup.ts
 * made, with a node-postgres pool and a Prisma 7 client on it.
 */
import { randomBytes } from "node:crypto";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { inject } from "vitest";
import { PrismaClient } from "../../generated/prisma/client.js";
import { databaseUrl } from "./postgres-server.js";

export interface TestDatabase {
  readonly url: string;
  /** A pool for assertions and setup, separate from the code under test. */
  readonly pool: pg.Pool;
  /** A Prisma client on this database (pool size `prismaPoolSize`). */
  readonly prisma: PrismaClient;
  /** A new Prisma client on this database with its own pool. */
  newPrisma(options?: { max?: number }): PrismaClient;
  drop(): Promise<void>;
}

export async function createTestDatabase({ prismaPoolSize = 10 } = {}): Promise<TestDatabase> {
  const { serverUrl, template, runId } = inject("postgres");
  const name = `txonce_test_${runId}_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`);
  } finally {
    await admin.end();
  }
  const url = databaseUrl(serverUrl, name);
  const clients: PrismaClient[] = [];
  const newPrisma = ({ max = 10 } = {}) => {
    // Errors of idle connections (e.g. when drop() terminates them) are not the test's business.
    const ignore = () => {};
    const adapter = new PrismaPg({ connectionString: url, max }, { onPoolError: ignore, onConnectionError: ignore });
    const client = new PrismaClient({ adapter });
    clients.push(client);
    return client;
  };
  const pool = new pg.Pool({ connectionString: url, max: 5 });
  pool.on("error", () => {});
  const prisma = newPrisma({ max: prismaPoolSize });
  return {
    url,
    pool,
    prisma,
    newPrisma,
    async drop() {
      await Promise.all(clients.map((c) => c.$disconnect()));
      await pool.end();
      const cleanup = new pg.Client({ connectionString: serverUrl });
      await cleanup.connect();
      try {
        await cleanup.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await cleanup.end();
      }
    },
  };
}
