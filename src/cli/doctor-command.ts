import { doctor, doctorCheckNames, type DoctorCheckName, type DoctorReport, type DoctorThresholds, type Verdict } from "../doctor/doctor.js";
import { InvalidArgumentError } from "../errors.js";
import { pgDatabase } from "../adapters/pg.js";
import { openPool, schemaOption } from "./pool.js";
import type { CliIo } from "./run.js";
import { UsageError } from "./usage-error.js";

export const doctorOptions = {
  "database-url": { type: "string" },
  ...schemaOption,
  json: { type: "boolean" },
  skip: { type: "string", multiple: true },
  threshold: { type: "string", multiple: true },
  help: { type: "boolean", short: "h" },
} as const;

export const doctorUsage = `Usage: txonce doctor [options]

Checks the health of txonce's tables (read-only): schema against the migrations of this version,
expired keys and when cleanup last ran, table and index sizes with dead tuples and bloat,
autovacuum, the oldest transaction holding back vacuum, the outbox backlog, expired leases.
Prints a verdict per check and what to do about it. Exit code: 0 ok, 1 warning, 2 problem (also
when the database cannot be reached), 64 on a bad flag. See docs/operations.md.

Options:
  --database-url <url>      PostgreSQL URL (default: $DATABASE_URL, from the environment or from
                            .env in the current folder); Prisma's ?schema=name is honoured
  --schema <name>           the schema of txonce's tables (default: the URL's ?schema=, else
                            the connection's search_path)
  --json                    print the report as one JSON object on stdout
  --skip <check>            leave a check out (repeatable, or comma-separated): ${doctorCheckNames.join(", ")}
  --threshold <name.level=value>  override a threshold (repeatable), e.g. outboxLag.warning=5m,
                            deadLetters.problem=100, deadTupleShare.warning=0.3, minDeadTuples=1000
  -h, --help                show this help

For a probe or a cron monitor: exit 2 means txonce is failing or about to (act now), 1 means look
soon. Example: npx txonce doctor --skip autovacuum --threshold outboxLag.problem=5m
`;

type Values = { "database-url"?: string; schema?: string; json?: boolean; skip?: string[]; threshold?: string[] };

/** Thresholds that are plain numbers; the others are durations ("5m", or milliseconds). */
const NUMERIC = new Set(["deadTupleShare", "bloat", "deadLetters", "minDeadTuples", "minBloatBytes"]);
const LEVELLED = new Set(["expiredKeys", "lastCleanup", "deadTupleShare", "bloat", "oldestTransaction", "outboxLag", "deadLetters", "expiredLeases"]);

export function parseThresholds(flags: readonly string[]): DoctorThresholds {
  const thresholds: Record<string, unknown> = {};
  for (const flag of flags) {
    const match = /^([A-Za-z]+)(?:\.(warning|problem))?=(.+)$/.exec(flag);
    const name = match?.[1];
    if (!match || !name || !(LEVELLED.has(name) || NUMERIC.has(name)) || LEVELLED.has(name) !== (match[2] !== undefined)) {
      throw new UsageError(
        `--threshold ${JSON.stringify(flag)}: expected <name>.<warning|problem>=<value> (${[...LEVELLED].join(", ")}) or minDeadTuples=<n> / minBloatBytes=<n>`,
      );
    }
    const text = match[3]!;
    let value: number | string = text;
    if (NUMERIC.has(name) || /^\d+$/.test(text)) {
      value = Number(text);
      if (!Number.isFinite(value)) throw new UsageError(`--threshold ${flag}: ${JSON.stringify(text)} is not a number`);
    }
    if (match[2]) thresholds[name] = { ...(thresholds[name] as object | undefined), [match[2]]: value };
    else thresholds[name] = value;
  }
  return thresholds as DoctorThresholds;
}

export async function doctorCommand(values: Values, io: CliIo): Promise<number> {
  const skip = (values.skip ?? []).flatMap((s) => s.split(",")).map((s) => s.trim()).filter(Boolean);
  for (const name of skip) {
    if (!(doctorCheckNames as readonly string[]).includes(name)) {
      throw new UsageError(`--skip: unknown check ${JSON.stringify(name)} (the checks: ${doctorCheckNames.join(", ")})`);
    }
  }
  const options = { thresholds: parseThresholds(values.threshold ?? []), skip: skip as DoctorCheckName[] };
  const { pool, schema } = await openPool(values["database-url"], io, values.schema);
  let report: DoctorReport;
  try {
    report = await doctor(pgDatabase(pool), { ...options, schema });
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new UsageError(`--threshold: ${error.message}`);
    // Not reaching the database is a problem to report, not a crash of the command.
    const reason = error instanceof Error ? error.message.split("\n")[0] || error.name : String(error);
    const code = (error as { code?: unknown }).code;
    if (values.json) {
      io.stdout.write(`${JSON.stringify({ verdict: "problem", error: reason, code: typeof code === "string" ? code : null, checks: [] })}\n`);
    } else io.stdout.write(`txonce doctor: problem: could not check the database: ${reason}${typeof code === "string" ? ` (${code})` : ""}\n`);
    return 2;
  } finally {
    await pool.end().catch(() => {});
  }
  if (values.json) io.stdout.write(`${JSON.stringify({ ...report, schema: schema ?? null })}\n`);
  else io.stdout.write(humanReport(report, schema));
  return EXIT[report.verdict];
}

const EXIT: Record<Verdict, number> = { ok: 0, warning: 1, problem: 2 };

function humanReport(report: DoctorReport, schema: string | undefined): string {
  const width = Math.max(...report.checks.map((c) => c.name.length), 6);
  const lines = [`txonce doctor: ${report.verdict}${schema ? ` (schema ${schema})` : ""}`];
  for (const check of report.checks) {
    lines.push(`${check.verdict.padEnd(8)} ${check.name.padEnd(width)}  ${check.summary}`);
    if (check.action) lines.push(`${" ".repeat(9 + width)}  -> ${check.action}`);
  }
  return `${lines.join("\n")}\n`;
}
