/**
 * A connection URL as Prisma users write it, made into one node-postgres reads the same way.
 * Prisma's `?schema=app` (what `prisma init` documents, and where `prisma migrate` puts the
 * tables) means nothing to node-postgres, which would look for the tables in `public`: it
 * becomes the session's `search_path`, sent as the `options` startup parameter
 * (`-c search_path=...`), next to any `options` the URL already has.
 */
import { UsageError } from "./usage-error.js";

export interface PgConnection {
  /** The URL for node-postgres, without `schema` and with the search path in `options`. */
  readonly connectionString: string;
  /** The schema the tables are looked up in, when the URL named one. */
  readonly schema: string | undefined;
}

export function pgConnection(url: string): PgConnection {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError("the database URL is not a URL (expected postgres://user:password@host:5432/database)");
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new UsageError(`the database URL must start with postgres:// or postgresql://, not ${parsed.protocol}//`);
  }
  const schema = parsed.searchParams.get("schema") || undefined;
  if (schema === undefined) return { connectionString: url, schema };
  parsed.searchParams.delete("schema");
  const searchPath = `-c search_path=${escapeOption(quoteIdentifier(schema))}`;
  const options = parsed.searchParams.get("options");
  parsed.searchParams.set("options", options ? `${options} ${searchPath}` : searchPath);
  return { connectionString: parsed.toString(), schema };
}

/** A PostgreSQL identifier in double quotes, as Prisma quotes the schema name. */
function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** In the `options` startup parameter, spaces separate arguments; a backslash escapes one. */
function escapeOption(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll(" ", "\\ ");
}
