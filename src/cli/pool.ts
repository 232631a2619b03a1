/** The connection of the commands that talk to the database: `--database-url`, else `$DATABASE_URL`. */
import type { Pool } from "pg";
import { pgConnection } from "./connection-url.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

/** Checks the URL (a {@link UsageError} when there is none or it is malformed) and opens a pool of one connection. */
export async function openPool(url: string | undefined, io: CliIo): Promise<{ pool: Pool; schema: string | undefined }> {
  const given = url ?? io.env.DATABASE_URL;
  if (!given) throw new UsageError("no database: pass --database-url or set DATABASE_URL (in the environment or in .env)");
  const { connectionString, schema } = pgConnection(given);
  const { default: pg } = await import("pg").catch(() => {
    throw new Error("the pg package is not installed: npm install pg");
  });
  const pool = new pg.Pool({ connectionString, max: 1, connectionTimeoutMillis: 10_000 });
  pool.on("error", () => {}); // an idle connection dropping is not the command's failure
  return { pool, schema };
}
