// docs/outbox.md's logging example, compiled by `npm run typecheck` so that it cannot rot.
// The relay reports failed publishes, dead letters and its own errors to `logger`: a pino (or
// bunyan) logger as it is, any other logger through two small functions, or `false` for none.
import pino from "pino";
import type { Publisher, RelayLogger } from "txonce";
import { txonce } from "txonce/pg";
import type pg from "pg";

export function startRelay(pool: pg.Pool, publisher: Publisher) {
  const t = txonce(pool);
  // pino: each event is one JSON line with `err`, `messageId`, `topic`, `key`, `attempt`,
  // `maxAttempts` and, for a retry, `retryInMs`.
  const logger = pino({ name: "outbox-relay" });
  return t.outbox.relay({ publisher, logger });
}

/** A logger whose methods take the message first (winston, console-style): swap the arguments. */
export function messageFirst(log: { warn(message: string, meta?: object): unknown; error(message: string, meta?: object): unknown }): RelayLogger {
  return {
    warn: (fields, message) => void log.warn(message, fields),
    error: (fields, message) => void log.error(message, fields),
  };
}
