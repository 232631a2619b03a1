import { randomUUID } from "node:crypto";
import type { Codec } from "../codec.js";
import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { Row, SqlExecutor } from "../executor.js";
import * as sql from "../sql/postgres.js";
import { withSchemaCheck } from "../sqlstate.js";
import { backoffPolicy, type BackoffOptions } from "./backoff.js";
import { listen, pgListenConnection, type ListenClientLike, type Listener } from "./listener.js";
import type { OutboxMessage, Publisher } from "./message.js";

/** Options of a relay. */
export interface RelayOptions {
  /** Sends one message; resolve = the broker has it, reject = try again later. A {@link Publisher} or its `publish`. */
  publisher: Publisher | Publisher["publish"];
  /**
   * Messages claimed per round trip, plus, for each key whose head a claim takes, up to as many
   * of the messages that follow it. Unkeyed messages of a batch are published concurrently; the
   * messages of one key one after the other, in order. (Default: `100`)
   */
  batchSize?: number;
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
   * Attempts before a message is dead-lettered (kept, with its last error). A publish error with
   * `permanent: true` (e.g. a webhook's 4xx) dead-letters it at once. (Default: `10`)
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
  /** Called with each batch of messages just published. (Default: none) */
  onPublished?: (messages: OutboxMessage[]) => void;
  /** Called when a publish failed and the message will be retried in `retryInMs`. (Default: none) */
  onFailed?: (message: OutboxMessage, error: unknown, retryInMs: number) => void;
  /** Called when a message used up its attempts and was dead-lettered. (Default: none) */
  onDead?: (message: OutboxMessage, error: unknown) => void;
  /** Called on the relay's own errors (database, LISTEN connection); it keeps going. (Default: a process warning) */
  onError?: (error: unknown) => void;
}

/** A running relay: `start()` it, and `stop()` it on shutdown. */
export interface Relay {
  /** Starts the workers (and the LISTEN connection); resolves once they run. */
  start(): Promise<void>;
  /** Stops claiming, waits for the batches in flight to be published and marked, closes LISTEN. */
  stop(): Promise<void>;
}

interface Config {
  publish: Publisher["publish"];
  batchSize: number;
  workers: number;
  leaseMs: number;
  publishTimeoutMs: number;
  maxAttempts: number;
  backoff: (attempts: number) => number;
  pollMs: number;
}

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
  return {
    publish,
    batchSize: positiveInteger(options.batchSize, 100, "batchSize", 10_000),
    workers: positiveInteger(options.workers, 1, "workers", 64),
    leaseMs,
    publishTimeoutMs,
    maxAttempts: positiveInteger(options.maxAttempts, 10, "maxAttempts", 1_000),
    backoff: backoffPolicy(options.backoff),
    pollMs: toMilliseconds(options.pollInterval ?? "1s", "pollInterval"),
  };
}

/**
 * The relay: claims due messages in short transactions (`FOR UPDATE SKIP LOCKED` plus a lease),
 * publishes them, and marks each published, retried later, or dead. Several relays, in this
 * process or others, can run side by side.
 */
export function createRelay(db: SqlExecutor, codec: Codec, deleteOnPublish: boolean, options: RelayOptions): Relay {
  const config = configure(options);
  const onError = options.onError ?? warn;
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

  const toMessage = (row: Row): OutboxMessage => ({
    id: row.id as string,
    seq: row.seq as string,
    topic: row.topic as string,
    key: (row.key as string | null) ?? null,
    payload: codec.decode(row.payload as string),
    encodedPayload: row.payload as string,
    headers: row.headers ? (JSON.parse(row.headers as string) as Record<string, string>) : {},
    createdAt: new Date(row.created_at as Date | string),
    attempts: Number(row.attempts),
  });

  const publishOne = async (message: OutboxMessage) => {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        config.publish(message),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`publish timed out after ${config.publishTimeoutMs} ms`)), config.publishTimeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  };

  type Failure = { message: OutboxMessage | { id: string }; error: unknown; dead: boolean; backoffMs: number };

  /** Publishes one message; returns the failure to record, or undefined on success. */
  const attempt = async (row: Row, published: OutboxMessage[]): Promise<Failure | undefined> => {
    let message: OutboxMessage | undefined;
    try {
      message = toMessage(row);
      await publishOne(message);
      published.push(message);
      return undefined;
    } catch (error) {
      const attempts = Number(row.attempts);
      // A publisher marks failures that no retry can fix (e.g. a webhook's 4xx) `permanent`.
      const permanent = (error as { permanent?: unknown } | null)?.permanent === true;
      return {
        message: message ?? { id: row.id as string },
        error,
        dead: permanent || attempts >= config.maxAttempts,
        backoffMs: config.backoff(attempts),
      };
    }
  };

  /**
   * Publishes a claim: unkeyed messages all at once, and each key's run one message at a time in
   * seq order, runs of different keys in parallel. After a failure, the rest of that key's run is
   * handed back unattempted, so the key stays in order behind the failed message; so is the rest
   * of a run that would otherwise go on publishing past its lease.
   */
  const runBatch = async (rows: Row[], token: string, claimedAt: number) => {
    // A key's run is published one message after the other: no publish may start so late that
    // it could outlast the lease (another relay could then take the message too).
    const lastStart = claimedAt + config.leaseMs - config.publishTimeoutMs;
    const published: OutboxMessage[] = [];
    const failed: Failure[] = [];
    const released: string[] = [];
    const runs = new Map<string, Row[]>();
    const unkeyed: Row[] = [];
    for (const row of rows) {
      if (row.key === null || row.key === undefined) unkeyed.push(row);
      else runs.set(row.key as string, [...(runs.get(row.key as string) ?? []), row]);
    }
    await Promise.all([
      ...unkeyed.map(async (row) => {
        const failure = await attempt(row, published);
        if (failure) failed.push(failure);
      }),
      ...[...runs.values()].map(async (run) => {
        run.sort((a, b) => (BigInt(a.seq as string) < BigInt(b.seq as string) ? -1 : 1));
        for (let i = 0; i < run.length; i++) {
          if (performance.now() > lastStart) {
            released.push(...run.slice(i).map((r) => r.id as string));
            return;
          }
          const failure = await attempt(run[i]!, published);
          if (failure) {
            failed.push(failure);
            released.push(...run.slice(i + 1).map((r) => r.id as string));
            return;
          }
        }
      }),
    ]);
    if (published.length > 0) {
      await db.query(deleteOnPublish ? sql.deletePublished : sql.markPublished, [published.map((m) => m.id), token]);
      options.onPublished?.(published);
    }
    if (released.length > 0) await db.query(sql.releaseClaimed, [released, token]);
    if (failed.length > 0) {
      await db.query(sql.markFailed, [
        failed.map((f) => f.message.id),
        failed.map((f) => describe(f.error)),
        failed.map((f) => f.backoffMs),
        failed.map((f) => f.dead),
        token,
      ]);
      for (const f of failed) {
        if (!("topic" in f.message)) continue;
        if (f.dead) options.onDead?.(f.message, f.error);
        else options.onFailed?.(f.message, f.error, f.backoffMs);
      }
    }
  };

  const work = async () => {
    while (state === "running") {
      const seen = generation;
      try {
        const token = randomUUID();
        const claimedAt = performance.now();
        const rows = await withSchemaCheck(db.query(sql.claimMessages, [config.batchSize, config.leaseMs, token]));
        if (rows.length === 0) {
          await idle(seen);
          continue;
        }
        // The claim took at most the head of each key; take what follows those heads too.
        const keys = [...new Set(rows.flatMap((row) => (row.key === null || row.key === undefined ? [] : [row.key as string])))];
        if (keys.length > 0) rows.push(...(await db.query(sql.claimRuns, [keys, config.batchSize, config.leaseMs, token])));
        await runBatch(rows, token, claimedAt);
      } catch (error) {
        onError(error);
        await idle(generation);
      }
    }
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
    },
    async stop() {
      if (state !== "running") return;
      state = "stopping";
      notify();
      await Promise.all(workers);
      await listener?.stop();
    },
  };
}

function describe(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, 2000);
}

function warn(error: unknown) {
  process.emitWarning(`txonce relay: ${describe(error)}`, { code: "TXONCE_RELAY_ERROR" });
}
