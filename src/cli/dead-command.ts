import { txonce } from "../adapters/pg.js";
import { openPool, schemaOption } from "./pool.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

export const deadActions = ["list", "requeue"] as const;

export const deadOptions = {
  "database-url": { type: "string" },
  ...schemaOption,
  topic: { type: "string" },
  id: { type: "string", multiple: true },
  all: { type: "boolean" },
  limit: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export const deadUsage = `Usage: txonce dead list|requeue [options]

  txonce dead list [--topic T] [--limit N]           dead-lettered outbox messages, oldest first
  txonce dead requeue --topic T | --id ID ... | --all  put them back in the queue with fresh attempts

requeue needs a filter (--topic, --id, or both) or --all. Exit code 0 when done, 1 when the
database fails, 64 on a bad flag.

Options:
  --database-url <url>   PostgreSQL URL (default: $DATABASE_URL, from the environment or .env)
  --schema <name>        the schema of txonce's tables (default: the URL's ?schema=, else the
                         connection's search_path)
  --topic <topic>        only this topic
  --id <id>              only this message (repeatable)
  --all                  requeue every dead message
  --limit <n>            list at most n messages (default: 100)
  --json                 print the outcome as JSON on stdout (list: one message per line)
  -h, --help             show this help
`;

type Values = { "database-url"?: string; schema?: string; topic?: string; id?: string[]; all?: boolean; limit?: string; json?: boolean };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export async function deadCommand(action: (typeof deadActions)[number], values: Values, io: CliIo): Promise<number> {
  if (values.topic === "") throw new UsageError("--topic: must not be empty");
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (action === "list") {
    if (values.id !== undefined || values.all) throw new UsageError("list takes --topic and --limit (--id and --all are for requeue)");
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 10_000)) {
      throw new UsageError(`--limit: expected a whole number from 1 to 10000, got ${JSON.stringify(values.limit)}`);
    }
  } else {
    if (limit !== undefined) throw new UsageError("--limit is for list");
    const filtered = values.topic !== undefined || values.id !== undefined;
    if (!filtered && !values.all) throw new UsageError("requeue needs --topic, --id, or --all (to requeue every dead message)");
    if (filtered && values.all) throw new UsageError("--all requeues every dead message: leave out --topic and --id, or --all");
    for (const id of values.id ?? []) if (!UUID.test(id)) throw new UsageError(`--id: ${JSON.stringify(id)} is not a message id (a UUID)`);
  }
  const { pool, schema } = await openPool(values["database-url"], io, values.schema);
  try {
    const { outbox } = txonce(pool, { schema });
    if (action === "list") {
      const messages = await outbox.listDead({ topic: values.topic, limit });
      if (values.json) {
        for (const m of messages) {
          const { payload: _decoded, encodedPayload, ...rest } = m;
          io.stdout.write(`${JSON.stringify({ ...rest, payload: (JSON.parse(encodedPayload) as { json: unknown }).json })}\n`);
        }
      } else if (messages.length === 0) {
        io.stdout.write(`txonce dead list: no dead messages${values.topic ? ` in topic ${JSON.stringify(values.topic)}` : ""}\n`);
      } else {
        for (const m of messages) {
          io.stdout.write(
            `${m.id}  ${m.topic}${m.key === null ? "" : ` key ${JSON.stringify(m.key)}`}  died ${m.deadAt.toISOString()} after ${m.attempts} attempts: ${(m.lastError ?? "").split("\n")[0]}\n`,
          );
        }
      }
    } else {
      const requeued = await outbox.requeueDead(values.all ? {} : { topic: values.topic, ids: values.id });
      io.stdout.write(values.json ? `${JSON.stringify({ requeued })}\n` : `txonce dead requeue: requeued ${requeued.toLocaleString("en-US")} messages\n`);
    }
    return 0;
  } finally {
    await pool.end().catch(() => {});
  }
}
