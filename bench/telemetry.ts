/**
 * Telemetry benchmark (issue 12): what txonce's OpenTelemetry instrumentation costs, in one run,
 * three ways, in interleaved rounds:
 *
 *   off      `txonce(prisma, { telemetry: { enabled: false } })`: the reference, 1.00x
 *   no SDK   `txonce(prisma)` with `@opentelemetry/api` installed and nothing registered (the
 *            default for an application that does not use OpenTelemetry)
 *   SDK, txonce off   the SDK below registered, txonce's telemetry off: what the SDK costs any
 *            application (its context manager tracks every promise), before txonce emits anything.
 *            In every SDK mode the context manager is put to use once (a `context.with`) when the
 *            mode is entered, as an application's instrumentation or the SDK's first export does:
 *            on Node 20-22 its AsyncLocalStorage follows promises from then on. (Before, this mode
 *            ran with it idle, having nothing to export, and the SDK modes with it busy.)
 *   SDK      `txonce(prisma)` with an SDK registered as an application registers it: a
 *            NodeTracerProvider with a BatchSpanProcessor, the AsyncLocalStorage context manager
 *            and the W3C propagator; a MeterProvider with a PeriodicExportingMetricReader at the
 *            SDK's default interval, 60 s (TELEMETRY_EXPORT_MS: another). At 60 s the relay's
 *            backlog gauges are collected in few drains, if any: what one collection costs (one
 *            query) is measured apart, at the drain's backlog, and printed with the relay's table.
 *            Both exporters drop what they get (after counting it): the cost measured is txonce's
 *            and the SDK's in the process, not a collector's network.
 *
 *   npm run bench -- telemetry
 *
 * 1. First execution: `withIdempotency(freshKey, tx => tx.charge.create(...))` at
 *    BENCH_CONCURRENCY (1 and 8) workers back to back, TELEMETRY_ROUNDS (5) rounds of
 *    BENCH_SECONDS (1.5) per mode; calls/s is the median of the rounds, a ratio the median of
 *    the per-round ratios to off; Node CPU per call. In the SDK modes each call runs in a
 *    request's `SERVER` span, as in an application whose SDK instruments its HTTP server
 *    (TELEMETRY_REQUEST_SPAN=0: outside any span). The tables are vacuumed before each round.
 * 0. txonce's own CPU per call, on a database stub that answers at once (no I/O): 20,000
 *    sequential first executions per mode and round, so that the cost of the instrumentation
 *    is seen apart from the database's.
 * 2. Relay throughput: TELEMETRY_MESSAGES (5,000) unkeyed messages enqueued in that mode (so
 *    the SDK's messages carry a creation context and its send spans link to it), then drained
 *    by one relay (defaults, a publisher that resolves at once), TELEMETRY_ROUNDS rounds. Before
 *    each drain the table is vacuumed, a checkpoint is taken, the enqueue's spans are exported
 *    and a garbage collection runs (`settle`).
 *    TELEMETRY_PROFILE=<dir> writes a CPU profile of each drain (and each round of part 1) there,
 *    and prints the drains' Node CPU by part (bench/profile-summary.ts).
 *    TELEMETRY_PUBLISHER=rabbitmq drains to the real RabbitMQ at RABBITMQ_URL (default
 *    amqp://guest:guest@127.0.0.1:5672) with txonce's shipped publisher (confirm channel,
 *    persistent messages) instead: a throwaway topic exchange and a durable queue bound to it,
 *    purged after each drain (outside the timing) and deleted at the end. If the broker does not
 *    answer, the relay part says so and is skipped. TELEMETRY_PUBLISHER=noop,rabbitmq runs both,
 *    one table each, and the run ends with one line per publisher: the SDK's ratio to off and to
 *    the SDK with txonce's telemetry off (what txonce's telemetry itself costs).
 *    TELEMETRY_BEFORE_SRC=/path/src adds the mode "SDK, before": another source tree's txonce
 *    (e.g. `git archive <commit> src` unpacked beside a node_modules link and a package.json),
 *    drained in the same rounds, and its send telemetry in part 3. TELEMETRY_MODES="SDK;SDK,
 *    txonce off" (";" between modes) drains only those, and off. Only when named there, the mode
 *    "SDK, txonce off, contexts stored": txonce's telemetry off, draining rows that hold a creation
 *    context as the SDK mode's rows do (written in after the enqueue, then VACUUM FULL): what the
 *    stored context alone costs the database, the relay and the publisher's headers.
 * 3. The relay's telemetry alone (TELEMETRY_PARTS=send): batches of 100 messages of one topic
 *    through `sendBatch` (one send span per batch, a link per message, the metrics) and a
 *    publish that resolves at once; Node CPU per message, no relay or database.
 *
 * Parts 1 and 2 run each mode on its own copy of src/ (TELEMETRY_SHARED_TREE=1: on this tree's
 * modules, all modes): V8 then compiles each mode's relay and withIdempotency for that mode alone,
 * as in an application.
 *
 * The targets (issue 12): no SDK costs nothing measurable; the SDK at most 5% of first-execution
 * and relay throughput.
 */
import { randomBytes } from "node:crypto";
import { copyFileSync, cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Session } from "node:inspector";
import { fileURLToPath, pathToFileURL } from "node:url";
import v8 from "node:v8";
import vm from "node:vm";
import amqplib from "amqplib";
import { context, metrics, propagation, SpanKind, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from "@opentelemetry/core";
import { AggregationTemporality, MeterProvider, PeriodicExportingMetricReader, type PushMetricExporter, type ResourceMetrics } from "@opentelemetry/sdk-metrics";
import {
  BatchSpanProcessor, NodeTracerProvider, ParentBasedSampler, TraceIdRatioBasedSampler, type ReadableSpan, type SpanExporter,
} from "@opentelemetry/sdk-trace-node";
import { txonce } from "../src/adapters/prisma.js";
import type { Database, Row } from "../src/executor.js";
import { createIdempotency } from "../src/idempotency.js";
import type { OutboxMessage, Publisher } from "../src/outbox/message.js";
import { rabbitmqPublisher, type RabbitMqPublisher } from "../src/outbox/publishers/rabbitmq.js";
import { outboxTelemetry } from "../src/telemetry/outbox.js";
import * as sql from "../src/sql/postgres.js";
import { env, fileNameOf, fmt, loadavg, log, median, num, ratioCell, relayFor, table, type BenchContext } from "./common.js";
import { summarizeDrainProfiles } from "./profile-summary.js";

const SECONDS = env("BENCH_SECONDS", 1.5);
const ROUNDS = Math.max(1, Math.round(env("TELEMETRY_ROUNDS", 5)));
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? "1,8").split(",").map((s) => Math.max(1, Number(s)));
const MESSAGES = Math.max(100, Math.round(env("TELEMETRY_MESSAGES", 5000)));
const ACCOUNT = "bench";
/** Which parts run: "stub" (0), "first" (1), "relay" (2), "send" (3); default all four. */
const PARTS = (process.env.TELEMETRY_PARTS ?? "stub,first,relay,send").split(",");
/**
 * Where the relay part publishes, one drain table each: "noop" (a publisher that resolves at
 * once, the default), "rabbitmq", or both ("noop,rabbitmq").
 */
const PUBLISHERS = (process.env.TELEMETRY_PUBLISHER ?? "noop").split(",");
for (const p of PUBLISHERS) if (p !== "noop" && p !== "rabbitmq") throw new Error(`TELEMETRY_PUBLISHER=${p}: expected noop, rabbitmq or both`);
/**
 * Another source tree's src/ (e.g. `git archive <commit> src` unpacked beside a node_modules link):
 * its txonce drains too, with the SDK, as the mode "SDK, before" (the relay and send parts).
 */
const BEFORE_SRC = process.env.TELEMETRY_BEFORE_SRC;
const RABBITMQ_URL = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";

type Mode = "off" | "no SDK" | "SDK, txonce off" | "SDK" | "SDK, 1% sampled" | "SDK, before" | "SDK, txonce off, contexts stored";
const MODES: Mode[] = ["off", "no SDK", "SDK, txonce off", "SDK"];
/** The relay's modes: also the SDK with a sampler that records 1% of the traces it starts (and the tree before). */
const RELAY_MODES: Mode[] = ([...MODES, "SDK, 1% sampled", ...(BEFORE_SRC ? ["SDK, before"] : []), "SDK, txonce off, contexts stored"] as Mode[]).filter(
  // TELEMETRY_MODES="SDK,SDK, txonce off" ... (separated by ";"): only those in the relay part (and off, the reference).
  // "SDK, txonce off, contexts stored" only when named: txonce's telemetry off, draining rows that hold a creation
  // context as the SDK mode's do (written after the enqueue): what the stored context costs the database and the relay.
  (mode) =>
    mode === "off" ||
    (!process.env.TELEMETRY_MODES ? mode !== "SDK, txonce off, contexts stored" : process.env.TELEMETRY_MODES.split(";").includes(mode)),
);
const telemetryOf = (mode: Mode) => ({ enabled: mode !== "off" && !mode.startsWith("SDK, txonce off") });

/**
 * TELEMETRY_SHARED_TREE=1: every mode runs this tree's modules, as before the seventh pass.
 * By default each mode of parts 1 and 2 imports its own copy of src/, so that V8 compiles each
 * mode's relay and withIdempotency with that mode's type feedback alone, as in an application,
 * which runs one mode. Shared, the relay's functions were compiled for every mode at once (a batch
 * with telemetry and without, rows with and without a creation context), and the mode that differs
 * from the others most, the SDK, paid for it.
 */
const SHARED_TREE = process.env.TELEMETRY_SHARED_TREE === "1";

/** A copy of src/ per mode, in a temporary folder beside a package.json and a link to node_modules, and each copy's `txonce`. */
async function modeTrees(modes: Mode[]) {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), "txonce-bench-trees-"));
  const txonces = {} as Record<Mode, typeof txonce>;
  for (const mode of modes) {
    const tree = join(dir, fileNameOf(mode));
    cpSync(join(root, "src"), join(tree, "src"), { recursive: true });
    copyFileSync(join(root, "package.json"), join(tree, "package.json"));
    symlinkSync(join(root, "node_modules"), join(tree, "node_modules"));
    txonces[mode] = ((await import(pathToFileURL(join(tree, "src", "adapters", "prisma.ts")).href)) as { txonce: typeof txonce }).txonce;
  }
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  return { dir, txonce: txonces };
}

/** Counts what it is handed and drops it. */
class DroppingSpanExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], done: (result: ExportResult) => void) {
    this.spans += spans.length;
    done({ code: ExportResultCode.SUCCESS });
  }
  async shutdown() {}
}
class DroppingMetricExporter implements PushMetricExporter {
  exports = 0;
  export(_metrics: ResourceMetrics, done: (result: ExportResult) => void) {
    this.exports++;
    done({ code: ExportResultCode.SUCCESS });
  }
  selectAggregationTemporality() {
    return AggregationTemporality.CUMULATIVE;
  }
  async forceFlush() {}
  async shutdown() {}
}

const spanExporter = new DroppingSpanExporter();
const metricExporter = new DroppingMetricExporter();
const tracerProvider = new NodeTracerProvider({ spanProcessors: [new BatchSpanProcessor(spanExporter)] });
/** The same, sampling: a trace started here (the relay's send spans are roots) is recorded 1 time in 100. */
const sampledTracerProvider = new NodeTracerProvider({
  sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0.01) }),
  spanProcessors: [new BatchSpanProcessor(spanExporter)],
});
/** The metric reader's export interval: the SDK's default, 60 s. */
const EXPORT_MS = env("TELEMETRY_EXPORT_MS", 60_000);
const meterProvider = new MeterProvider({
  readers: [new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: EXPORT_MS })],
});

/** Puts the process in a mode: the SDK registered, or nothing registered. */
function enter(mode: Mode) {
  trace.disable();
  context.disable();
  propagation.disable();
  metrics.disable();
  if (!mode.startsWith("SDK")) return;
  trace.setGlobalTracerProvider(mode === "SDK, 1% sampled" ? sampledTracerProvider : tracerProvider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  // The context manager in use, as in any application whose SDK has something to do (an HTTP
  // server's instrumentation, or the exporters' own `context.with` on their first export): on
  // Node 20-22 its AsyncLocalStorage then follows every promise. Without this, "SDK, txonce off"
  // would run with it idle (nothing to export) and the SDK modes with it busy, and the difference
  // would be counted against txonce.
  context.with(context.active(), () => {});
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  metrics.setGlobalMeterProvider(meterProvider);
}

/**
 * TELEMETRY_REQUEST_SPAN=0: first executions in the SDK modes run outside any span, instead of
 * in a request's `SERVER` span each. Outside any span, txonce's span context is the first
 * context the call runs in, and on Node 20 every async resource of the Prisma transaction
 * (timers, immediates, socket writes) then costs more: about 300 µs of Node CPU per call in the
 * fifth pass, against about 65 µs in a request's span, where the SDK already pays it.
 */
const REQUEST_SPAN = process.env.TELEMETRY_REQUEST_SPAN !== "0";

/** TELEMETRY_PROFILE=<dir>: a CPU profile of each drain and each round of first executions (sampled every 100 µs) written there, named by mode and part. */
const PROFILE_DIR = process.env.TELEMETRY_PROFILE;

async function startProfile() {
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))));
  await post("Profiler.enable");
  await post("Profiler.setSamplingInterval", { interval: 100 });
  await post("Profiler.start");
  return {
    async stopInto(file: string) {
      const { profile } = (await post("Profiler.stop")) as { profile: unknown };
      writeFileSync(file, JSON.stringify(profile));
      session.disconnect();
    },
  };
}

const collectGarbage = (() => {
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
})();

/**
 * Before each drain, in every mode: the spans of the enqueue before it exported (its `create`
 * spans, in the SDK modes) and the garbage it left collected, so that a drain pays for the relay
 * and not for the enqueue. (Until the fifth pass, the SDK modes' drains also paid for their
 * enqueue's 20,000 `create` spans: exported and collected during the drain.)
 */
async function settle() {
  await tracerProvider.forceFlush();
  await sampledTracerProvider.forceFlush();
  collectGarbage();
}

/** `concurrency` workers calling `op` back to back for `seconds`: calls/s and Node CPU µs per call. */
async function closedLoop(concurrency: number, seconds: number, op: () => Promise<unknown>) {
  let calls = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        await op();
        calls++;
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  return { rate: calls / ((performance.now() - t0) / 1000), cpuUsPerCall: (cpu.user + cpu.system) / Math.max(1, calls) };
}

export async function telemetryBench({ prisma, pool }: BenchContext) {
  log("Telemetry (issue 12)");
  log(`settings: ${ROUNDS} interleaved rounds per mode; first execution ${SECONDS}s per round at concurrency ${CONCURRENCY.join(" and ")}; relay ${num(MESSAGES)} unkeyed messages per drain, publisher ${PUBLISHERS.map((p) => (p === "rabbitmq" ? `RabbitMQ (${RABBITMQ_URL})` : "no-op")).join(", then ")}${BEFORE_SRC ? `; "SDK, before" is ${BEFORE_SRC}` : ""}`);
  log(`node ${process.version}, load: ${loadavg()}`);
  const before = BEFORE_SRC ? ((await import(pathToFileURL(`${BEFORE_SRC}/adapters/prisma.ts`).href)) as { txonce: typeof txonce }).txonce : undefined;
  const trees = SHARED_TREE ? undefined : await modeTrees(RELAY_MODES.filter((mode) => mode !== "SDK, before"));
  if (trees) log(`each mode runs its own copy of src/ (in ${trees.dir}): one mode's type feedback does not shape another's compiled code (TELEMETRY_SHARED_TREE=1: all share this tree's modules)`);
  const instances = Object.fromEntries(
    RELAY_MODES.map((mode) => [mode, mode === "SDK, before" ? before!(prisma) : (trees?.txonce[mode] ?? txonce)(prisma, { telemetry: telemetryOf(mode) })]),
  ) as Record<Mode, ReturnType<typeof txonce>>;

  // 0. txonce's own CPU per call, on a stub.
  const claimed: Row[] = [{ created_at: new Date(), expires_at: new Date(Date.now() + 3_600_000), xact: "1" }];
  const stub: Database<null> = {
    query: async () => [],
    transaction: async (work) => work(null, { query: async (text) => (text === sql.claimKey ? claimed : []) }),
    sqlFor: () => ({ query: async () => [] }),
  };
  const stubs = Object.fromEntries(MODES.map((mode) => [mode, createIdempotency(stub, { replayCache: false, telemetry: telemetryOf(mode) })]));
  const stubRounds: Record<Mode, number>[] = [];
  for (let round = 0; PARTS.includes("stub") && round < ROUNDS + 1; round++) {
    const result = {} as Record<Mode, number>;
    for (let i = 0; i < MODES.length; i++) {
      const mode = MODES[(i + round) % MODES.length]!;
      enter(mode);
      const calls = 20_000;
      const cpu0 = process.cpuUsage();
      for (let n = 0; n < calls; n++) await stubs[mode]!.withIdempotency(`stub-${round}-${n}`, async () => n, { name: "charge" });
      const cpu = process.cpuUsage(cpu0);
      result[mode] = (cpu.user + cpu.system) / calls;
    }
    if (round > 0) stubRounds.push(result); // round 0 warms up
  }
  if (PARTS.includes("stub")) log();
  if (PARTS.includes("stub")) log("txonce's own CPU per first execution, on a database stub (20,000 calls per mode and round):");
  if (PARTS.includes("stub")) table(
    ["mode", "µs/call", "added to off"],
    MODES.map((mode) => {
      const us = median(stubRounds.map((r) => r[mode]));
      return [mode, fmt(us, 2), `${fmt(median(stubRounds.map((r) => r[mode] - r.off)), 2)} µs`];
    }),
  );
  const tag = randomBytes(4).toString("hex");
  let serial = 0;
  const charge = (mode: Mode) => () =>
    instances[mode].withIdempotency(`otel-${tag}-${serial++}`, (tx) => tx.charge.create({ data: { accountId: ACCOUNT, amount: 1 } }), {
      name: "charge",
    });
  // In the SDK modes each call runs in a request's span, as an application with an SDK runs it
  // (its HTTP server's instrumentation starts one per request); see REQUEST_SPAN.
  const first = (mode: Mode) => {
    const call = charge(mode);
    if (!REQUEST_SPAN || !mode.startsWith("SDK")) return call;
    return () =>
      trace.getTracer("bench-http-server").startActiveSpan("POST /charges", { kind: SpanKind.SERVER }, async (request) => {
        try {
          return await call();
        } finally {
          request.end();
        }
      });
  };

  // 1. First execution.
  /** One line per part and publisher, printed at the end. */
  const summary: string[] = [];
  for (const concurrency of PARTS.includes("first") ? CONCURRENCY : []) {
    for (const mode of MODES) {
      enter(mode);
      await closedLoop(concurrency, 0.5, first(mode)); // warm-up
    }
    const rounds: Record<Mode, { rate: number; cpuUsPerCall: number }>[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // This machine's PostgreSQL may run without autovacuum: the rounds' dead rows would slow the later ones.
      await pool.query(`VACUUM ${sql.IDEMPOTENCY_TABLE}, charges`);
      const result = {} as Record<Mode, { rate: number; cpuUsPerCall: number }>;
      // Rotate the order, so that no mode always runs first or last in a round.
      for (let i = 0; i < MODES.length; i++) {
        const mode = MODES[(i + round) % MODES.length]!;
        enter(mode);
        const profiling = PROFILE_DIR ? await startProfile() : undefined;
        result[mode] = await closedLoop(concurrency, SECONDS, first(mode));
        if (profiling) await profiling.stopInto(`${PROFILE_DIR}/${fileNameOf(mode)}-first-c${concurrency}-${Date.now()}.cpuprofile`);
      }
      rounds.push(result);
    }
    log();
    log(`First execution, concurrency ${concurrency} (load ${loadavg()}):`);
    log("(ratios: the median of the rounds' ratios, in brackets its 95% confidence interval)");
    table(
      ["mode", "calls/s", "ratio to off", "min-max ratio", "to SDK, txonce off", "Node CPU µs/call"],
      MODES.map((mode) => {
        const ratios = rounds.map((r) => r[mode].rate / r.off.rate);
        return [
          mode,
          num(median(rounds.map((r) => r[mode].rate))),
          mode === "off" ? "1.000x" : ratioCell(ratios),
          `${fmt(Math.min(...ratios), 2)}-${fmt(Math.max(...ratios), 2)}`,
          mode === "SDK, txonce off" ? "1.000x" : mode.startsWith("SDK") ? ratioCell(rounds.map((r) => r[mode].rate / r["SDK, txonce off"].rate)) : "",
          num(median(rounds.map((r) => r[mode].cpuUsPerCall))),
        ];
      }),
    );
    summary.push(
      `first execution, c=${concurrency}: SDK ${fmt(median(rounds.map((r) => r.SDK.rate / r.off.rate)), 3)}x of off, ` +
        `${fmt(median(rounds.map((r) => r.SDK.rate / r["SDK, txonce off"].rate)), 3)}x of the SDK with txonce off`,
    );
  }

  // 2. Relay throughput.
  const enqueue = async (t: ReturnType<typeof txonce>, n: number) => {
    const chunk = 500;
    for (let from = 0; from < n; from += chunk) {
      const messages = Array.from({ length: Math.min(chunk, n - from) }, (_, j) => ({ topic: "bench.telemetry", payload: { n: from + j } }));
      await prisma.$transaction((tx) => t.outbox.enqueueMany(tx, messages));
    }
  };
  const drain = async (mode: Mode, publisherName: string, n: number, publisher: Publisher | Publisher["publish"]) => {
    const { relay, finished } = relayFor(instances[mode].outbox, publisher, n);
    const profiling = PROFILE_DIR ? await startProfile() : undefined;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await relay.start();
    await finished;
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    if (profiling) await profiling.stopInto(`${PROFILE_DIR}/${fileNameOf(mode)}-${publisherName}-${Date.now()}.cpuprofile`);
    await relay.stop();
    return { rate: n / seconds, cpuUsPerMsg: (cpu.user + cpu.system) / n };
  };
  for (const publisherName of PARTS.includes("relay") ? PUBLISHERS : []) {
    const broker = publisherName === "rabbitmq" ? await rabbitmqTarget() : undefined;
    const runRelay = publisherName === "noop" || broker !== undefined;
    const publisher: Publisher | Publisher["publish"] = broker?.publisher ?? (async () => {});
    let routed = 0;
    const drains: Record<Mode, { rate: number; cpuUsPerMsg: number }>[] = [];
    const backlogReads: number[] = [];
    try {
      if (broker) {
        // Warm-up: the publisher's connection and confirm channel, and the broker's queue.
        enter("off");
        await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
        await enqueue(instances.off, 1000);
        await drain("off", publisherName, 1000, publisher);
        await broker.purge();
      }
      for (let round = 0; runRelay && round < ROUNDS; round++) {
        const result = {} as Record<Mode, { rate: number; cpuUsPerMsg: number }>;
        for (let i = 0; i < RELAY_MODES.length; i++) {
          const mode = RELAY_MODES[(i + round) % RELAY_MODES.length]!;
          enter(mode);
          await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
          await enqueue(instances[mode], MESSAGES);
          if (mode === "SDK, txonce off, contexts stored") {
            await pool.query(
              `UPDATE ${sql.OUTBOX_TABLE} SET trace_context = jsonb_build_object('traceparent', '00-' || md5(id::text) || '-' || left(md5(seq::text), 16) || '-01')`,
            );
            await pool.query(`VACUUM FULL ${sql.OUTBOX_TABLE}`); // as compact as the other modes' freshly written rows
          }
          await pool.query(`VACUUM ANALYZE ${sql.OUTBOX_TABLE}`);
          // Every drain from a fresh checkpoint: the same full-page images in the WAL for each mode,
          // and no checkpoint of the database's own timing in the middle of one drain but not another.
          await pool.query("CHECKPOINT");
          await settle();
          if (mode === "SDK") {
            // What one collection of the backlog gauges costs: the reading they make, at the drain's backlog.
            const t0 = performance.now();
            await instances[mode].outbox.backlog();
            backlogReads.push(performance.now() - t0);
          }
          result[mode] = await drain(mode, publisherName, MESSAGES, publisher);
          if (broker) routed += await broker.purge();
        }
        drains.push(result);
      }
    } finally {
      await broker?.close();
    }
    if (!runRelay) continue;
    const what = broker ? "to RabbitMQ (txonce's publisher, confirms, persistent messages, a durable queue)" : "no-op publisher";
    log();
    log(`Relay throughput, ${num(MESSAGES)} unkeyed messages, batchSize 100, 1 worker, ${what} (load ${loadavg()}):`);
    const ratio = (mode: Mode, to: Mode) => (RELAY_MODES.includes(mode) && RELAY_MODES.includes(to) ? median(drains.map((r) => r[mode].rate / r[to].rate)) : NaN);
    log("(ratios: the median of the rounds' ratios, in brackets its 95% confidence interval)");
    table(
      ["mode", "messages/s", "ratio to off", "min-max ratio", "to SDK, txonce off", "Node CPU µs/msg"],
      RELAY_MODES.map((mode) => {
        const ratios = drains.map((r) => r[mode].rate / r.off.rate);
        return [
          mode,
          num(median(drains.map((r) => r[mode].rate))),
          mode === "off" ? "1.000x" : ratioCell(ratios),
          `${fmt(Math.min(...ratios), 2)}-${fmt(Math.max(...ratios), 2)}`,
          mode === "SDK, txonce off"
            ? "1.000x"
            : mode.startsWith("SDK") && RELAY_MODES.includes("SDK, txonce off")
              ? ratioCell(drains.map((r) => r[mode].rate / r["SDK, txonce off"].rate))
              : "",
          num(median(drains.map((r) => r[mode].cpuUsPerMsg))),
        ];
      }),
    );
    if (backlogReads.length > 0) {
      log(
        `One collection of the backlog gauges (one query, \`outbox.backlog()\`) with ${num(MESSAGES)} messages pending: ${fmt(median(backlogReads), 1)} ms ` +
          `(median of ${backlogReads.length}), once per export interval (${num(EXPORT_MS / 1000)} s here) while a relay runs.`,
      );
    }
    if (broker) {
      const published = MESSAGES * ROUNDS * RELAY_MODES.length;
      log(`RabbitMQ's queue held ${num(routed)} of the ${num(published)} messages the rounds published when purged after each drain${routed === published ? " (every one routed)" : ""}.`);
    }
    if (PROFILE_DIR) summarizeDrainProfiles(PROFILE_DIR, publisherName, MESSAGES, RELAY_MODES);
    summary.push(
      `relay, ${broker ? "RabbitMQ" : "no-op publisher"}: SDK ${fmt(ratio("SDK", "off"), 3)}x of off, ${fmt(ratio("SDK", "SDK, txonce off"), 3)}x of the SDK with txonce off` +
        (BEFORE_SRC ? `; before: ${fmt(ratio("SDK, before", "off"), 3)}x and ${fmt(ratio("SDK, before", "SDK, txonce off"), 3)}x` : ""),
    );
  }

  // 3. The relay's telemetry alone: batches of send telemetry (a span per batch, a link and metrics per message), without the relay.
  if (PARTS.includes("send")) {
    const publish = async () => {};
    const batch: OutboxMessage[] = Array.from({ length: 100 }, (_, i) => ({
      id: `0197f0aa-0000-7000-8000-${String(i).padStart(12, "0")}`, seq: String(i), topic: "bench.telemetry", key: null, payload: { n: i },
      encodedPayload: "{}", headers: {}, createdAt: new Date(), attempts: 1,
      traceContext: { traceparent: `00-${(i + 1).toString(16).padStart(32, "0")}-${(i + 1).toString(16).padStart(16, "0")}-01` },
    }));
    const sendModes: Mode[] = ["off", "SDK", "SDK, 1% sampled", ...(BEFORE_SRC ? (["SDK, before"] as const) : [])];
    const telemetries = Object.fromEntries(sendModes.map((mode) => [mode, mode === "SDK, before" ? undefined : outboxTelemetry(telemetryOf(mode))]));
    // A tree from before the per-batch send spans (a `send` per message), or one with `sendBatch` like this one.
    type OldTelemetry = { send(m: OutboxMessage, system: string, publish: () => Promise<void>): { published: Promise<void>; end(): void } };
    const old = BEFORE_SRC
      ? ((await import(pathToFileURL(`${BEFORE_SRC}/telemetry/outbox.ts`).href)) as { outboxTelemetry: (o: object) => OldTelemetry | ReturnType<typeof outboxTelemetry> }).outboxTelemetry({})
      : undefined;
    if (old && "sendBatch" in old) telemetries["SDK, before"] = old;
    const perMessage = async (mode: Mode, n: number) => {
      const telemetry = telemetries[mode];
      const cpu0 = process.cpuUsage();
      for (let b = 0; b < n / batch.length; b++) {
        if (mode === "SDK, before" && !telemetry) {
          await Promise.all(batch.map(async (m) => {
            const sending = (old as OldTelemetry).send(m, "txonce", publish);
            await sending.published;
            sending.end();
          }));
          continue;
        }
        const sends = telemetry?.sendBatch("txonce");
        await Promise.all(batch.map(async (m) => {
          if (!sends) return publish();
          // This tree's sendBatch, or an earlier one's (a `Sending` per message, ended by its own `end`).
          const sending = sends.send(m, publish) as Promise<void> | { published: Promise<void>; end(): void };
          if ("published" in sending) {
            await sending.published;
            sending.end();
          } else {
            await sending;
            sends.ended(m);
          }
        }));
        sends?.end();
      }
      // This tree records each batch's telemetry once the relay waits on the database: at once here.
      if (telemetry && "flush" in telemetry) telemetry.flush();
      const cpu = process.cpuUsage(cpu0);
      return (cpu.user + cpu.system) / n;
    };
    const sendRounds: Record<string, number>[] = [];
    for (let round = 0; round < ROUNDS + 1; round++) {
      const result: Record<string, number> = {};
      for (let i = 0; i < sendModes.length; i++) {
        const mode = sendModes[(i + round) % sendModes.length]!;
        enter(mode);
        result[mode] = await perMessage(mode, 50_000);
      }
      if (round > 0) sendRounds.push(result); // round 0 warms up
    }
    log();
    log(`The relay's telemetry per message, no relay or database: batches of 100 messages of one topic, one send span per batch linked to each message's stored creation context, and the metrics; 50,000 messages per mode and round (load ${loadavg()}):`);
    table(
      ["mode", "µs/message", "added to off"],
      sendModes.map((mode) => [mode, fmt(median(sendRounds.map((r) => r[mode]!)), 2), `${fmt(median(sendRounds.map((r) => r[mode]! - r.off!)), 2)} µs`]),
    );
  }

  enter("SDK");
  await tracerProvider.forceFlush();
  await sampledTracerProvider.forceFlush();
  await meterProvider.forceFlush();
  if (summary.length > 0) {
    log();
    for (const line of summary) log(line);
  }
  log();
  log(`The SDK's exporters got ${num(spanExporter.spans)} spans and ${num(metricExporter.exports)} metric exports in all (they were live).`);
  enter("off");
  await tracerProvider.shutdown();
  await sampledTracerProvider.shutdown();
  await meterProvider.shutdown();
  await pool.query(`TRUNCATE ${sql.OUTBOX_TABLE}`);
}

/**
 * The real RabbitMQ for the relay part: a throwaway topic exchange and a durable queue bound to
 * it (deleted at the end; it also expires 10 minutes after its last use if the bench dies), and
 * txonce's publisher to that exchange. Undefined, after saying so, when the broker does not answer.
 */
async function rabbitmqTarget(): Promise<{ publisher: RabbitMqPublisher; purge(): Promise<number>; close(): Promise<void> } | undefined> {
  let connection: amqplib.ChannelModel;
  try {
    connection = await amqplib.connect(RABBITMQ_URL, { timeout: 5000 });
  } catch (error) {
    log();
    log(`RabbitMQ is not reachable at ${RABBITMQ_URL} (RABBITMQ_URL): ${error instanceof Error ? error.message : String(error)}; the relay part with TELEMETRY_PUBLISHER=rabbitmq is skipped.`);
    return undefined;
  }
  connection.on("error", () => {});
  const channel = await connection.createChannel();
  const name = `txonce_bench_telemetry_${randomBytes(4).toString("hex")}`;
  await channel.assertExchange(name, "topic", { durable: false, autoDelete: true });
  await channel.assertQueue(name, { durable: true, arguments: { "x-expires": 600_000 } });
  await channel.bindQueue(name, name, "#");
  const publisher = rabbitmqPublisher({ url: RABBITMQ_URL, exchange: name });
  return {
    publisher,
    purge: async () => (await channel.purgeQueue(name)).messageCount,
    close: async () => {
      await publisher.close();
      await channel.deleteQueue(name).catch(() => {});
      await channel.deleteExchange(name).catch(() => {});
      await connection.close().catch(() => {});
    },
  };
}
