/**
 * txonce's statements for the schema its tables are in. The statements of `postgres.ts` are
 * written once, with unqualified table names (found on the connection's `search_path`) and
 * `current_schema()` where a lock id names the schema; {@link statementsFor} qualifies each table
 * name with the schema (a word-boundary match on txonce's table names, so a statement added to
 * `postgres.ts` is qualified without being listed here), names the schema in the lock ids, and
 * gives the outbox a NOTIFY channel of the schema's own.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";
import * as unqualified from "./postgres.js";

/** Every statement and name of `postgres.ts`, for one schema. */
export type Statements = typeof unqualified & {
  /** The schema option the statements were made for; `undefined`: unqualified (the search_path). */
  readonly schema: string | undefined;
};

/** txonce's tables and routines: the names {@link statementsFor} qualifies. */
export const TABLE_NAMES = [unqualified.IDEMPOTENCY_TABLE, unqualified.OUTBOX_TABLE] as const;
const QUALIFIED = new RegExp(`(?<![."\\w])\\b(${TABLE_NAMES.join("|")})\\b(?![."])`, "g");

/** PostgreSQL's identifier length limit (NAMEDATALEN - 1), in bytes. */
const MAX_IDENTIFIER_BYTES = 63;
const PLAIN_IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$]*$/;

/**
 * Checks the `schema` option: a plain identifier (letters, digits, `_`, `$`, not starting with a
 * digit, at most 63 bytes). It is used quoted, so its case is kept (`"App"` is not `app`), as
 * Prisma, Kysely, TypeORM and Drizzle quote it.
 */
export function checkSchema(schema: unknown, argument = "schema"): string | undefined {
  if (schema === undefined) return undefined;
  if (typeof schema !== "string" || !PLAIN_IDENTIFIER.test(schema) || Buffer.byteLength(schema) > MAX_IDENTIFIER_BYTES) {
    throw new InvalidArgumentError(
      argument,
      `expected a schema name (letters, digits, _ or $, not starting with a digit, at most ${MAX_IDENTIFIER_BYTES} bytes), got ${JSON.stringify(schema) ?? String(schema)}`,
    );
  }
  return schema;
}

/** A name in double quotes. */
export const quoteIdentifier = (name: string) => `"${name.replaceAll('"', '""')}"`;
const quoteLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;

/**
 * The outbox's NOTIFY channel for a schema: `txonce_outbox` without one (as before the option
 * existed), else `txonce_outbox:<schema>`, so that the relays of one schema are not woken by the
 * commits of another. A name over PostgreSQL's 63 bytes is shortened with a hash of the schema.
 */
export function outboxChannel(schema: string | undefined): string {
  if (schema === undefined) return unqualified.OUTBOX_CHANNEL;
  const channel = `${unqualified.OUTBOX_CHANNEL}:${schema}`;
  if (Buffer.byteLength(channel) <= MAX_IDENTIFIER_BYTES) return channel;
  return `${unqualified.OUTBOX_CHANNEL}:${createHash("sha256").update(schema).digest("hex").slice(0, 40)}`;
}

/** One statement for `schema`: tables qualified, the schema named in lock ids and the channel. */
function qualify(text: string, schema: string): string {
  const quoted = quoteIdentifier(schema);
  // Function replacements: a `$` in the schema name is not a replacement pattern.
  return text
    .replace(QUALIFIED, (name) => `${quoted}.${name}`)
    .replaceAll("current_schema()", () => quoteLiteral(schema))
    .replaceAll(`pg_notify('${unqualified.OUTBOX_CHANNEL}'`, () => `pg_notify(${quoteLiteral(outboxChannel(schema))}`);
}

const memo = new Map<string | undefined, Statements>();

/**
 * The statements for the tables in `schema` (checked with {@link checkSchema}), made once per
 * schema. Without a schema, the statements as written: unqualified, found on the search_path.
 * Table names (`IDEMPOTENCY_TABLE`, `OUTBOX_TABLE`) stay unqualified: they name the tables in
 * results.
 */
export function statementsFor(schema?: string): Statements {
  const checked = checkSchema(schema);
  let statements = memo.get(checked);
  if (!statements) {
    const made: Record<string, unknown> = { ...unqualified, schema: checked };
    if (checked !== undefined) {
      for (const [name, value] of Object.entries(unqualified)) {
        if (typeof value === "string" && !(TABLE_NAMES as readonly string[]).includes(value)) made[name] = qualify(value, checked);
      }
      made.OUTBOX_CHANNEL = outboxChannel(checked);
    }
    statements = Object.freeze(made) as Statements;
    memo.set(checked, statements);
  }
  return statements;
}
