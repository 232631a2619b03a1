import { randomUUID } from "node:crypto";
import type { Codec } from "../codec.js";
import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { Row, SqlExecutor } from "../executor.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import { withSchemaCheck } from "../sqlstate.js";
import { backoffPolicy, type BackoffOptions } from "./backoff.js";
import { listen, pgListenConnection, type ListenClientLike, type Listener } from "./listener.js";
import { startPublish, type OutboxMessage, type Publisher } from "./message.js";
import { describeError, progressWriter, type Outcome } from "./progress.js";
import { consoleLogger, type RelayLogger } from "./relay-logger.js";
import { OUTBOX_SYSTEM, type BacklogReading, type OutboxTelemetry, type SendBatch } from "../telemetry/outbox.js";

/** Options of a relay. */
export interface RelayOptions {
  /** Sends one message; resolve = the broker has it, reject = try again later. A {@link Publisher} or its `publish`. */
  publisher: Publisher | Publisher["publish"];
  /**
   * The most messages one claim takes first: unkeyed messages and the heads of keys (each key's
   * oldest pending message), taken in turns. Unkeyed messages of a batch are published
   * concurrently; the messages of one key one after the other, in order, keys in parallel: so a
   * worker has at most `batchSize` publishes in flight. A run waits before its next publish while
   * `batchSize` publishes that ended are not recorded yet, so a crash republishes at most
   * 2 × `batchSize` × `workers` messages per relay. (Default: `100`)
   */
  batchSize?: number;
  /**
   * The most messages one claim leases in all: its `batchSize` unkeyed messages and heads, and
   * the messages that follow those heads (their keys' runs, shared evenly between the keys) up
   * to this bound. Followers are published one after the other behind their head, so they add
   * no publish in flight; a relay that crashes leaves at most `claimLimit` × `workers` messages
   * leased until their lease runs out (they are not republished: they were never handed over).
   * At least `batchSize`; `batchSize` itself makes every claim take heads only up to that.
   * (Default: 10 × `batchSize`)
   */
  claimLimit?: number;
  /** Claim loops in this process; each claims its own batches. (Default: `1`) */
  workers?: number;
  /**
   * How long a claim holds its messages. A relay that crashes mid-batch leaves them to others
   * after this. (Default: `"30s"`)
   */
  lease?: Duration;
  /**
   * Longest wait for one publish before it counts as failed; must be shorter than `lease`, so no
   * two relays ever publish the same message at once. (Default: `"10s"`)
   */
  publishTimeout?: Duration;
  /**
   * Publish attempts before a message is dead-lettered (kept, with its last error). An attempt
   * is counted when the message is handed to the publisher, never for a lease that ran out
   * before its publish started. A publish error with `permanent: true` (e.g. a webhook's 4xx)
   * dead-letters the message at once. (Default: `10`)
   */
  maxAttempts?: number;
  /** Backoff between attempts. (Default: from 1s doubling to 5m, with jitter) */
  backoff?: BackoffOptions;
  /** How often to look for due messages when nothing wakes the relay. (Default: `"1s"`) */
  pollInterval?: Duration;
  /**
   * Wake on commit: a session-mode connection that LISTENs for the producers' NOTIFY. Leave it out
   * for poll-only mode (e.g. behind PgBouncer in transaction mode). (Default: poll only)
   */
  listen?: { connectionString: string } | { connect: () => Promise<ListenClientLike> };
  /**
   * Where the relay reports failed publishes (`warn`, one line each, with the retry delay), dead
   * letters (`error`) and its own errors (`error`): any object with pino-style `warn(fields,
   * message)` and `error(fields, message)`, such as a pino or bunyan logger; `false` for silence.
   * The `on*` callbacks below are called as well. (Default: one line per event on `console.warn`
   * and `console.error`)
   */
  logger?: RelayLogger | false;
  /** Called with each group of messages just published, once they are marked. (Default: none) */
  onPublished?: (messages: OutboxMessage[]) => void;
  /** Called when a publish failed and the message will be retried in `retryInMs`. (Default: none) */
  onFailed?: (message: OutboxMessage, error: unknown, retryInMs: number) => void;
  /** Called when a message used up its attempts and was dead-lettered. (Default: none) */
  onDead?: (message: OutboxMessage, error: unknown) => void;
  /** Called on the relay's own errors (database, LISTEN connection); it keeps going. (Default: none; the logger reports them) */
  onError?: (error: unknown) => void;
}


/** A running relay: `start()` it, and `stop()` it on shutdown. */
export interface Relay {
  /** Starts the workers (and the LISTEN connection); resolves once they run. */
  start(): Promise<void>;
  /** Stops claiming, waits for the batches in flight to be published and recorded, closes LISTEN. */
  stop(): Promise<void>;
}

interface Config {
  publish: Publisher["publish"];
  batchSize: number;
  claimLimit: number;
  workers: number;
  leaseMs: number;
  publishTimeoutMs: number;
  maxAttempts: number;
  backoff: (attempts: number) => number;
  pollMs: number;
  logger: RelayLogger | undefined;
}

/** How many keys one claim may look at, per message it may lease (heads that are leased or waiting are skipped). */
export const KEYS_WALKED_PER_MESSAGE = 4;

function configure(options: RelayOptions): Config {
  const { publisher } = options;
  const publish =
    typeof publisher === "function" ? publisher : typeof publisher?.publish === "function" ? publisher.publish.bind(publisher) : undefined;
  if (!publish) throw new InvalidArgumentError("publisher", "expected a Publisher or a publish(message) function");
  const positiveInteger = (value: number | undefined, fallback: number, argument: string, max: number) => {
    const n = value ?? fallback;
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(argument, `expected an integer from 1 to ${max}, got ${String(n)}`);
    return n;
  };
  const leaseMs = toMilliseconds(options.lease ?? "30s", "lease");
  const publishTimeoutMs = toMilliseconds(options.publishTimeout ?? "10s", "publishTimeout");
  if (publishTimeoutMs >= leaseMs) {
    throw new InvalidArgumentError("publishTimeout", "must be shorter than lease, or two relays could publish one message at once");
  }
  const { logger } = options;
  if (logger !== undefined && logger !== false && (typeof logger?.warn !== "function" || typeof logger?.error !== "function")) {
    throw new InvalidArgumentError("logger", "expected false or an object with warn(fields, message) and error(fields, message)");
  }
  const batchSize = positiveInteger(options.batchSize, 100, "batchSize", 10_000);
  const claimLimit = positiveInteger(options.claimLimit, 10 * batchSize, "claimLimit", 100_000);
  if (claimLimit < batchSize) throw new InvalidArgumentError("claimLimit", `must be at least batchSize (${batchSize}), got ${claimLimit}`);
  return {
    publish,
    batchSize,
    claimLimit,
    workers: positiveInteger(options.workers, 1, "workers", 64),
    leaseMs,
    publishTimeoutMs,
    maxAttempts: positiveInteger(options.maxAttempts, 10, "maxAttempts", 1_000),
    backoff: backoffPolicy(options.backoff),
    pollMs: toMilliseconds(options.pollInterval ?? "1s", "pollInterval"),
    logger: logger === false ? undefined : (logger ?? consoleLogger),
  };
}

/**
 * The relay: claims batches of due messages in single statements (`FOR UPDATE SKIP LOCKED` plus
 * a lease), publishes them, and records as it goes each message's attempt and whether it was
 * published, will be retried, or is dead. Several relays, in this process or others, can run side
 * by side.
 */
export function createRelay(
  db: SqlExecutor,
  codec: Codec,
  deleteOnPublish: boolean,
  options: RelayOptions,
  /** The outbox's telemetry, and how to read the backlog its gauges report. (Default: none) */
  instrumented?: { telemetry: OutboxTelemetry; backlog: () => Promise<BacklogReading> },
  /** The statements of the schema the outbox table is in (the `schema` option). (Default: unqualified) */
  sql: Statements = statementsFor(),
): Relay {
  const config = configure(options);
  const { logger } = config;
  const telemetry = instrumented?.telemetry;
  const system = (typeof options.publisher === "object" ? options.publisher.system : undefined) ?? OUTBOX_SYSTEM;
  let stopObserving: (() => void) | undefined;
  const onError = (error: unknown) => {
    logger?.error({ err: error }, `txonce relay: ${describeError(error)}`);
    options.onError?.(error);
  };
  let state: "idle" | "running" | "stopping" = "idle";
  let workers: Promise<void>[] = [];
  let listener: Listener | undefined;
  // Wake-ups: each notification bumps `generation` and releases the idle workers. A worker
  // notes the generation before it claims; if a notification came while it was claiming (after
  // its snapshot), it claims again at once instead of sleeping through it.
  let generation = 0;
  let waiters: (() => void)[] = [];
  const notify = () => {
    generation++;
    const released = waiters;
    waiters = [];
    for (const release of released) release();
  };
  const idle = (seen: number) =>
    new Promise<void>((resolve) => {
      if (generation !== seen || state !== "running") return resolve();
      const timer = setTimeout(done, config.pollMs);
      timer.unref();
      function done() {
        clearTimeout(timer);
        waiters = waiters.filter((w) => w !== done);
        resolve();
      }
      waiters.push(done);
    });

  const progress = progressWriter(db, {
    sql,
    deleteOnPublish,
    retryMs: config.pollMs,
    onError,
    onWritten(ended) {
      const published: OutboxMessage[] = [];
      for (const { message, outcome } of ended) {
        if (outcome.kind === "dead") telemetry?.deadLettered("topic" in message ? message.topic : undefined, system);
        if (!("topic" in message)) {
          // Dead before a publish: its payload could not be decoded.
          if (outcome.kind === "dead") {
            logger?.error({ err: outcome.error, messageId: message.id }, `txonce relay: message dead-lettered: message ${message.id} could not be read: ${describeError(outcome.error)}`);
          }
          continue;
        }
        if (outcome.kind === "published") published.push(message);
        else if (outcome.kind === "failed") {
          logger?.warn(
            { err: outcome.error, messageId: message.id, topic: message.topic, key: message.key, attempt: message.attempts, maxAttempts: config.maxAttempts, retryInMs: outcome.retryInMs },
            `txonce relay: publish failed, retrying in ${formatDelay(outcome.retryInMs)}: ${describeMessage(message, config.maxAttempts)}: ${describeError(outcome.error)}`,
          );
          options.onFailed?.(message, outcome.error, outcome.retryInMs);
        } else if (outcome.kind === "dead") {
          logger?.error(
            { err: outcome.error, messageId: message.id, topic: message.topic, key: message.key, attempt: message.attempts, maxAttempts: config.maxAttempts },
            `txonce relay: message dead-lettered: ${describeMessage(message, config.maxAttempts)}: ${describeError(outcome.error)}`,
          );
          options.onDead?.(message, outcome.error);
        }
      }
      if (published.length > 0) options.onPublished?.(published);
    },
  });

  const toMessage = (row: Row): OutboxMessage => ({
    id: row.id as string,
    seq: row.seq as string,
    topic: row.topic as string,
    key: (row.key as string | null) ?? null,
    payload: codec.decode(row.payload as string),
    encodedPayload: row.payload as string,
    headers: row.headers ? (JSON.parse(row.headers as string) as Record<string, string>) : {},
    createdAt: new Date(row.created_at as Date | string),
    attempts: Number(row.attempts) + 1,
    traceContext: row.trace_context ? storedTraceContext(row.trace_context as string) : {},
  });

  /**
   * Hands one message to the publisher and records the attempt; resolves to whether it was
   * published, after calling `ended` (the outcome is recorded, not yet written).
   */
  const attempt = async (row: Row, token: string, batch: SendBatch | undefined, ended: () => void): Promise<boolean> => {
    let message: OutboxMessage;
    try {
      message = toMessage(row);
    } catch (error) {
      // A payload this codec cannot read: no publish can help.
      progress.ended({ id: row.id as string }, token, { kind: "dead", error });
      ended();
      return false;
    }
    let timer: NodeJS.Timeout | undefined;
    let published: Promise<void>;
    try {
      // telemetry: the publish is part of its topic's `send` span in the batch, its outcome recorded below
      published = batch ? batch.send(message, config.publish) : startPublish(config.publish, message);
    } catch (error) {
      ended();
      throw error;
    }
    try {
      progress.started(message, token);
      // One promise for the publish and its timeout (a rejection after the timeout is not news).
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`publish timed out after ${config.publishTimeoutMs} ms`)), config.publishTimeoutMs);
        published.then(resolve, reject);
      });
      progress.ended(message, token, { kind: "published" });
      batch?.ended(message);
      return true;
    } catch (error) {
      // A publisher marks failures that no retry can fix (e.g. a webhook's 4xx) `permanent`.
      const permanent = (error as { permanent?: unknown } | null)?.permanent === true;
      const outcome: Outcome =
        permanent || message.attempts >= config.maxAttempts
          ? { kind: "dead", error }
          : { kind: "failed", error, retryInMs: config.backoff(message.attempts) };
      progress.ended(message, token, outcome);
      batch?.ended(message, error);
      return false;
    } finally {
      clearTimeout(timer);
      ended();
    }
  };

  /**
   * Publishes a claim: unkeyed messages all at once, and each key's run one message at a time in
   * seq order, runs of different keys in parallel. After a failure, the rest of that key's run is
   * handed back unattempted, so the key stays in order behind the failed message; so is the rest
   * of a run that would otherwise go on publishing past its lease.
   *
   * A worker never has more than `batchSize` publishes that ended and are not written yet, on
   * top of at most `batchSize` in flight (one per key, and the unkeyed ones): a crash republishes
   * at most 2 × `batchSize` of its messages. A run waits before its next hand-off while that many
   * are unwritten; a write of the outcomes so far starts once half that many have ended, so that
   * runs rarely wait. (The previous batch's outcomes are all written before this one starts.)
   *
   * `batch`: the claim's telemetry (one `send {topic}` span per topic), ended by the caller.
   */
  const runBatch = async (rows: Row[], token: string, claimedAt: number, batch: SendBatch | undefined) => {
    // A key's run is published one message after the other: no publish may start so late that
    // it could outlast the lease (another relay could then take the message too).
    const lastStart = claimedAt + config.leaseMs - config.publishTimeoutMs;
    // Outcomes not known written (`unwritten`), of which `ended` no write under way covers yet;
    // `writing` resolves once the outcomes it covers are written (or their write failed: the
    // progress writer keeps them and retries, and the runs go on, so an outage cannot hold up
    // stop(); the bound then holds only once the database takes the records again).
    let unwritten = 0;
    let ended = 0;
    let writing: Promise<void> | undefined;
    const write = () => {
      const covered = ended;
      ended = 0;
      writing = progress.flushed().then(() => {
        unwritten -= covered;
        writing = undefined;
      });
      return writing;
    };
    /** Waits until one more message may be handed over. */
    const admit = async () => {
      if (!writing && ended * 2 >= config.batchSize) void write();
      while (unwritten >= config.batchSize) await (writing ?? write());
    };
    const counted = () => {
      unwritten++;
      ended++;
    };
    // (No async wrapper counting around attempt: one promise fewer per message.)
    const handOver = (row: Row) => attempt(row, token, batch, counted);
    const runs = new Map<string, Row[]>();
    const unkeyed: Row[] = [];
    for (const row of rows) {
      const key = row.key as string | null | undefined;
      if (key === null || key === undefined) unkeyed.push(row);
      else {
        const run = runs.get(key);
        if (run) run.push(row);
        else runs.set(key, [row]);
      }
    }
    const handBack = (run: Row[]) => {
      for (const row of run) progress.ended({ id: row.id as string }, token, { kind: "released" });
    };
    await Promise.all([
      ...unkeyed.map((row) => handOver(row)),
      ...[...runs.values()].map(async (run) => {
        run.sort((a, b) => (BigInt(a.seq as string) < BigInt(b.seq as string) ? -1 : 1));
        for (let i = 0; i < run.length; i++) {
          if (i > 0) await admit();
          if (performance.now() > lastStart) return handBack(run.slice(i));
          if (!(await handOver(run[i]!))) return handBack(run.slice(i + 1));
        }
      }),
    ]);
  };

  const work = async () => {
    // Where this worker's walk over the keys resumes ('' = the first key), and whether the claims
    // since the last one that leased anything walked from the first key to the last.
    let cursor = "";
    let sweptFromStart = false;
    // The records of the previous batch: the next claim runs while they are written, and the next
    // publish waits for them, so a worker never has more than one batch handed over unrecorded.
    let recorded: Promise<void> | undefined;
    // While the full claim finds no pending key, full batches of unkeyed messages are claimed with
    // the short statement; the full claim runs again after a short batch or a poll interval, so
    // a keyed message waits at most that long behind an unkeyed backlog.
    let unkeyedOnlySince: number | undefined;
    while (state === "running") {
      const seen = generation;
      try {
        const token = randomUUID();
        const claimedAt = performance.now();
        const from = cursor;
        const unkeyedOnly = unkeyedOnlySince !== undefined && claimedAt - unkeyedOnlySince < config.pollMs;
        // The next claim runs while the previous batch is recorded when it can find other work:
        // unkeyed messages, or keys past the cursor. A walk from the first key would meet that
        // batch's keys still leased, and claim again once the records are in: it waits for them.
        const overlapped = recorded !== undefined && (unkeyedOnly || from !== "");
        if (recorded !== undefined && !overlapped) {
          await recorded;
          recorded = undefined;
        }
        const claimed = withSchemaCheck(
          unkeyedOnly
            ? db.query(sql.claimUnkeyedMessages, [config.batchSize, config.leaseMs, token])
            : db.query(sql.claimMessages, [config.batchSize, config.leaseMs, token, from, config.batchSize * KEYS_WALKED_PER_MESSAGE, config.claimLimit]),
          { db, statements: sql },
        );
        const [result] = await Promise.all([claimed, recorded]);
        recorded = undefined;
        const rows = result.filter((row) => row.id !== null && row.id !== undefined);
        if (!unkeyedOnly) {
          const walkedToEnd = result[0]?.walked_to_end !== false;
          cursor = walkedToEnd ? "" : String(result[0]?.resume_after ?? "");
          unkeyedOnlySince = from === "" && Number(result[0]?.keys_walked ?? 0) === 0 && rows.length === config.batchSize ? claimedAt : undefined;
        } else if (rows.length < config.batchSize) unkeyedOnlySince = undefined;
        // The claim ran while the previous batch was being recorded, so it saw that batch's keys
        // still leased (a few busy keys): claim again now that the records are in.
        if (rows.length === 0 && overlapped) continue;
        if (rows.length === 0 && unkeyedOnly) continue;
        if (rows.length === 0) {
          // Nothing due among the keys walked: go on walking, unless the walks since the last
          // claim that found something covered every key.
          if (from === "") sweptFromStart = true;
          if (cursor === "" && sweptFromStart) {
            sweptFromStart = false;
            await idle(seen);
          }
          continue;
        }
        sweptFromStart = false;
        // telemetry: one `send {topic}` span per topic of the batch, ended once every publish ended
        const batch = telemetry?.sendBatch(system);
        try {
          await runBatch(rows, token, claimedAt, batch);
          recorded = progress.flushed();
        } finally {
          // After the outcomes' write is asked for: both go at the end of this event-loop turn,
          // the write first (its statement is sent before the telemetry's recording runs, and the
          // next batch waits for that write, not for the recording).
          batch?.end();
        }
      } catch (error) {
        onError(error);
        await idle(generation);
      }
    }
    await recorded;
  };

  return {
    async start() {
      if (state !== "idle") throw new Error("this relay was already started");
      state = "running";
      if (options.listen) {
        const connect = "connectionString" in options.listen ? pgListenConnection(options.listen.connectionString) : options.listen.connect;
        try {
          listener = await listen(sql.OUTBOX_CHANNEL, connect, notify, onError);
        } catch (error) {
          state = "idle";
          throw error;
        }
      }
      workers = Array.from({ length: config.workers }, () => work());
      if (instrumented) stopObserving = instrumented.telemetry.observeBacklog(instrumented.backlog);
    },
    async stop() {
      if (state !== "running") return;
      state = "stopping";
      notify();
      stopObserving?.();
      await Promise.all(workers);
      // The last batches' telemetry, recorded once the relay waits on its next queries (no
      // next query now): their spans end before stop() resolves.
      instrumented?.telemetry.flush();
      await progress.close();
      await listener?.stop();
    },
  };
}

/** How PostgreSQL writes a `jsonb` holding one `traceparent` (what the W3C propagator stores at enqueue), up to its value. */
const TRACEPARENT_ONLY = '{"traceparent": "';
/** That text's length with a version-00 `traceparent` (55 characters) and the closing `"}`. */
const TRACEPARENT_ONLY_LENGTH = TRACEPARENT_ONLY.length + 55 + 2;

/**
 * A message's stored creation context (the `trace_context` column as text). The usual one, a
 * `traceparent` alone, is sliced out of the text (a third of the cost of `JSON.parse`, per
 * message claimed); anything else is parsed.
 */
export function storedTraceContext(text: string): Record<string, string> {
  if (
    text.length === TRACEPARENT_ONLY_LENGTH &&
    text.startsWith(TRACEPARENT_ONLY) &&
    text.endsWith('"}') &&
    // one string value, with no escape in it: the quote that ends it is the last but one character
    text.indexOf('"', TRACEPARENT_ONLY.length) === text.length - 2 &&
    !text.includes("\\")
  ) {
    return { traceparent: text.slice(TRACEPARENT_ONLY.length, -2) };
  }
  return JSON.parse(text) as Record<string, string>;
}

function describeMessage(message: OutboxMessage, maxAttempts: number): string {
  const key = message.key === null ? "" : `, key ${JSON.stringify(message.key)}`;
  return `message ${message.id} (topic ${JSON.stringify(message.topic)}${key}, attempt ${message.attempts} of ${maxAttempts})`;
}

function formatDelay(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60_000).toFixed(1)} min`;
}
