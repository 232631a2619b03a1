/**
 * The relay's Node instructions per message, counted by valgrind's callgrind (issue 12): a figure
 * that the machine's load cannot move, where the telemetry bench's throughput ratios on a shared
 * 2-core machine spread by 10-30% from round to round.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:instructions
 *
 * Each mode runs in its own process under `valgrind --tool=callgrind`, Node with `--predictable`
 * (no concurrent compilation or garbage collection: without it, two runs of one mode differed by
 * 30%, one with a major collection inside the counted drain and one without). The process fills
 * the outbox with INSTRUCTIONS_MESSAGES (5,000) unkeyed messages and drains them with one relay
 * (batchSize 100, a no-op publisher, or RabbitMQ with INSTRUCTIONS_PUBLISHER=rabbitmq),
 * INSTRUCTIONS_WARMUPS (12) times to warm up; then the counters are zeroed (`callgrind_control
 * -z`), one more drain runs, and its instructions are dumped (`callgrind_control -d`). The
 * warm-up is long because the send telemetry's recording runs once per batch, 50 times a drain:
 * after 2 drains the SDK mode counted 21,300 instructions per message more than "contexts
 * stored", after 12 drains 11,300 and after 24 11,800 (Node 24); the relay's own per-message
 * code was warm after 2. Modes, with the OpenTelemetry SDK registered as the telemetry bench
 * registers it (dropping exporters):
 *
 *   SDK, txonce off                    txonce's telemetry off, messages without a creation context
 *   SDK, txonce off, contexts stored   the same, each message holding a creation context
 *   SDK                                txonce's telemetry on, each message holding a creation context
 *   SDK, before                        the same with TELEMETRY_BEFORE_SRC's txonce (another src/ tree)
 *   SDK, {label}                       the same with each of INSTRUCTIONS_TREES' trees ("label=path;label=path")
 *
 * INSTRUCTIONS_MODES="SDK;SDK, before" counts those modes alone (default: all of them). With
 * INSTRUCTIONS_TREES, copies of src/ with one part of the telemetry taken out say what that part
 * costs (docs/benchmarks.md, "Telemetry, eighth pass").
 *
 * Two modes run at a time, about 5 minutes a pair. Two runs of one mode differ by about 3%. The counts are Node's
 * instructions alone: not PostgreSQL's, not RabbitMQ's, and not time. Needs valgrind
 * (`apt install valgrind`) and a PostgreSQL at DATABASE_URL; a database is made per mode and dropped.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import pg from "pg";
import { env, fileNameOf, fmt, loadavg, log, num, relayFor, table } from "./common.js";
import { schemaSql } from "../src/sql/schema.js";
import { databaseUrl } from "../test/support/postgres-server.js";

/** "SDK, txonce off", "SDK, txonce off, contexts stored", "SDK", or "SDK, {label}" of another tree. */
type Mode = string;

const MESSAGES = Math.max(1000, Math.round(env("INSTRUCTIONS_MESSAGES", 5000)));
const PUBLISHER = process.env.INSTRUCTIONS_PUBLISHER ?? "noop";
/** Drains before the counted one, for the JIT (INSTRUCTIONS_WARMUPS, default 12). */
const WARMUPS = Math.max(0, Math.round(env("INSTRUCTIONS_WARMUPS", 12)));
const RABBITMQ_URL = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";
/** Other src/ trees by label, each counted as the mode "SDK, {label}". */
const TREES = new Map<string, string>(
  [
    ...(process.env.TELEMETRY_BEFORE_SRC ? [`before=${process.env.TELEMETRY_BEFORE_SRC}`] : []),
    ...(process.env.INSTRUCTIONS_TREES ?? "").split(";").filter(Boolean),
  ].map((entry) => {
    const at = entry.indexOf("=");
    if (at <= 0) throw new Error(`INSTRUCTIONS_TREES: "${entry}" is not label=path`);
    return [`SDK, ${entry.slice(0, at).trim()}`, entry.slice(at + 1).trim()];
  }),
);
const root = fileURLToPath(new URL("..", import.meta.url));
const self = fileURLToPath(import.meta.url);

if (process.argv[2] === "--drain") await drainUnderCount(process.argv.slice(3));
else await main();

async function main() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error("DATABASE_URL: the PostgreSQL server to drain from (a database is made per mode)");
  if (PUBLISHER !== "noop" && PUBLISHER !== "rabbitmq") throw new Error(`INSTRUCTIONS_PUBLISHER=${PUBLISHER}: expected noop or rabbitmq`);
  const valgrind = await new Promise<boolean>((resolve) => spawn("valgrind", ["--version"]).on("error", () => resolve(false)).on("exit", (code) => resolve(code === 0)));
  if (!valgrind) {
    log("valgrind is not installed (apt install valgrind): nothing counted.");
    return;
  }
  const only = process.env.INSTRUCTIONS_MODES?.split(";").map((mode) => mode.trim());
  const modes: Mode[] = ["SDK, txonce off", "SDK, txonce off, contexts stored", "SDK", ...TREES.keys()].filter((mode) => !only || only.includes(mode));
  if (modes.length === 0) throw new Error(`INSTRUCTIONS_MODES=${process.env.INSTRUCTIONS_MODES}: no such mode`);
  log("The relay's Node instructions per message (callgrind)");
  log(`node ${process.version}, --predictable; ${num(MESSAGES)} unkeyed messages per counted drain, after ${WARMUPS} drains to warm up; batchSize 100; publisher ${PUBLISHER === "rabbitmq" ? `RabbitMQ (${RABBITMQ_URL})` : "no-op"}; load ${loadavg()}`);
  const dir = mkdtempSync(join(tmpdir(), "txonce-instructions-"));
  const counts = {} as Record<Mode, number>;
  try {
    // Two at a time: callgrind runs one thread, and the machine has two cores.
    const queue = [...modes];
    await Promise.all(
      [0, 1].map(async () => {
        for (let mode = queue.shift(); mode; mode = queue.shift()) counts[mode] = await countMode(url, mode, dir);
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const reference = counts["SDK, txonce off"];
  log();
  table(
    ["mode", "instructions/msg", ...(reference ? ["ratio to SDK, txonce off"] : [])],
    modes.map((mode) => [mode, num(counts[mode]!), ...(reference ? [`${fmt(counts[mode]! / reference, 3)}x`] : [])]),
  );
  const stored = counts["SDK, txonce off, contexts stored"];
  if (reference === undefined || stored === undefined || counts.SDK === undefined) return;
  log();
  log(
    `txonce's telemetry adds ${num(counts.SDK - stored)} instructions per message to the drain of messages holding a creation context; ` +
      `holding one adds ${num(stored - reference)} with the telemetry off.`,
  );
}

/** One mode in its own process under callgrind: the counted drain's instructions per message. */
async function countMode(serverUrl: string, mode: Mode, dir: string): Promise<number> {
  const name = fileNameOf(mode);
  const database = `txonce_instructions_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${database}`);
    const url = databaseUrl(serverUrl, database);
    const setup = new pg.Client({ connectionString: url });
    await setup.connect();
    await setup.query(schemaSql);
    await setup.end();
    const out = join(dir, `${name}.out`);
    const signal = join(dir, `${name}.signal`);
    const src = TREES.get(mode) ?? join(root, "src");
    const child = spawn(
      "valgrind",
      ["--tool=callgrind", `--callgrind-out-file=${out}`, process.execPath, "--predictable", "--expose-gc", "--import", "tsx", self, "--drain", url, String(MESSAGES), mode, src, signal],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RABBITMQ_URL, INSTRUCTIONS_PUBLISHER: PUBLISHER } },
    );
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    let buffered = "";
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      for (let end = buffered.indexOf("\n"); end >= 0; end = buffered.indexOf("\n")) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        const at = /^SIGNAL (start|end)$/.exec(line)?.[1];
        // Zero the counters before the counted drain, dump them after it; then let the process go on.
        if (at) void control(at === "start" ? "-z" : "-d", child.pid!).then(() => writeFileSync(`${signal}.${at}`, ""));
      }
    });
    const code = await exited;
    const dump = readdirSync(dir).find((file) => file === `${name}.out.1`);
    if (code !== 0 || !dump) throw new Error(`${mode}: the drain under callgrind failed (exit ${code}):\n${stderr.slice(-2000)}`);
    const totals = /^(?:summary|totals): (\d+)/m.exec(readFileSync(join(dir, dump), "utf8"));
    if (!totals) throw new Error(`${mode}: no totals in ${dump}`);
    log(`${mode}: ${num(Number(totals[1]))} instructions in the counted drain`);
    return Number(totals[1]) / MESSAGES;
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => {});
    await admin.end();
  }
}

function control(option: string, pid: number): Promise<void> {
  return new Promise((resolve, reject) =>
    spawn("callgrind_control", [option, String(pid)], { stdio: "ignore" })
      .on("error", reject)
      .on("exit", () => resolve()),
  );
}

/** The process under callgrind: warm up, signal, drain, signal. */
async function drainUnderCount([url, count, mode, src, signal]: string[]) {
  const n = Number(count);
  const api = await import("@opentelemetry/api");
  const { AsyncLocalStorageContextManager } = await import("@opentelemetry/context-async-hooks");
  const { ExportResultCode, W3CTraceContextPropagator } = await import("@opentelemetry/core");
  const { AggregationTemporality, MeterProvider, PeriodicExportingMetricReader } = await import("@opentelemetry/sdk-metrics");
  const { BatchSpanProcessor, NodeTracerProvider } = await import("@opentelemetry/sdk-trace-node");
  const { PrismaPg } = await import("@prisma/adapter-pg");
  const { PrismaClient } = await import("../generated/prisma/client.js");
  type Txonce = typeof import("../src/adapters/prisma.js");
  type RabbitMq = typeof import("../src/outbox/publishers/rabbitmq.js");
  const { txonce } = (await import(pathToFileURL(join(src!, "adapters", "prisma.ts")).href)) as Txonce;
  // The SDK as the telemetry bench registers it, with exporters that drop what they get.
  const success = { code: ExportResultCode.SUCCESS };
  api.trace.setGlobalTracerProvider(
    new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor({ export: (_spans, done) => done(success), shutdown: async () => {} })] }),
  );
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  api.context.with(api.context.active(), () => {});
  api.propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  const metricExporter = {
    export: (_metrics: unknown, done: (result: typeof success) => void) => done(success),
    selectAggregationTemporality: () => AggregationTemporality.CUMULATIVE,
    forceFlush: async () => {},
    shutdown: async () => {},
  };
  api.metrics.setGlobalMeterProvider(new MeterProvider({ readers: [new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 600_000 })] }));

  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  const contexts = mode !== "SDK, txonce off";
  /** n unkeyed messages, each with a creation context when the mode has them, as an SDK writes it at enqueue. */
  const fill = async () => {
    await admin.query("TRUNCATE txonce_outbox_messages");
    await admin.query(
      `INSERT INTO txonce_outbox_messages (id, topic, key, payload, headers, available_at, trace_context)
       SELECT gen_random_uuid(), 'bench.instructions', NULL, jsonb_build_object('n', i), '{}'::jsonb, now() - interval '1 second',
         CASE WHEN $2 THEN jsonb_build_object('traceparent', '00-' || md5(i::text) || '-' || left(md5((i + 1)::text), 16) || '-01') END
       FROM generate_series(1, $1::integer) i`,
      [n, contexts],
    );
    await admin.query("VACUUM ANALYZE txonce_outbox_messages");
    await admin.query("CHECKPOINT");
  };
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 4 }) });
  const t = txonce(prisma, { telemetry: { enabled: mode !== "SDK, txonce off" && mode !== "SDK, txonce off, contexts stored" } });
  let close = async () => {};
  let publisher: Parameters<typeof t.outbox.relay>[0]["publisher"] = async () => {};
  if (process.env.INSTRUCTIONS_PUBLISHER === "rabbitmq") {
    const { rabbitmqPublisher } = (await import(pathToFileURL(join(src!, "outbox", "publishers", "rabbitmq.ts")).href)) as RabbitMq;
    const amqplib = (await import("amqplib")).default;
    const connection = await amqplib.connect(process.env.RABBITMQ_URL!);
    const channel = await connection.createChannel();
    const exchange = `txonce_instructions_${randomBytes(4).toString("hex")}`;
    await channel.assertExchange(exchange, "topic", { durable: false, autoDelete: true });
    await channel.assertQueue(exchange, { durable: true, arguments: { "x-expires": 600_000 } });
    await channel.bindQueue(exchange, exchange, "#");
    const rabbit = rabbitmqPublisher({ url: process.env.RABBITMQ_URL!, exchange });
    publisher = rabbit;
    close = async () => {
      await rabbit.close();
      await channel.deleteQueue(exchange);
      await connection.close();
    };
  }
  const drain = async () => {
    const { relay, finished } = relayFor(t.outbox, publisher, n);
    await relay.start();
    await finished;
    await relay.stop();
  };
  /** Says where it is on stdout and waits until the parent has told callgrind. */
  const at = async (point: "start" | "end") => {
    process.stdout.write(`SIGNAL ${point}\n`);
    while (!existsSync(`${signal}.${point}`)) await new Promise((resolve) => setTimeout(resolve, 50));
  };
  for (let warmUp = 0; warmUp < WARMUPS; warmUp++) {
    await fill();
    await drain();
  }
  await fill();
  (globalThis as { gc?: () => void }).gc?.();
  await at("start");
  await drain();
  await at("end");
  await close();
  await prisma.$disconnect();
  await admin.end();
  process.exit(0);
}
