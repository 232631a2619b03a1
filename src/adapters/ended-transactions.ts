import type { Database } from "../executor.js";

/**
 * The database with one more refusal for {@link Database.outsideTransaction}: a handle of a
 * transaction that txonce opened and that has ended (a `tx` kept after `withIdempotency`
 * returned). For adapters whose client makes a new handle for every transaction and cannot say
 * whether one has ended: postgres.js would run its statements outside any transaction, Prisma
 * and Kysely fail them with errors of their own; either way the outbox and `withIdempotencyIn`
 * refuse it before anything is sent. (Not for node-postgres, whose pool hands the same client
 * object to many transactions: it asks the client instead.)
 */
export function refusingEndedTransactions<Tx, TxOptions>(db: Database<Tx, TxOptions>): Database<Tx, TxOptions> {
  const ended = new WeakSet<object>();
  const isHandle = (tx: unknown): tx is object => (typeof tx === "object" || typeof tx === "function") && tx !== null;
  return {
    query: (sql, params) => db.query(sql, params),
    sqlFor: (tx) => db.sqlFor(tx),
    transaction: (work, options, first) =>
      db.transaction(async (tx, sql, firstRows) => {
        try {
          return await work(tx, sql, firstRows);
        } finally {
          if (isHandle(tx)) ended.add(tx);
        }
      }, options, first),
    outsideTransaction: (tx) =>
      isHandle(tx) && ended.has(tx)
        ? "this transaction has already ended (txonce committed or rolled it back when the operation returned): pass the tx of an open transaction"
        : db.outsideTransaction?.(tx),
  };
}
