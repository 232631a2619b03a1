import { txonce } from "../adapters/pg.js";
import type { KeyRecord } from "../keys.js";
import { openPool, schemaOption } from "./pool.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

export const keysActions = ["show", "forget", "purge"] as const;

export const keysOptions = {
  "database-url": { type: "string" },
  ...schemaOption,
  scope: { type: "string" },
  key: { type: "string" },
  yes: { type: "boolean" },
  "batch-size": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export const keysUsage = `Usage: txonce keys show|forget|purge --scope <scope> [options]

  txonce keys show --scope S --key K     a key's record: status, created, expires, fingerprint, result
  txonce keys forget --scope S --key K   delete the key's record so that the next call runs again
                                         (waits for a call running it right now, at most 5s)
  txonce keys purge --scope S --yes      delete every record of the scope, in batches (a tenant leaving)

A scope is always required: these commands never act on the default scope ("", keys used without
a scope) or on all scopes at once. Exit code 0 when done, 1 when the database fails, 64 on a bad
flag or a missing --scope/--key/--yes.

Options:
  --database-url <url>   PostgreSQL URL (default: $DATABASE_URL, from the environment or .env)
  --schema <name>        the schema of txonce's tables (default: the URL's ?schema=, else the
                         connection's search_path)
  --scope <scope>        the scope (required)
  --key <key>            the key (show, forget)
  --yes                  confirm a purge
  --batch-size <n>       rows per batch of a purge (default: 1000)
  --json                 print the outcome as one JSON object on stdout
  -h, --help             show this help
`;

type Values = { "database-url"?: string; schema?: string; scope?: string; key?: string; yes?: boolean; "batch-size"?: string; json?: boolean };

export async function keysCommand(action: (typeof keysActions)[number], values: Values, io: CliIo): Promise<number> {
  const scope = values.scope;
  if (!scope) throw new UsageError("--scope is required (a non-empty scope)");
  if (action !== "purge" && !values.key) throw new UsageError("--key is required");
  if (action === "purge" && values.key !== undefined) throw new UsageError("purge deletes a whole scope: leave --key out (forget deletes one key)");
  if (action === "purge" && !values.yes) throw new UsageError(`purge deletes every record of scope ${JSON.stringify(scope)}: add --yes to confirm`);
  const batchSize = values["batch-size"] === undefined ? undefined : Number(values["batch-size"]);
  if (batchSize !== undefined && !(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= 100_000)) {
    throw new UsageError(`--batch-size: expected a whole number from 1 to 100000, got ${JSON.stringify(values["batch-size"])}`);
  }
  const { pool, schema } = await openPool(values["database-url"], io, values.schema);
  try {
    const { keys } = txonce(pool, { schema });
    const key = values.key!;
    if (action === "show") {
      const record = await keys.inspect({ scope, key });
      io.stdout.write(values.json ? `${JSON.stringify(jsonRecord(record))}\n` : showRecord(record));
    } else if (action === "forget") {
      const deleted = await keys.forget({ scope, key });
      io.stdout.write(
        values.json
          ? `${JSON.stringify({ scope, key, deleted })}\n`
          : `txonce keys forget: ${deleted ? "deleted the record of" : "no record of"} key ${JSON.stringify(key)} in scope ${JSON.stringify(scope)}${deleted ? "; its next call runs again" : ""}\n`,
      );
    } else {
      const deleted = await keys.purge({ scope }, { batchSize });
      io.stdout.write(
        values.json ? `${JSON.stringify({ scope, deleted })}\n` : `txonce keys purge: deleted ${deleted.toLocaleString("en-US")} records of scope ${JSON.stringify(scope)}\n`,
      );
    }
    return 0;
  } finally {
    await pool.end().catch(() => {});
  }
}

/** The record for JSON: the result as its codec's JSON (Dates, BigInts ... as superjson writes them). */
function jsonRecord({ scope, key, status, createdAt, expiresAt, fingerprint, encodedResult }: KeyRecord) {
  // Not `record.result`: decoding needs the application's types (Prisma's Decimal ...), which the
  // command does not have; the codec's JSON shows the value all the same.
  const result = encodedResult === null ? null : (JSON.parse(encodedResult) as { json: unknown }).json;
  return { scope, key, status, createdAt, expiresAt, fingerprint, result, encodedResult };
}

function showRecord(record: KeyRecord): string {
  const lines: [string, string][] = [
    ["scope", JSON.stringify(record.scope)],
    ["key", JSON.stringify(record.key)],
    ["status", record.status],
  ];
  if (record.createdAt) {
    lines.push(["created", record.createdAt.toISOString()], ["expires", record.expiresAt!.toISOString()]);
    lines.push(["fingerprint", record.fingerprint ?? "(none)"]);
    lines.push(["result", record.encodedResult === null ? "(none)" : JSON.stringify((JSON.parse(record.encodedResult) as { json: unknown }).json)]);
  }
  return `${lines.map(([name, value]) => `${`${name}:`.padEnd(13)}${value}`).join("\n")}\n`;
}
