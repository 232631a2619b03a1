/**
 * The relay's record of what happened to the messages it holds, written as it happens: a message
 * is charged an attempt when it is handed to the publisher, and marked published, failed, dead or
 * released when that is known. Entries are written in groups, one statement per group (group
 * commit): while one write is in flight the next entries gather, and go in the write after it.
 * Entries wait a little for one another: an outcome up to {@link OUTCOME_DELAY_MS} (or until the
 * relay asks for its batch to be flushed), a charge up to {@link CHARGE_DELAY_MS} for its outcome,
 * so that a batch whose publishes end within a few milliseconds is one write, and a publish that
 * ends quickly one entry.
 * A crash loses at most the entries not yet written: those messages are published again after
 * their lease, and an attempt whose charge was not written is not counted (never one too many).
 */
import type { SqlExecutor } from "../executor.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import type { OutboxMessage } from "./message.js";

/** How a publish ended; `released` = handed back without an attempt. */
export type Outcome =
  | { kind: "published" }
  | { kind: "failed"; error: unknown; retryInMs: number }
  | { kind: "dead"; error: unknown }
  | { kind: "released" };

interface Entry {
  message: OutboxMessage | { readonly id: string };
  token: string;
  charge: number;
  outcome?: Outcome;
}

export interface ProgressWriter {
  /** The message was handed to the publisher: charge it an attempt. */
  started(message: OutboxMessage, token: string): void;
  /** The message's attempt ended (or it was handed back unattempted). */
  ended(message: OutboxMessage | { readonly id: string }, token: string, outcome: Outcome): void;
  /** Resolves once everything recorded before the call was written (or its write failed). */
  flushed(): Promise<void>;
  /** Writes what is left, once, and stops retrying failed writes. */
  close(): Promise<void>;
}

export interface ProgressOptions {
  /** The statements of the outbox table's schema. (Default: unqualified) */
  sql?: Statements;
  deleteOnPublish: boolean;
  /** Called after a group was written, with the entries that had an outcome. */
  onWritten(ended: { message: OutboxMessage | { readonly id: string }; outcome: Outcome }[]): void;
  /** A write failed; its entries are kept and written again after `retryMs`. */
  onError(error: unknown): void;
  retryMs: number;
}

/** How soon entries skipped because a claim had their rows locked are written again. */
const BUSY_RETRY_MS = 10;

/**
 * How long a charge may wait for its publish's outcome before it is written on its own. A publish
 * that ends sooner is charged in the same entry, and the same statement, as its outcome; one that
 * takes longer (or a relay that hangs) is charged by then. A relay killed less than this after a
 * hand-off leaves that attempt uncharged, as a crash before any write always could.
 */
export const CHARGE_DELAY_MS = 20;

/**
 * How long an outcome may wait for the outcomes of the publishes still in flight before it is
 * written (the relay flushes at once when its batch is done): what a crash may republish beyond
 * the publishes in flight is those that ended in the last few milliseconds.
 */
export const OUTCOME_DELAY_MS = 5;

export function progressWriter(db: SqlExecutor, options: ProgressOptions): ProgressWriter {
  const sql = options.sql ?? statementsFor();
  let pending = new Map<string, Entry>();
  let writing: Promise<void> | undefined;
  let scheduled = false;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  let soonTimer: NodeJS.Timeout | undefined;
  let soonAt = Infinity;
  let waiters: (() => void)[] = [];

  // Entries by message and lease: what one lease did to one message.
  const keyOf = (entry: Entry) => `${entry.message.id} ${entry.token}`;
  const add = (entry: Entry) => {
    const earlier = pending.get(keyOf(entry));
    if (earlier) {
      earlier.charge += entry.charge;
      earlier.outcome = entry.outcome ?? earlier.outcome;
      if ("topic" in entry.message) earlier.message = entry.message;
    } else pending.set(keyOf(entry), entry);
  };

  /** Writes a group; returns the entries to write again (rows another statement had locked). */
  const write = async (group: Map<string, Entry>): Promise<Map<string, Entry>> => {
    const entries = [...group.values()];
    const rows = await db.query(sql.recordProgress, [
      JSON.stringify(
        entries.map((e) => ({
          id: e.message.id,
          token: e.token,
          charge: e.charge,
          outcome: e.outcome?.kind ?? null,
          error: e.outcome?.kind === "failed" || e.outcome?.kind === "dead" ? describeError(e.outcome.error) : null,
          backoff_ms: e.outcome?.kind === "failed" ? e.outcome.retryInMs : 0,
        })),
      ),
      options.deleteOnPublish,
    ]);
    const busyIds = new Set(rows.flatMap((row) => (row.status === "busy" ? [row.id as string] : [])));
    const busy = new Map([...group].filter(([, e]) => busyIds.has(e.message.id)));
    const ended = entries.flatMap((e) => (e.outcome && !busyIds.has(e.message.id) ? [{ message: e.message, outcome: e.outcome }] : []));
    if (ended.length > 0) options.onWritten(ended);
    return busy;
  };
  const requeue = (entries: Map<string, Entry>) => {
    // Newer entries for the same message win.
    const newer = pending;
    pending = entries;
    for (const entry of newer.values()) add(entry);
  };

  const run = () => {
    scheduled = false;
    if (writing || pending.size === 0) return;
    writing = (async () => {
      while (pending.size > 0) {
        const group = pending;
        pending = new Map();
        const done = waiters;
        waiters = [];
        let busy: Map<string, Entry>;
        try {
          busy = await write(group);
        } catch (error) {
          // Keep the entries and try again later; the workers waiting on them go on, so a
          // database outage does not hold up stop().
          requeue(group);
          for (const resolve of done) resolve();
          options.onError(error);
          retryAfter(options.retryMs);
          return;
        }
        for (const resolve of done) resolve();
        if (busy.size > 0) {
          // Locked by a claim for the few milliseconds of its statement: again shortly.
          requeue(busy);
          retryAfter(BUSY_RETRY_MS);
          return;
        }
      }
    })().finally(() => {
      writing = undefined;
      const rest = waiters;
      waiters = [];
      for (const resolve of rest) resolve();
    });
  };

  function retryAfter(ms: number) {
    if (closed) return;
    clearTimeout(retry);
    retry = setTimeout(schedule, ms);
    retry.unref();
  }

  /** A write within `ms`, unless one is scheduled sooner or in flight (the entries join it). */
  function soon(ms: number) {
    if (scheduled || writing || closed) return;
    const at = performance.now() + ms;
    if (at >= soonAt) return;
    clearTimeout(soonTimer);
    soonAt = at;
    soonTimer = setTimeout(schedule, ms);
    soonTimer.unref();
  }

  function schedule() {
    clearTimeout(soonTimer);
    soonAt = Infinity;
    if (scheduled || writing) return;
    scheduled = true;
    // After the current macrotask: publishes that resolve at once (and their outcomes) join the
    // same group as the charges of their start.
    setImmediate(run);
  }

  return {
    started(message, token) {
      add({ message, token, charge: 1 });
      soon(CHARGE_DELAY_MS);
    },
    ended(message, token, outcome) {
      add({ message, token, charge: 0, outcome });
      soon(OUTCOME_DELAY_MS);
    },
    flushed() {
      if (pending.size === 0 && !writing) return Promise.resolve();
      return new Promise<void>((resolve) => {
        waiters.push(resolve);
        schedule();
      });
    },
    async close() {
      closed = true;
      clearTimeout(retry);
      clearTimeout(soonTimer);
      await writing;
      for (let round = 0; pending.size > 0 && round < 10; round++) {
        const group = pending;
        pending = new Map();
        const busy = await write(group).catch((error: unknown) => void options.onError(error));
        if (!busy) break;
        pending = busy;
        if (busy.size > 0) await new Promise((resolve) => setTimeout(resolve, BUSY_RETRY_MS));
      }
    },
  };
}

/** An error as stored in `last_error` and logged: its name and message, at most 2,000 characters. */
export function describeError(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.slice(0, 2000);
}
