import { v7 as uuidv7 } from "uuid";
import type { Codec } from "../codec.js";
import { toMilliseconds, type Duration } from "../duration.js";
import { InvalidArgumentError } from "../errors.js";
import type { Database } from "../executor.js";
import type { PrunableTable } from "../cleanup/cleanup.js";
import { statementsFor, type Statements } from "../sql/statements.js";
import { withSchemaCheck } from "../sqlstate.js";
import { outboxTelemetry } from "../telemetry/outbox.js";
import type { TelemetryOptions } from "../telemetry/options.js";
import type { OutboxMessageInput } from "./message.js";
import { createRelay, type Relay, type RelayOptions } from "./relay.js";

/** Options of the outbox, on `txonce(client, { outbox })`. */
export interface OutboxOptions {
  /** How long published messages are kept before cleanup prunes them. (Default: `"7d"`) */
  retention?: Duration;
  /** Delete messages as soon as they are published instead of keeping them for `retention`. (Default: `false`) */
  deleteOnPublish?: boolean;
}

/** The unpublished messages. */
export interface OutboxBacklog {
  /** Messages waiting to be published (including ones backing off after a failure). */
  readonly pending: number;
  /** Dead-lettered messages. */
  readonly dead: number;
  /** Age of the oldest pending message in ms: the relay's lag. `0` when none is pending. */
  readonly oldestAgeMs: number;
}

/** The transactional outbox. */
export interface Outbox<Tx> {
  /**
   * Writes a message in the caller's transaction (inside `withIdempotency`, or any transaction of
   * the same client): it is published after that transaction commits, and never if it rolls
   * back. Returns the message id (UUID v7). `tx` must be that transaction's client: the root
   * Prisma client, a pg pool, or a pg client outside `BEGIN` is refused with an
   * {@link InvalidArgumentError} (its message would commit at once, whatever happens to yours).
   */
  enqueue(tx: Tx, message: OutboxMessageInput): Promise<string>;
  /** {@link enqueue} for several messages in one statement; returns their ids in order. */
  enqueueMany(tx: Tx, messages: readonly OutboxMessageInput[]): Promise<string[]>;
  /** A relay that publishes due messages; call `start()` on it. */
  relay(options: RelayOptions): Relay;
  /** Puts dead-lettered messages back in the queue with fresh attempts; returns how many. (Default: all) */
  requeueDead(filter?: { ids?: readonly string[]; topic?: string }): Promise<number>;
  /** How many messages wait, and how old the oldest is. */
  backlog(): Promise<OutboxBacklog>;
}

const MAX_NAME_LENGTH = 255;

/** The outbox over a database; `prunable` is the table cleanup should prune, with its retention. */
export function createOutbox<Tx>(
  db: Database<Tx, unknown>,
  codec: Codec,
  options: OutboxOptions = {},
  telemetryOptions?: TelemetryOptions,
  /** The statements of the schema the outbox table is in (the `schema` option). (Default: unqualified) */
  sql: Statements = statementsFor(),
): { outbox: Outbox<Tx>; prunable: PrunableTable } {
  const lookup = { db, statements: sql };
  const retentionMs = toMilliseconds(options.retention ?? "7d", "outbox.retention");
  const deleteOnPublish = options.deleteOnPublish ?? false;
  const telemetry = outboxTelemetry(telemetryOptions);

  const checkName = (value: unknown, argument: string) => {
    if (typeof value !== "string" || value.length === 0 || value.length > MAX_NAME_LENGTH || value.includes("\u0000")) {
      throw new InvalidArgumentError(argument, `expected a non-empty string of at most ${MAX_NAME_LENGTH} characters without NUL`);
    }
  };

  const prepare = (message: OutboxMessageInput, i: number) => {
    const at = `messages[${i}]`;
    if (typeof message !== "object" || message === null) throw new InvalidArgumentError(at, "expected a message object");
    checkName(message.topic, `${at}.topic`);
    if (message.key !== undefined) checkName(message.key, `${at}.key`);
    if (message.headers !== undefined) {
      if (typeof message.headers !== "object" || message.headers === null || Array.isArray(message.headers)) {
        throw new InvalidArgumentError(`${at}.headers`, "expected an object of string values");
      }
      for (const [name, value] of Object.entries(message.headers)) {
        if (typeof value !== "string") throw new InvalidArgumentError(`${at}.headers.${name}`, `expected a string, got ${typeof value}`);
      }
    }
    return {
      id: uuidv7(),
      topic: message.topic,
      key: message.key ?? null,
      payload: codec.encode(message.payload, `${at}.payload`),
      headers: message.headers ? JSON.stringify(message.headers) : null,
      delayMs: message.delay === undefined ? 0 : toMilliseconds(message.delay, `${at}.delay`, { min: 0 }),
    };
  };

  const enqueueMany = async (tx: Tx, messages: readonly OutboxMessageInput[]) => {
    // A message written outside the producer's transaction would be published even if that
    // transaction rolled back: the dual write the outbox exists to remove.
    const outside = db.outsideTransaction?.(tx);
    if (outside !== undefined) throw new InvalidArgumentError("tx", outside);
    if (!Array.isArray(messages)) throw new InvalidArgumentError("messages", "expected an array of messages");
    if (messages.length === 0) return [];
    const rows = messages.map(prepare);
    // telemetry: a `create` span per message, whose context is stored with it
    const creating = telemetry?.create(rows);
    try {
      await withSchemaCheck(
        db.sqlFor(tx).query(sql.enqueueMessages, [
          rows.map((r) => r.id),
          rows.map((r) => r.topic),
          rows.map((r) => r.key),
          rows.map((r) => r.payload),
          rows.map((r) => r.headers),
          rows.map((r) => r.delayMs),
          creating?.traceContexts ?? rows.map(() => null),
        ]),
        lookup,
      );
    } catch (error) {
      creating?.end(error);
      throw error;
    }
    creating?.end();
    return rows.map((r) => r.id);
  };

  const backlog = async (): Promise<OutboxBacklog> => {
    const [row] = await withSchemaCheck(db.query(sql.outboxBacklog, []), lookup);
    return {
      pending: Number(row?.pending ?? 0),
      dead: Number(row?.dead ?? 0),
      oldestAgeMs: Math.round(Number(row?.oldest_age_ms ?? 0)),
    };
  };

  const outbox: Outbox<Tx> = {
    enqueue: async (tx, message) => (await enqueueMany(tx, [message]))[0]!,
    enqueueMany,
    relay: (relayOptions) => createRelay(db, codec, deleteOnPublish, relayOptions, telemetry && { telemetry, backlog }, sql),
    async requeueDead(filter = {}) {
      const rows = await withSchemaCheck(db.query(sql.requeueDead, [filter.ids ? [...filter.ids] : null, filter.topic ?? null]), lookup);
      return Number(rows[0]?.requeued ?? 0);
    },
    backlog,
  };
  return {
    outbox,
    prunable: {
      table: sql.OUTBOX_TABLE,
      deleteBatch: sql.deletePublishedBefore,
      countDue: sql.countPublishedBefore,
      params: [retentionMs],
    },
  };
}
