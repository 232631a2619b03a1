/**
 * Helpers for adapters that send one of txonce's statements in the same simple-protocol query as
 * a transaction's BEGIN, COMMIT or ROLLBACK (node-postgres, and Prisma's `@prisma/adapter-pg`
 * through `txonceAdapter`): one round trip instead of two.
 */
import type { Row } from "../executor.js";

/** What node-postgres returns for a query: one result, or one per statement of a multi-statement query. */
export type PgQueryResult = { rows: unknown[] } | { rows: unknown[] }[];

/** The rows of the last statement of a query: pg returns one result per statement of a multi-statement query. */
export function lastRows(result: PgQueryResult): Row[] {
  const last = Array.isArray(result) ? result[result.length - 1] : result;
  return (last?.rows ?? []) as Row[];
}

/**
 * A statement (parameters written in) waiting to go with the end of a transaction, and the
 * promise of its rows that the caller got (`SqlExecutor.sendAfterRollback`).
 */
export interface DeferredStatement {
  readonly sql: string;
  readonly rows: Promise<Row[]>;
  resolve(rows: Row[]): void;
  reject(error: unknown): void;
}

export function deferredStatement(sql: string): DeferredStatement {
  let resolve!: (rows: Row[]) => void;
  let reject!: (error: unknown) => void;
  const rows = new Promise<Row[]>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The caller may never read it (its call ended another way): a rejection is not unhandled.
  rows.catch(() => {});
  return { sql, rows, resolve, reject };
}
