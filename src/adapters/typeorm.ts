/**
 * txonce for TypeORM on PostgreSQL: `txonce(dataSource)`; the operation gets the `EntityManager`
 * of the transaction (`dataSource.transaction(async (manager) => ...)`). Takes the structural
 * subset of TypeORM that it uses; nothing here imports `typeorm`.
 */
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { keepingWorkError } from "./work-error.js";

/** TypeORM's transaction options. */
export interface TypeormTransactionOptions {
  /** Isolation level of the transaction, TypeORM's spelling. (Default: the database's, `READ COMMITTED` on PostgreSQL) */
  isolationLevel?: "READ UNCOMMITTED" | "READ COMMITTED" | "REPEATABLE READ" | "SERIALIZABLE";
}

/** What txonce needs from a TypeORM `QueryRunner`. */
export interface TypeormQueryRunnerLike {
  query(query: string, parameters: any[] | undefined, useStructuredResult: true): Promise<{ records: any[] }>;
  release(): Promise<void>;
  readonly isReleased: boolean;
  readonly isTransactionActive: boolean;
}

/** What txonce needs from the `EntityManager` of a transaction. */
export interface TypeormEntityManagerLike {
  readonly queryRunner?: TypeormQueryRunnerLike;
}

/** What txonce needs from a TypeORM `DataSource`; `Tx` is its `EntityManager`. */
export interface TypeormDataSourceLike<Tx> {
  readonly options: { readonly type: string };
  createQueryRunner(mode?: "master" | "slave"): TypeormQueryRunnerLike;
  transaction<T>(runInTransaction: (entityManager: Tx) => Promise<T>): Promise<T>;
  transaction<T>(isolationLevel: any, runInTransaction: (entityManager: Tx) => Promise<T>): Promise<T>;
}

/** The entity manager type of a data source: what `dataSource.transaction(async (manager) => ...)` passes. */
export type TypeormEntityManagerOf<Client> = Client extends {
  transaction<T>(isolationLevel: any, runInTransaction: (entityManager: infer Tx) => Promise<T>): Promise<T>;
}
  ? Tx
  : never;

const ISOLATION_LEVELS = ["READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] as const;

const KIND = "a TypeORM DataSource on PostgreSQL (new DataSource({ type: \"postgres\", ... }))";

/** The driver's error under TypeORM's `QueryFailedError`: txonce classifies the driver's. */
function driverErrorOf(error: unknown): unknown {
  const driverError = (error as { driverError?: unknown } | null)?.driverError;
  return driverError !== undefined ? driverError : error;
}

/** txonce's own statements fail with the driver's error, not TypeORM's `QueryFailedError`. */
async function unwrapped<T>(query: Promise<T>): Promise<T> {
  try {
    return await query;
  } catch (error) {
    throw driverErrorOf(error);
  }
}

/**
 * A {@link Database} over a TypeORM data source. Statements outside a transaction run on a query
 * runner of the primary (`master`) of a replicated data source.
 */
export function typeormDatabase<Tx extends TypeormEntityManagerLike>(
  dataSource: TypeormDataSourceLike<Tx>,
): Database<Tx, TypeormTransactionOptions> {
  const shape = dataSource as Partial<TypeormDataSourceLike<Tx>> | null;
  if (typeof shape !== "object" || shape === null || typeof shape.createQueryRunner !== "function" || typeof shape.transaction !== "function") {
    throw new InvalidArgumentError("dataSource", `expected ${KIND}, got ${describeValue(dataSource)}`);
  }
  if (shape.options?.type !== "postgres") {
    throw new InvalidArgumentError("dataSource", `expected ${KIND}, got a DataSource of type ${JSON.stringify(shape.options?.type)}`);
  }
  const run = async (runner: TypeormQueryRunnerLike, sql: string, params: readonly unknown[]): Promise<Row[]> =>
    (await unwrapped(runner.query(sql, [...params], true))).records ?? [];
  const sqlFor = (manager: Tx): SqlExecutor => ({ query: (sql, params) => run(manager.queryRunner!, sql, params) });
  return {
    async query(sql, params) {
      const runner = dataSource.createQueryRunner("master");
      try {
        return await run(runner, sql, params);
      } finally {
        await runner.release();
      }
    },
    sqlFor,
    outsideTransaction(manager) {
      const runner = (manager as Partial<TypeormEntityManagerLike> | null)?.queryRunner;
      if (runner === undefined) {
        return "this is the DataSource's own manager, not a transaction's: pass the manager that withIdempotency or dataSource.transaction(async (manager) => ...) gives you";
      }
      if (runner.isReleased || !runner.isTransactionActive) {
        return "this EntityManager's transaction has already ended (or never began): pass the manager of an open transaction";
      }
      return undefined;
    },
    // TypeORM keeps the error of `work` when its ROLLBACK fails; a failed COMMIT comes wrapped.
    transaction(work, options) {
      const isolationLevel = checkOption(options?.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
      return keepingWorkError(
        (guard) =>
          isolationLevel === undefined
            ? dataSource.transaction((manager) => guard(() => work(manager, sqlFor(manager))))
            : dataSource.transaction(isolationLevel, (manager) => guard(() => work(manager, sqlFor(manager)))),
        driverErrorOf,
      );
    },
  };
}

export type TxonceOptions = TxonceOptionsOver<TypeormTransactionOptions>;

/**
 * Makes retried operations safe on a TypeORM data source (PostgreSQL). The operation gets the
 * transaction's `EntityManager`.
 *
 * @example
 * const { withIdempotency } = txonce(dataSource);
 * await withIdempotency(key, (manager) => manager.save(Charge, { accountId, amount }));
 */
export function txonce<Client extends TypeormDataSourceLike<any>>(
  dataSource: Client,
  options: TxonceOptions = {},
): Txonce<TypeormEntityManagerOf<Client>, TypeormTransactionOptions> {
  const database = typeormDatabase(dataSource as TypeormDataSourceLike<TypeormEntityManagerOf<Client> & TypeormEntityManagerLike>);
  // The data source's `schema` (where TypeORM puts and looks for its entities) is the default.
  const own = (dataSource.options as { schema?: unknown }).schema;
  return createTxonce(database, { ...options, schema: options.schema ?? (typeof own === "string" && own !== "" ? own : undefined) });
}
