/**
 * Where the relay reports what would otherwise go unseen: failed publishes, dead letters and its
 * own errors. The shape is pino's (and bunyan's): `logger.warn(fields, message)`, so such a
 * logger can be passed as it is; the default writes the message, one line, to the console.
 */
export interface RelayLogger {
  /** A publish failed and will be retried. `fields`: `err`, `messageId`, `topic`, `key`, `attempt`, `maxAttempts`, `retryInMs`. */
  warn(fields: Record<string, unknown>, message: string): void;
  /** A message was dead-lettered (`fields` as for `warn`, without `retryInMs`), or the relay hit an error of its own (`fields`: `err`). */
  error(fields: Record<string, unknown>, message: string): void;
}

/** The default: the message alone, one line, on `console.warn` / `console.error`. */
export const consoleLogger: RelayLogger = {
  warn: (_fields, message) => console.warn(message),
  error: (_fields, message) => console.error(message),
};
