/**
 * The embedded database of the demo (examples/payments/demo.ts): PGlite (PostgreSQL compiled to WebAssembly, in memory)
 * through pglite-prisma-adapter with this repository's generated Prisma 7 client, so that
 * `npm run demo` needs no server. The tables come from txonce's shipped DDL (`schemaSql`) and from
 * app-tables.sql, which `npm run migrations -- --write` generates from prisma/app.prisma.
 *
 * PGlite has a single connection, and pglite-prisma-adapter runs Prisma's interactive
 * transactions one at a time (a transaction waits for the previous one to end; so does a query
 * outside a transaction). A concurrent duplicate does not need it: as on a PostgreSQL server, it
 * shares the first call's attempt in the txonce instance (holding no connection), and gets its
 * result, or IdempotencyKeyInUseError after `lockTimeout`. Only a call through a second txonce
 * instance on the same client would wait for the connection to begin (for up to the transaction's
 * `maxWait`, not `lockTimeout`), then find the key taken and replay. It also means an operation
 * must only use `tx`: a query on `prisma` inside it would wait for its own transaction forever.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PrismaPGlite } from "pglite-prisma-adapter";
import { PrismaClient } from "../../generated/prisma/client.js";
import { txonceAdapter } from "../../src/adapters/prisma.js";
import { schemaSql } from "../../src/sql/schema.js";

export interface EmbeddedDatabase {
  readonly pglite: PGlite;
  readonly prisma: PrismaClient;
  /** Disconnects Prisma and closes PGlite. PGlite's runtime resets `process.exitCode` to 0 when it exits: set it after this. */
  close(): Promise<void>;
}

/** Starts PGlite in memory with txonce's tables and the demo's accounts and charges tables. */
export async function startEmbeddedDatabase(): Promise<EmbeddedDatabase> {
  const pglite = await PGlite.create();
  await pglite.exec(schemaSql);
  await pglite.exec(await readFile(join(import.meta.dirname, "app-tables.sql"), "utf8"));
  const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPGlite(pglite)) });
  return {
    pglite,
    prisma,
    async close() {
      await prisma.$disconnect();
      await pglite.close();
    },
  };
}
