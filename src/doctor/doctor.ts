/**
 * `txonce doctor` as a function: the health of txonce's tables, each check with a verdict and what
 * to do about it. Read-only: every statement is a SELECT on txonce's tables or the server's
 * statistics views, each on its own (no transaction is held open).
 */
import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { Row, SqlExecutor } from "../executor.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import { expectedSchema } from "./expected-schema.js";
import { missingMigrations, type SchemaObject } from "./schema-check.js";

/** `ok`: nothing to do. `warning`: look at it soon. `problem`: txonce is failing or about to. */
export type Verdict = "ok" | "warning" | "problem";

/** The checks, in the order they run. */
export const doctorCheckNames = ["schema", "cleanup", "tables", "autovacuum", "xmin-horizon", "outbox", "leases"] as const;
export type DoctorCheckName = (typeof doctorCheckNames)[number];

/** One check's finding. */
export interface DoctorCheck {
  readonly name: DoctorCheckName;
  readonly verdict: Verdict;
  /** One line: what was found. */
  readonly summary: string;
  /** The figures behind it (counts, bytes, milliseconds, names), for `--json` and dashboards. */
  readonly detail: Readonly<Record<string, unknown>>;
  /** What to do about it; `null` when the verdict is `ok`. */
  readonly action: string | null;
}

/** What `doctor()` found. */
export interface DoctorReport {
  /** The worst verdict of the checks. */
  readonly verdict: Verdict;
  readonly checks: readonly DoctorCheck[];
}

/** A threshold at which a figure becomes a warning, and one at which it becomes a problem. */
export interface Levels<T> {
  warning?: T;
  problem?: T;
}

/** When a figure turns a check into a warning or a problem. Each level can be set on its own. */
export interface DoctorThresholds {
  /**
   * How long the oldest expired idempotency key has been waiting for cleanup. (Default:
   * `{ warning: "1d", problem: "7d" }`)
   */
  expiredKeys?: Levels<Duration>;
  /**
   * How long ago cleanup last ran, judged only while expired keys are waiting (a database with
   * nothing to clean needs no run). (Default: `{ warning: "1d", problem: "7d" }`)
   */
  lastCleanup?: Levels<Duration>;
  /**
   * Dead tuples as a share of a table's tuples (0 to 1), judged from `minDeadTuples` dead tuples
   * on. (Default: `{ warning: 0.2, problem: 0.5 }`)
   */
  deadTupleShare?: Levels<number>;
  /** Dead tuples below which a table's dead share is not judged. (Default: `10000`) */
  minDeadTuples?: number;
  /**
   * Estimated share of a table's pages that hold no live data (0 to 1), judged for tables of
   * `minBloatBytes` and more once ANALYZE has measured their rows. (Default: `{ warning: 0.5, problem: 0.8 }`)
   */
  bloat?: Levels<number>;
  /** Table size below which bloat is not judged. (Default: `67108864`, 64 MiB) */
  minBloatBytes?: number;
  /**
   * How long the oldest transaction that holds back VACUUM (another session's open transaction,
   * or a prepared one) has been open. (Default: `{ warning: "5m", problem: "1h" }`)
   */
  oldestTransaction?: Levels<Duration>;
  /**
   * How long the oldest due outbox message has waited for a relay. (Default:
   * `{ warning: "1m", problem: "15m" }`)
   */
  outboxLag?: Levels<Duration>;
  /** Dead-lettered outbox messages. (Default: `{ warning: 1, problem: 1000 }`) */
  deadLetters?: Levels<number>;
  /**
   * How long ago the oldest expired lease ended (a relay stopped while publishing and no relay
   * has taken the message over since). (Default: `{ warning: "1m", problem: "15m" }`)
   */
  expiredLeases?: Levels<Duration>;
}

/** Options of `doctor()`. */
export interface DoctorOptions {
  /** When figures become warnings or problems. (Default: see {@link DoctorThresholds}) */
  thresholds?: DoctorThresholds;
  /** Checks not to run, e.g. `["autovacuum"]` where VACUUM is scheduled by hand. (Default: none) */
  skip?: readonly DoctorCheckName[];
  /**
   * The schema txonce's tables are in, as the `schema` option of `txonce(client)`; `t.doctor()`
   * passes its own. (Default: the connection's current schema, the first of its search_path)
   */
  schema?: string;
}

const DEFAULTS = {
  expiredKeys: { warning: "1d", problem: "7d" },
  lastCleanup: { warning: "1d", problem: "7d" },
  deadTupleShare: { warning: 0.2, problem: 0.5 },
  minDeadTuples: 10_000,
  bloat: { warning: 0.5, problem: 0.8 },
  minBloatBytes: 64 * 1024 * 1024,
  oldestTransaction: { warning: "5m", problem: "1h" },
  outboxLag: { warning: "1m", problem: "15m" },
  deadLetters: { warning: 1, problem: 1000 },
  expiredLeases: { warning: "1m", problem: "15m" },
} as const;

interface Resolved {
  expiredKeys: Level;
  lastCleanup: Level;
  deadTupleShare: Level;
  minDeadTuples: number;
  bloat: Level;
  minBloatBytes: number;
  oldestTransaction: Level;
  outboxLag: Level;
  deadLetters: Level;
  expiredLeases: Level;
}
interface Level {
  warning: number;
  problem: number;
}

/** Checks the options before any statement runs. */
export function checkDoctorOptions(options: DoctorOptions = {}): { thresholds: Resolved; skip: Set<DoctorCheckName> } {
  const t = options.thresholds ?? {};
  if (typeof t !== "object" || t === null) throw new InvalidArgumentError("thresholds", "expected an object");
  const duration = (name: keyof DoctorThresholds): Level => {
    const given = (t[name] ?? {}) as Levels<Duration>;
    const defaults = DEFAULTS[name] as { warning: Duration; problem: Duration };
    const level = {
      warning: toMilliseconds(given.warning ?? defaults.warning, `thresholds.${name}.warning`),
      problem: toMilliseconds(given.problem ?? defaults.problem, `thresholds.${name}.problem`),
    };
    return ordered(name, level);
  };
  const number = (name: keyof DoctorThresholds, max: number): Level => {
    const given = (t[name] ?? {}) as Levels<number>;
    const defaults = DEFAULTS[name] as Level;
    const level = { warning: given.warning ?? defaults.warning, problem: given.problem ?? defaults.problem };
    for (const which of ["warning", "problem"] as const) {
      const value = level[which];
      if (typeof value !== "number" || !(value >= 0 && value <= max)) {
        throw new InvalidArgumentError(`thresholds.${name}.${which}`, `expected a number from 0 to ${max}, got ${String(value)}`);
      }
    }
    return ordered(name, level);
  };
  const count = (name: "minDeadTuples" | "minBloatBytes"): number => {
    const value = t[name] ?? DEFAULTS[name];
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new InvalidArgumentError(`thresholds.${name}`, `expected a non-negative integer, got ${String(value)}`);
    }
    return value;
  };
  const skip = new Set<DoctorCheckName>();
  for (const name of options.skip ?? []) {
    if (!(doctorCheckNames as readonly string[]).includes(name)) {
      throw new InvalidArgumentError("skip", `unknown check ${JSON.stringify(name)} (the checks: ${doctorCheckNames.join(", ")})`);
    }
    skip.add(name);
  }
  return {
    thresholds: {
      expiredKeys: duration("expiredKeys"),
      lastCleanup: duration("lastCleanup"),
      deadTupleShare: number("deadTupleShare", 1),
      minDeadTuples: count("minDeadTuples"),
      bloat: number("bloat", 1),
      minBloatBytes: count("minBloatBytes"),
      oldestTransaction: duration("oldestTransaction"),
      outboxLag: duration("outboxLag"),
      deadLetters: number("deadLetters", Number.MAX_SAFE_INTEGER),
      expiredLeases: duration("expiredLeases"),
    },
    skip,
  };
}

function ordered(name: string, level: Level): Level {
  if (level.warning > level.problem) {
    throw new InvalidArgumentError(`thresholds.${name}`, "the warning level must not be above the problem level");
  }
  return level;
}

/** The verdict of `value` against a threshold pair (at or above a level counts). */
const judge = (value: number, level: Level): Verdict => (value >= level.problem ? "problem" : value >= level.warning ? "warning" : "ok");

const RANK: Record<Verdict, number> = { ok: 0, warning: 1, problem: 2 };
/** The worse of the verdicts. */
export const worst = (verdicts: Iterable<Verdict>): Verdict => {
  let result: Verdict = "ok";
  for (const v of verdicts) if (RANK[v] > RANK[result]) result = v;
  return result;
};

/**
 * Runs txonce's health checks on `db` (read-only): the schema against the migrations this
 * version ships, cleanup, the tables' size and dead tuples, autovacuum, the xmin horizon, the
 * outbox backlog and expired leases. Reads the tables of the `schema` option, or of the
 * connection's current schema (the first of its search_path). Bad options throw {@link InvalidArgumentError} before any statement.
 */
export async function doctor(db: SqlExecutor, options: DoctorOptions = {}): Promise<DoctorReport> {
  const { thresholds, skip } = checkDoctorOptions(options);
  const sql = statementsFor(options.schema);
  const live = (await db.query(sql.schemaObjects, [])) as unknown as SchemaObject[];
  const tables = new Set(live.filter((o) => o.kind === "table").map((o) => o.name));
  const checks: DoctorCheck[] = [];
  const run = async (name: DoctorCheckName, check: () => DoctorCheck | Promise<DoctorCheck>) => {
    if (!skip.has(name)) checks.push(await check());
  };
  const missingTable = (name: DoctorCheckName, table: string): DoctorCheck => ({
    name,
    verdict: "problem",
    summary: `not checked: table ${table} is missing`,
    detail: { missingTable: table },
    action: "Apply txonce's migrations (see the schema check).",
  });

  await run("schema", () => schemaCheck(live));
  await run("cleanup", () =>
    tables.has(sql.IDEMPOTENCY_TABLE) ? cleanupCheck(db, sql, thresholds, tables.has(sql.CLEANUP_RUNS_TABLE)) : missingTable("cleanup", sql.IDEMPOTENCY_TABLE),
  );
  await run("tables", () => tablesCheck(db, sql, thresholds));
  await run("autovacuum", () => autovacuumCheck(db, sql));
  await run("xmin-horizon", () => xminCheck(db, sql, thresholds));
  await run("outbox", () => (tables.has(sql.OUTBOX_TABLE) ? outboxCheck(db, sql, thresholds) : missingTable("outbox", sql.OUTBOX_TABLE)));
  await run("leases", () => (tables.has(sql.OUTBOX_TABLE) ? leasesCheck(db, sql, thresholds) : missingTable("leases", sql.OUTBOX_TABLE)));
  return { verdict: worst(checks.map((c) => c.verdict)), checks };
}

function schemaCheck(live: readonly SchemaObject[]): DoctorCheck {
  const missing = missingMigrations(expectedSchema, live);
  const expected = expectedSchema.migrations.length;
  if (missing.length === 0) {
    return {
      name: "schema",
      verdict: "ok",
      summary: `txonce's tables match its ${expected} migrations`,
      detail: { migrations: expected, missing: [] },
      action: null,
    };
  }
  const breaking = missing.some((m) => m.breaking);
  const none = !live.some((o) => o.kind === "table");
  return {
    name: "schema",
    verdict: breaking ? "problem" : "warning",
    summary: none
      ? "txonce's tables are not in this database (or not in the schema first on the search_path)"
      : `${missing.length} of ${expected} migrations missing or changed: ${missing.map((m) => `${m.name} (${m.reason})`).join("; ")}`,
    detail: { migrations: expected, missing },
    action:
      "Apply the missing migrations: with Prisma, `npx txonce init` then `npx prisma migrate dev` (production: `prisma migrate deploy`); " +
      "without Prisma, run node_modules/txonce/prisma/migrations/<name>/migration.sql for each one named, in order." +
      (breaking ? " Until then txonce's statements fail." : ""),
  };
}

async function cleanupCheck(db: SqlExecutor, sql: Statements, t: Resolved, runsTable: boolean): Promise<DoctorCheck> {
  const [keys] = await db.query(sql.doctorExpiredKeys, []);
  const expired = Number(keys?.expired ?? 0);
  const now = toDate(keys?.db_now).getTime();
  const oldestExpiry = keys?.oldest_expiry ? toDate(keys.oldest_expiry) : null;
  const waitingMs = oldestExpiry ? now - oldestExpiry.getTime() : 0;
  const [run] = runsTable ? await db.query(sql.doctorLastCleanupRun, []) : [];
  const lastRunAt = run ? toDate(run.finished_at) : null;
  const sinceRunMs = lastRunAt ? now - lastRunAt.getTime() : null;
  const lastRun = run
    ? { finishedAt: lastRunAt, startedAt: toDate(run.started_at), deleted: Number(run.deleted), finished: run.finished === true, runner: run.runner }
    : null;

  const waiting = expired > 0 ? judge(waitingMs, t.expiredKeys) : "ok";
  // A run long ago matters only while there is something to clean.
  const stale = expired === 0 ? "ok" : sinceRunMs === null ? "warning" : judge(sinceRunMs, t.lastCleanup);
  const verdict = worst([waiting, stale]);
  const ran = lastRun ? `last run ${ago(sinceRunMs!)} ago (${lastRun.runner}, deleted ${count(lastRun.deleted)}${lastRun.finished ? "" : ", stopped before the end"})` : runsTable ? "no run recorded" : "no run recorded (table txonce_cleanup_runs missing)";
  return {
    name: "cleanup",
    verdict,
    summary: expired === 0 ? `no expired keys waiting; ${ran}` : `${count(expired)} expired keys waiting, the oldest expired ${ago(waitingMs)} ago; ${ran}`,
    detail: { expiredKeys: expired, oldestExpiry, oldestExpiredMs: waitingMs, lastRun, sinceLastRunMs: sinceRunMs },
    action:
      verdict === "ok"
        ? null
        : "Run cleanup regularly: `npx txonce cleanup` from cron (every 15 minutes), `t.scheduleCleanup()` in the app, or pg_cron's `CALL txonce_cleanup()`; " +
          "if it runs but does not keep up, give it a longer --max-duration.",
  };
}

async function tablesCheck(db: SqlExecutor, sql: Statements, t: Resolved): Promise<DoctorCheck> {
  const rows = await db.query(sql.doctorTables, []);
  const tables = rows.map((row) => tableHealth(row, t));
  const verdict = worst(tables.map((x) => x.verdict));
  const summary = tables.length === 0 ? "no txonce tables found" : tables.map((x) => x.summary).join("; ");
  const actions = [...new Set(tables.flatMap((x) => (x.action ? [x.action] : [])))];
  return {
    name: "tables",
    verdict: tables.length === 0 ? "problem" : verdict,
    summary,
    detail: { tables: tables.map((x) => x.detail) },
    action: tables.length === 0 ? "Apply txonce's migrations (see the schema check)." : actions.length ? actions.join(" ") : null,
  };
}

function tableHealth(row: Row, t: Resolved) {
  const name = String(row.name);
  const totalBytes = Number(row.total_bytes);
  const tableBytes = Number(row.table_bytes);
  const live = Number(row.live_tuples ?? 0);
  const dead = Number(row.dead_tuples ?? 0);
  const deadShare = live + dead === 0 ? 0 : dead / (live + dead);
  const rowWidth = row.row_width === null || row.row_width === undefined ? null : Number(row.row_width);
  // Live data as ANALYZE measured it (average width of the columns, plus tuple header and line pointer).
  const bloat = rowWidth === null || tableBytes === 0 ? null : Math.max(0, 1 - (live * (rowWidth + 28)) / tableBytes);
  const deadVerdict = dead >= t.minDeadTuples ? judge(deadShare, t.deadTupleShare) : "ok";
  const bloatVerdict = bloat !== null && tableBytes >= t.minBloatBytes ? judge(bloat, t.bloat) : "ok";
  const verdict = worst([deadVerdict, bloatVerdict]);
  const lastVacuum = latest(row.last_vacuum, row.last_autovacuum);
  const action =
    deadVerdict !== "ok"
      ? `VACUUM (ANALYZE) the tables with many dead tuples, and check what keeps autovacuum from doing it (the autovacuum and xmin-horizon checks).`
      : bloatVerdict !== "ok"
        ? "Reclaim the empty space once dead tuples are vacuumed: pg_repack, or VACUUM FULL in a maintenance window (it locks the table)."
        : null;
  return {
    verdict,
    action,
    summary: `${name} ${bytes(totalBytes)} (table ${bytes(tableBytes)}, indexes ${bytes(Number(row.index_bytes))}), ${percent(deadShare)} dead${
      bloat === null ? "" : `, ~${percent(bloat)} bloat`
    }`,
    detail: {
      table: name,
      totalBytes,
      tableBytes,
      indexBytes: Number(row.index_bytes),
      liveTuples: live,
      deadTuples: dead,
      deadShare,
      bloatEstimate: bloat,
      lastVacuum,
      lastAnalyze: latest(row.last_analyze, row.last_autoanalyze),
      verdict,
    },
  };
}

async function autovacuumCheck(db: SqlExecutor, sql: Statements): Promise<DoctorCheck> {
  const [settings] = await db.query(sql.doctorAutovacuum, []);
  const rows = await db.query(sql.doctorTables, []);
  const server = settings?.autovacuum === "on";
  const trackCounts = settings?.track_counts === "on";
  const tables = rows.map((row) => {
    const options = (row.reloptions as string[] | null) ?? [];
    const enabled = !options.some((o) => /^autovacuum_enabled=(false|off|no|0)$/i.test(o));
    return { table: String(row.name), autovacuumEnabled: enabled, options };
  });
  const offTables = tables.filter((x) => !x.autovacuumEnabled).map((x) => x.table);
  const problems: string[] = [];
  if (!server) problems.push("autovacuum is off on the server");
  if (!trackCounts) problems.push("track_counts is off (autovacuum cannot see dead tuples)");
  if (offTables.length) problems.push(`autovacuum_enabled=false on ${offTables.join(", ")}`);
  const verdict: Verdict = problems.length ? "warning" : "ok";
  return {
    name: "autovacuum",
    verdict,
    summary: problems.length
      ? `${problems.join("; ")}: dead tuples stay until someone runs VACUUM`
      : `on (server scale factor ${String(settings?.vacuum_scale_factor)}, threshold ${String(settings?.vacuum_threshold)}; ${tables
          .map((x) => `${x.table}: ${x.options.filter((o) => o.startsWith("autovacuum")).join(", ") || "server defaults"}`)
          .join("; ")})`,
    detail: {
      server,
      trackCounts,
      serverScaleFactor: Number(settings?.vacuum_scale_factor),
      serverThreshold: Number(settings?.vacuum_threshold),
      tables,
    },
    action:
      verdict === "ok"
        ? null
        : "Turn autovacuum on (autovacuum = on and track_counts = on in postgresql.conf; ALTER TABLE ... RESET (autovacuum_enabled)), or VACUUM txonce's tables on a schedule.",
  };
}

async function xminCheck(db: SqlExecutor, sql: Statements, t: Resolved): Promise<DoctorCheck> {
  const rows = await db.query(sql.doctorXminHolders, []);
  const holders = rows.map((row) => ({
    kind: String(row.kind) as "transaction" | "prepared" | "slot",
    id: String(row.id),
    xidAge: Number(row.xid_age),
    openMs: row.seconds === null || row.seconds === undefined ? null : Math.round(Number(row.seconds) * 1000),
    state: (row.state as string | null) ?? null,
    user: (row.user as string | null) ?? null,
    applicationName: (row.application_name as string | null) || null,
    query: (row.query as string | null) ?? null,
  }));
  const oldest = holders.find((h) => h.openMs !== null);
  const inactiveSlots = holders.filter((h) => h.kind === "slot" && h.state === "inactive");
  const verdict = worst([oldest ? judge(oldest.openMs!, t.oldestTransaction) : "ok", inactiveSlots.length ? "warning" : "ok"]);
  const describe = (h: (typeof holders)[number]) =>
    h.kind === "transaction"
      ? `session ${h.id}${h.user ? ` (${h.user}${h.applicationName ? `, ${h.applicationName}` : ""})` : ""}, ${h.state ?? "?"}, open ${ago(h.openMs!)}${h.query ? `: ${h.query}` : ""}`
      : h.kind === "prepared"
        ? `prepared transaction ${JSON.stringify(h.id)}, open ${ago(h.openMs!)}`
        : `replication slot ${h.id} (${h.state})`;
  return {
    name: "xmin-horizon",
    verdict,
    summary: oldest || inactiveSlots.length
      ? `oldest holder of the xmin horizon: ${describe(oldest ?? inactiveSlots[0]!)}${inactiveSlots.length && oldest ? `; inactive slot ${inactiveSlots[0]!.id}` : ""}`
      : "no open transaction or slot holds back vacuum",
    detail: { holders },
    action:
      verdict === "ok"
        ? null
        : "VACUUM cannot remove row versions newer than the oldest open transaction: end it (commit, or pg_terminate_backend(pid); " +
          "COMMIT PREPARED / ROLLBACK PREPARED for a prepared one; pg_drop_replication_slot for an abandoned slot), and set " +
          "idle_in_transaction_session_timeout so it cannot happen again. (Other roles' sessions show only with the pg_monitor role.)",
  };
}

async function outboxCheck(db: SqlExecutor, sql: Statements, t: Resolved): Promise<DoctorCheck> {
  const [row] = await db.query(sql.doctorOutbox, []);
  const pending = Number(row?.pending ?? 0);
  const dead = Number(row?.dead ?? 0);
  const oldestDueMs = Math.round(Number(row?.oldest_due_ms ?? 0));
  const lag = pending > 0 ? judge(oldestDueMs, t.outboxLag) : "ok";
  const deadVerdict = judge(dead, t.deadLetters);
  const verdict = worst([lag, deadVerdict]);
  const actions: string[] = [];
  if (lag !== "ok") actions.push("Due messages are not being published: check that a relay runs (relay.start()) and reaches the broker (its onError).");
  if (deadVerdict !== "ok") {
    actions.push("Look at the dead letters (`npx txonce dead list`), fix the cause (last_error), then `npx txonce dead requeue --topic <topic>`.");
  }
  return {
    name: "outbox",
    verdict,
    summary: `${count(pending)} pending${pending > 0 ? `, the oldest due one waiting ${ago(oldestDueMs)}` : ""}; ${count(dead)} dead`,
    detail: { pending, dead, oldestDueMs },
    action: actions.length ? actions.join(" ") : null,
  };
}

async function leasesCheck(db: SqlExecutor, sql: Statements, t: Resolved): Promise<DoctorCheck> {
  const [row] = await db.query(sql.doctorOutbox, []);
  const expired = Number(row?.expired_leases ?? 0);
  const oldestMs = Math.round(Number(row?.oldest_expired_lease_ms ?? 0));
  const verdict = expired > 0 ? judge(oldestMs, t.expiredLeases) : "ok";
  return {
    name: "leases",
    verdict,
    summary: expired === 0 ? "no lease past its end" : `${count(expired)} messages leased by a relay whose lease ended ${ago(oldestMs)} ago`,
    detail: { expiredLeases: expired, oldestExpiredMs: oldestMs },
    action:
      verdict === "ok"
        ? null
        : "A relay stopped while publishing them and no relay has taken them over: make sure a relay is running; it takes them over once their lease has ended.",
  };
}

const toDate = (value: unknown) => (value instanceof Date ? value : new Date(value as string));

function latest(...values: unknown[]): Date | null {
  const dates = values.filter((v) => v !== null && v !== undefined).map(toDate);
  return dates.length ? new Date(Math.max(...dates.map((d) => d.getTime()))) : null;
}

const count = (n: number) => n.toLocaleString("en-US");
const percent = (share: number) => `${(share * 100).toFixed(share > 0 && share < 0.01 ? 1 : 0)}%`;

function bytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** "850ms", "42s", "3m 20s", "5h 12m", "3d 4h". */
export function ago(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}
