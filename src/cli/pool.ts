/** The connection of the commands that talk to the database: `--database-url`, else `$DATABASE_URL`. */
import type { Pool } from "pg";
import { InvalidArgumentError } from "../errors.js";
import { checkSchema } from "../sql/statements.js";
import { pgConnection } from "./connection-url.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

/** `--schema`, which every command that talks to the database takes. */
export const schemaOption = { schema: { type: "string" } } as const;

/**
 * Checks the URL and `--schema` (a {@link UsageError} when there is no URL, or either is
 * malformed) and opens a pool of one connection. `schema` is `--schema`, else the URL's Prisma
 * `?schema=` when it is a plain identifier (a name the option does not take is still found on the
 * connection's search_path, which the URL's schema sets too).
 */
export async function openPool(
  url: string | undefined,
  io: CliIo,
  schemaFlag?: string,
): Promise<{ pool: Pool; schema: string | undefined }> {
  const given = url ?? io.env.DATABASE_URL;
  if (!given) throw new UsageError("no database: pass --database-url or set DATABASE_URL (in the environment or in .env)");
  const { connectionString, schema: urlSchema } = pgConnection(given);
  try {
    checkSchema(schemaFlag);
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new UsageError(`--schema: ${error.reason}`);
    throw error;
  }
  const { default: pg } = await import("pg").catch(() => {
    throw new Error("the pg package is not installed: npm install pg");
  });
  const pool = new pg.Pool({ connectionString, max: 1, connectionTimeoutMillis: 10_000 });
  pool.on("error", () => {}); // an idle connection dropping is not the command's failure
  return { pool, schema: schemaFlag ?? (isPlainSchema(urlSchema) ? urlSchema : undefined) };
}

function isPlainSchema(name: string | undefined): boolean {
  try {
    return checkSchema(name) !== undefined;
  } catch {
    return false;
  }
}
