import { toMilliseconds } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import { checkSchema } from "../sql/statements.js";
import { checkCleanupOptions, type CleanupProgress, type CleanupResult } from "../cleanup/cleanup.js";
import { txonce } from "../adapters/pg.js";
import { pgConnection } from "./connection-url.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

export const cleanupOptions = {
  "database-url": { type: "string" },
  schema: { type: "string" },
  "batch-size": { type: "string" },
  "max-duration": { type: "string" },
  "outbox-retention": { type: "string" },
  "dry-run": { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export const cleanupUsage = `Usage: txonce cleanup [options]

Deletes expired idempotency records, then outbox messages published longer ago than their
retention, in batches, each its own short transaction, skipping rows that live traffic holds.
Safe to run from several places at once. Exit code 0 on success, 1 when the database fails
(unreachable, tables missing), 2 on a bad flag.

Options:
  --database-url <url>    PostgreSQL URL (default: $DATABASE_URL, from the environment or from
                          .env in the current folder); Prisma's ?schema=name is honoured
  --schema <name>         the schema that holds txonce's tables (default: the URL's ?schema=,
                          else the connection's search_path)
  --batch-size <n>        rows per batch (default: 1000)
  --max-duration <time>   time budget, e.g. 30s, 5m; no batch starts after it (default: 1m)
  --outbox-retention <time>  keep published outbox messages this long (default: 7d)
  --dry-run               count what would be deleted, delete nothing
  --json                  print the summary as one JSON object on the last line of stdout
  -h, --help              show this help

Example crontab line (every 15 minutes; DATABASE_URL from /srv/app/.env):
  */15 * * * *  cd /srv/app && npx txonce cleanup --max-duration 5m
`;

type Values = { [K in keyof typeof cleanupOptions]?: (typeof cleanupOptions)[K]["type"] extends "boolean" ? boolean : string };

export async function cleanupCommand(values: Values, io: CliIo): Promise<number> {
  const batchSize = values["batch-size"] === undefined ? undefined : toInteger(values["batch-size"], "--batch-size");
  const maxDuration = values["max-duration"];
  try {
    checkCleanupOptions({ batchSize, maxDuration });
  } catch (error) {
    if (error instanceof InvalidArgumentError) {
      throw new UsageError(`--${error.argument === "batchSize" ? "batch-size" : "max-duration"}: ${error.reason}`);
    }
    throw error;
  }
  const outboxRetention = values["outbox-retention"];
  if (outboxRetention !== undefined) {
    try {
      toMilliseconds(outboxRetention, "outbox-retention");
    } catch (error) {
      if (error instanceof InvalidArgumentError) throw new UsageError(`--outbox-retention: ${error.reason}`);
      throw error;
    }
  }
  const url = values["database-url"] ?? io.env.DATABASE_URL;
  if (!url) throw new UsageError("no database: pass --database-url or set DATABASE_URL (in the environment or in .env)");
  const { connectionString, schema: urlSchema } = pgConnection(url);
  try {
    checkSchema(values.schema);
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new UsageError(`--schema: ${error.reason}`);
    throw error;
  }
  // The URL's schema is the connection's search_path too: a name the option does not take (not a
  // plain identifier) is still found there.
  const schema = values.schema ?? (isPlainSchema(urlSchema) ? urlSchema : undefined);

  const { default: pg } = await import("pg").catch(() => {
    throw new Error("the pg package is not installed: npm install pg");
  });
  const pool = new pg.Pool({ connectionString, max: 1, connectionTimeoutMillis: 10_000 });
  pool.on("error", () => {}); // an idle connection dropping is not the job's failure
  const abort = new AbortController();
  let exitCode = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    exitCode = signal === "SIGINT" ? 130 : 143;
    abort.abort();
  };
  io.signals.once("SIGINT", onSignal);
  io.signals.once("SIGTERM", onSignal);
  const progress = progressReporter(io, values["dry-run"] ?? false);
  try {
    const { cleanup } = txonce(pool, { schema, outbox: { retention: outboxRetention } });
    const result = await cleanup({
      batchSize,
      maxDuration,
      dryRun: values["dry-run"],
      signal: abort.signal,
      onBatch: progress.onBatch,
    });
    progress.done();
    io.stdout.write(values.json ? `${JSON.stringify(result)}\n` : `${summary(result)}\n`);
    return exitCode;
  } finally {
    io.signals.off("SIGINT", onSignal);
    io.signals.off("SIGTERM", onSignal);
    await pool.end().catch(() => {});
  }
}

function isPlainSchema(name: string | undefined): boolean {
  try {
    return checkSchema(name) !== undefined;
  } catch {
    return false;
  }
}

function toInteger(text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`${flag}: expected a whole number, got ${JSON.stringify(text)}`);
  return Number(text);
}

const count = (n: number) => n.toLocaleString("en-US");
/** "1 expired row", "2 expired rows". */
const counted = (n: number, one: string, many: string) => `${count(n)} ${n === 1 ? one : many}`;

function summary(r: CleanupResult): string {
  const seconds = (r.durationMs / 1000).toFixed(1);
  if (r.dryRun) return `txonce cleanup (dry run): ${counted(r.deleted, "expired row", "expired rows")} would be deleted`;
  const state = r.finished ? "finished" : "stopped before the end: expired rows remain";
  return `txonce cleanup: deleted ${counted(r.deleted, "expired row", "expired rows")} in ${counted(r.batches, "batch", "batches")} in ${seconds}s (${state})`;
}

/** On a terminal: one line that updates in place. Otherwise: a plain log line at most every second. */
function progressReporter(io: CliIo, dryRun: boolean) {
  const tty = Boolean(io.stderr.isTTY);
  let lastLog = 0;
  let drawn = false;
  if (!dryRun && !tty) io.stderr.write(`txonce cleanup: started at ${new Date().toISOString()}\n`);
  const line = (p: CleanupProgress) =>
    `deleted ${counted(p.deleted, "row", "rows")} in ${counted(p.batches, "batch", "batches")}, ${(p.elapsedMs / 1000).toFixed(1)}s`;
  return {
    onBatch(p: CleanupProgress) {
      if (tty) {
        io.stderr.write(`\r\x1b[K${line(p)}`);
        drawn = true;
      } else if (p.elapsedMs - lastLog >= 1000) {
        lastLog = p.elapsedMs;
        io.stderr.write(`txonce cleanup: ${line(p)}\n`);
      }
    },
    done() {
      if (drawn) io.stderr.write("\r\x1b[K");
    },
  };
}
