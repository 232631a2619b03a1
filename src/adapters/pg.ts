/**
 * txonce for node-postgres: `txonce(pool)` over a `pg.Pool` (or anything shaped like one), for
 * services that use pg directly or through Kysely or Drizzle. Nothing here imports `pg`.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { withLiterals } from "../sql/literals.js";
import { deferredStatement, lastRows, type DeferredStatement, type PgQueryResult } from "./merged-statements.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";

/** The subset of a pg `PoolClient` that txonce uses. */
export interface PgClientLike {
  query(text: string, values?: unknown[]): Promise<{ rows: any[] }>;
  release(error?: Error | boolean): void;
  /** In recent pg 8 releases: `"I"` idle, `"T"` in a transaction, `"E"` in a failed one (the outbox checks it). */
  getTransactionStatus?(): string | null;
  /** Listens for the connection's errors while the transaction holds it (pg's `EventEmitter`). */
  on?(event: "error", listener: (error: Error) => void): unknown;
  removeListener?(event: "error", listener: (error: Error) => void): unknown;
}

/** The subset of a pg `Pool` that txonce uses. */
export interface PgPoolLike {
  query(text: string, values?: unknown[]): Promise<{ rows: any[] }>;
  connect(): Promise<PgClientLike>;
}

/**
 * A pool whose `connect()` resolves to `Client`, which becomes the operation's transaction handle
 * (`pg.PoolClient` for a `pg.Pool`). The second, callback signature is there for inference only:
 * pg's `Pool.connect` is overloaded, and TypeScript infers from the last overload unless the
 * target has as many signatures.
 */
export interface PgPoolOf<Client extends PgClientLike> {
  query: PgPoolLike["query"];
  connect(): Promise<Client>;
  connect(callback: never): void;
}

/** Transaction options for node-postgres. */
export interface PgTransactionOptions {
  /** Isolation level of the transaction. (Default: the database's, `read committed` on PostgreSQL) */
  isolationLevel?: "read committed" | "repeatable read" | "serializable";
}

/** How {@link pgDatabase} sends txonce's statements. */
export interface PgDatabaseOptions {
  /**
   * Send txonce's own statements as named (prepared) statements, which each connection parses and
   * plans once instead of on every call: about half the server time of the claim, and a first
   * execution up to 0.15x of a bare transaction faster (docs/benchmarks.md). Your own statements
   * are not affected, nor are the claim and the save of a first execution, which go with BEGIN
   * and with COMMIT in one query each (a query of two statements cannot be prepared): what it
   * prepares is the poll of a taken key after the first (the first goes with the claim's
   * ROLLBACK, in one query too), the cleanup's and the outbox's statements. Leave it off behind a pooler that does not keep prepared statements per
   * client: PgBouncer in transaction or statement mode before 1.21, or with
   * `max_prepared_statements = 0`; they fail there with "prepared statement ... does not exist".
   * (Default: `false`)
   */
  preparedStatements?: boolean;
}

/** A {@link Database} over a pg pool; the transaction handle is the checked-out client. */
export function pgDatabase<Client extends PgClientLike>(
  pool: PgPoolOf<Client>,
  { preparedStatements = false }: PgDatabaseOptions = {},
): Database<Client, PgTransactionOptions> {
  const shape = pool as Partial<PgPoolLike> & { release?: unknown };
  if (typeof pool !== "object" || pool === null || typeof shape.connect !== "function" || typeof shape.query !== "function") {
    throw new InvalidArgumentError("pool", `expected a pg Pool (new pg.Pool(...)), got ${describeValue(pool)}`);
  }
  if (typeof shape.release === "function") {
    throw new InvalidArgumentError("pool", "expected a pg Pool (new pg.Pool(...)), got a client checked out of one: give txonce the pool, and join a transaction with withIdempotencyIn(client, ...)");
  }
  const run = async (target: PgPoolLike | PgClientLike, sql: string, params: readonly unknown[]): Promise<Row[]> => {
    const values = params as unknown[];
    const result = preparedStatements
      ? await (target.query as unknown as (config: { name: string; text: string; values: unknown[] }) => Promise<{ rows: Row[] }>)({
          name: statementName(sql),
          text: sql,
          values,
        })
      : await target.query(sql, values);
    return result.rows as Row[];
  };
  const sqlFor = (client: Client): SqlExecutor => ({ query: (sql, params) => run(client, sql, params) });
  return {
    query: (sql, params) => run(pool, sql, params),
    sqlFor,
    outsideTransaction(client) {
      const handle = client as Partial<PgClientLike> & { connect?: unknown };
      if (typeof handle.release !== "function" && typeof handle.connect === "function") {
        return "this is the pool, not the client of a transaction: pass the client that withIdempotency gives you (or one you ran BEGIN on)";
      }
      if (handle.getTransactionStatus?.() === "I") {
        return "this client is not in a transaction (no BEGIN): each statement on it commits at once; pass the client that withIdempotency gives you (or run BEGIN first)";
      }
      return undefined;
    },
    async transaction(work, options, first) {
      const client = await pool.connect();
      let broken: Error | undefined;
      let afterRollback: DeferredStatement | undefined;
      // A connection that fails between statements (the backend terminated, the socket cut)
      // emits "error" on the client; unheard, that would crash the process. Heard, the next
      // statement rejects, and the client is released as broken so the pool discards it.
      const onError = (error: Error) => {
        broken = error;
      };
      client.on?.("error", onError);
      try {
        const begin = options?.isolationLevel ? `BEGIN ISOLATION LEVEL ${isolation(options.isolationLevel)}` : "BEGIN";
        // The first statement (the claim of a key) goes with BEGIN, in one simple-protocol query;
        // `work` gets its rows, or its error (the ROLLBACK below then ends what BEGIN started).
        let firstRows: Promise<Row[]> | undefined;
        if (first) {
          firstRows = client.query(`${begin};\n${withLiterals(first.sql, first.params)}`).then(lastRows);
          firstRows.catch(() => {}); // work awaits it; this only keeps an early failure from being unhandled
        } else {
          await client.query(begin);
        }
        try {
          // A statement txonce sends with the COMMIT (the save of a result) goes in its round
          // trip: one simple-protocol query. If it fails, the COMMIT in the same query is not
          // run, and the ROLLBACK below ends the transaction.
          let atCommit: string | undefined;
          const inTransaction: SqlExecutor = {
            query: (sql, params) => run(client, sql, params),
            sendWithCommit(sql, params) {
              if (atCommit !== undefined) return false;
              atCommit = withLiterals(sql, params);
              return true;
            },
            sendAfterRollback(sql, params) {
              if (afterRollback) return undefined;
              afterRollback = deferredStatement(withLiterals(sql, params));
              return afterRollback.rows;
            },
          };
          const result = await work(client, inTransaction, firstRows);
          await client.query(atCommit === undefined ? "COMMIT" : `${atCommit};\nCOMMIT`);
          return result;
        } catch (error) {
          // A statement txonce sends after the ROLLBACK (the first poll of a taken key) goes in its
          // round trip; if that query fails, ROLLBACK is sent again on its own (a warning if the
          // first one ran), and the statement's promise rejects: txonce sends it itself.
          const after = afterRollback;
          afterRollback = undefined;
          const rolledBack = after
            ? client.query(`ROLLBACK;\n${after.sql}`).then(
                (results: PgQueryResult) => after.resolve(lastRows(results)),
                (failure: unknown) => {
                  after.reject(failure);
                  return client.query("ROLLBACK");
                },
              )
            : client.query("ROLLBACK");
          await rolledBack.catch((rollbackError: Error) => {
            broken = rollbackError;
          });
          throw error;
        }
      } finally {
        afterRollback?.reject(new Error("the transaction was not rolled back"));
        client.removeListener?.("error", onError);
        client.release(broken);
      }
    },
  };
}

const ISOLATION_LEVELS = ["read committed", "repeatable read", "serializable"] as const;

function isolation(level: PgTransactionOptions["isolationLevel"]): string {
  return checkOption(level, ISOLATION_LEVELS, "transaction.isolationLevel")!.toUpperCase();
}

/**
 * The name of one of txonce's statements when sent as a prepared statement: from a hash of its
 * text, so that a connection never sees one name for two texts.
 */
const statementNames = new Map<string, string>();
function statementName(sql: string): string {
  let name = statementNames.get(sql);
  if (name === undefined) {
    name = `txonce_${createHash("sha256").update(sql).digest("hex").slice(0, 20)}`;
    statementNames.set(sql, name);
  }
  return name;
}

export interface TxonceOptions extends TxonceOptionsOver<PgTransactionOptions>, PgDatabaseOptions {}

/**
 * Makes retried operations safe on a node-postgres pool. The operation gets the pool client
 * that holds the transaction.
 *
 * @example
 * const { withIdempotency } = txonce(pool);
 * await withIdempotency(key, (client) => client.query("INSERT INTO charges ..."));
 */
export function txonce<Client extends PgClientLike>(
  pool: PgPoolOf<Client>,
  options: TxonceOptions = {},
): Txonce<Client, PgTransactionOptions> {
  const { preparedStatements, ...txonceOptions } = options;
  return createTxonce(pgDatabase(pool, { preparedStatements }), txonceOptions);
}
