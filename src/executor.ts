/** A row as the driver returns it: column name to value. */
export type Row = Record<string, unknown>;

/** One statement and its positional parameters. */
export interface Statement {
  readonly sql: string;
  readonly params: readonly unknown[];
}

/** Runs one SQL statement with positional parameters (`$1`, `$2`, ...) and returns its rows. */
export interface SqlExecutor {
  query(sql: string, params: readonly unknown[]): Promise<Row[]>;
  /**
   * Sends one statement in the same round trip as the transaction's COMMIT, where the adapter
   * can (a statement and COMMIT in one simple-protocol query); returns `false` when it cannot,
   * and the caller runs the statement itself. A statement sent this way that fails makes the
   * COMMIT fail with its error, the transaction rolled back. (Default: never)
   */
  sendWithCommit?(sql: string, params: readonly unknown[]): boolean;
  /**
   * Sends one statement in the same round trip as the transaction's ROLLBACK, right after it (so
   * on its own, outside the transaction, as {@link Database.query} runs it), where the adapter
   * can; returns a promise of its rows, settled once the transaction has ended, or `undefined`
   * when it cannot, and the caller runs the statement itself after the rollback. The promise
   * rejects when the statement could not be sent that way (or the transaction ended otherwise):
   * the caller then runs it itself. (Default: never)
   */
  sendAfterRollback?(sql: string, params: readonly unknown[]): Promise<Row[]> | undefined;
}

/**
 * Everything the core needs from a database client: statements outside a transaction, and a way
 * to run work inside one. Adapters (`txonce/prisma`, `txonce/pg`) implement it over a client; the
 * core never imports a driver or an ORM.
 *
 * @typeParam Tx - the handle user code gets inside the transaction (a Prisma transaction client,
 *   a pg `PoolClient`, ...).
 * @typeParam TxOptions - the client's own transaction options.
 */
export interface Database<Tx, TxOptions = unknown> extends SqlExecutor {
  /**
   * Runs one statement outside any transaction: on its own, in autocommit, so that what it locks
   * is released when it ends (the idempotency poll takes a key's advisory lock for one statement
   * this way). Inherited from {@link SqlExecutor}.
   */
  query(sql: string, params: readonly unknown[]): Promise<Row[]>;
  /**
   * Runs `work` in one transaction: commits when it resolves, rolls back and rethrows when it
   * rejects. `sql` runs statements on that same transaction. Rejects when COMMIT fails (with the
   * driver's error: txonce tells a refused COMMIT from one that got no answer by its codes), and
   * rejects before calling `work` when no connection or BEGIN could be had.
   *
   * `first`, when given, is the transaction's first statement: an adapter that can sends it in
   * the same round trip as BEGIN (one simple-protocol query) and hands `work` its rows as
   * `first` (a promise, rejected with the statement's error); one that cannot leaves `first`
   * undefined, and `work` runs the statement itself. (Default: never sent with BEGIN)
   *
   * When `first`'s rows are empty, or it failed, `work` ends (rejects) without using `tx`: an
   * adapter may then run `work` before, or without, opening its client's transaction, with a `tx`
   * that cannot be used (`txonce/prisma` over a wrapped `@prisma/adapter-pg` does).
   */
  transaction<T>(work: (tx: Tx, sql: SqlExecutor, first?: Promise<Row[]>) => Promise<T>, options?: TxOptions, first?: Statement): Promise<T>;
  /** Runs statements on a transaction the caller opened (e.g. to enqueue outbox messages in it). */
  sqlFor(tx: Tx): SqlExecutor;
  /**
   * Why `tx` is not a handle on an open transaction (e.g. it is the root client, whose statements
   * commit on their own), or `undefined` when it is one or the adapter cannot tell. The outbox
   * refuses to enqueue outside a transaction with this reason. (Default: never refuses)
   */
  outsideTransaction?(tx: Tx): string | undefined;
}
