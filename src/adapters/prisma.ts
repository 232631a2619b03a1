/**
 * txonce for Prisma: `txonce(prisma)` returns `withIdempotency` and friends, running the
 * operation in a Prisma interactive transaction. Works with any Prisma 7 client (and extended
 * clients) through a structural type: nothing here imports the generated client.
 */
import { Decimal } from "@prisma/client/runtime/client";
import type { CustomType } from "../codec.js";
import { InvalidArgumentError } from "../errors.js";
import type { Database, Row, SqlExecutor } from "../executor.js";
import { createTxonce, type Txonce as TxonceOver, type TxonceOptions as TxonceOptionsOver } from "../txonce.js";
import { describeValue } from "./describe-value.js";
import { checkOption } from "./options.js";
import { refusingEndedTransactions } from "./ended-transactions.js";
import { adaptersWrapped, directExecutor, directRootExecutor, inTxonceTransaction } from "./prisma-driver-adapter.js";

/** Prisma's interactive transaction options. */
export interface PrismaTransactionOptions {
  /** Longest wait for a connection to start the transaction, in ms. (Default: Prisma's, 2000) */
  maxWait?: number;
  /** Longest time the transaction may run before Prisma rolls it back, in ms. (Default: Prisma's, 5000) */
  timeout?: number;
  /** Isolation level of the transaction. (Default: the database's, `ReadCommitted` on PostgreSQL) */
  isolationLevel?: "ReadUncommitted" | "ReadCommitted" | "RepeatableRead" | "Serializable";
}

/** What txonce needs from a Prisma transaction client. */
export interface PrismaTransactionLike {
  $queryRawUnsafe<T = unknown>(query: string, ...values: any[]): Promise<T>;
}

/** What txonce needs from a `PrismaClient` (or an extended one); `$connect` tells it from a transaction client. */
export interface PrismaClientLike extends PrismaTransactionLike {
  $transaction<R>(fn: (tx: any) => Promise<R>, options?: PrismaTransactionOptions): Promise<R>;
  $connect(): Promise<void>;
}

/** The transaction client type of a Prisma client: what `prisma.$transaction(async (tx) => ...)` passes. */
export type TransactionClientOf<Client> = Client extends {
  $transaction<R>(fn: (tx: infer Tx) => Promise<R>, options?: any): Promise<R>;
}
  ? Tx
  : never;

/** Prisma's `Decimal`, stored as its exact decimal string. */
export const prismaDecimalType: CustomType<Decimal, string> = {
  name: "Prisma.Decimal",
  isApplicable: (value): value is Decimal => Decimal.isDecimal(value),
  serialize: (value) => value.toFixed(),
  deserialize: (text) => new Decimal(text),
};

const ISOLATION_LEVELS = ["ReadUncommitted", "ReadCommitted", "RepeatableRead", "Serializable"] as const;

const KIND = "a Prisma client (new PrismaClient(...), or one made by $extends)";

/**
 * Refuses what is not a root Prisma client: another kind of value, or a transaction client
 * (which has no `$connect`: Prisma's ITXClientDenyList).
 */
export function checkPrismaClient(prisma: unknown): void {
  const shape = prisma as Partial<PrismaClientLike> & { $connect?: unknown };
  if (typeof prisma !== "object" || prisma === null || typeof shape.$transaction !== "function" || typeof shape.$queryRawUnsafe !== "function") {
    throw new InvalidArgumentError("prisma", `expected ${KIND}, got ${describeValue(prisma)}`);
  }
  if (typeof shape.$connect !== "function") {
    throw new InvalidArgumentError("prisma", `expected ${KIND}, got a transaction client: give txonce the client, and join a transaction with withIdempotencyIn(tx, ...)`);
  }
}

/**
 * The client that statements outside a transaction go to: the primary of a client extended with
 * `@prisma/extension-read-replicas` (its `$primary()`), else the client itself. The reads that
 * decide (the poll of a taken key, the look-up of a COMMIT that got no answer) must never see a
 * replica that lags behind.
 */
function primaryOf(prisma: PrismaClientLike): PrismaTransactionLike {
  const $primary = (prisma as { $primary?: () => PrismaTransactionLike }).$primary;
  return typeof $primary === "function" ? $primary.call(prisma) : prisma;
}

/**
 * What txonce's work gets as its transaction client when the claim sent with BEGIN found the key
 * taken, or failed, before any Prisma transaction was started: the work ends without using it.
 */
const NO_TRANSACTION_CLIENT: unknown = new Proxy(
  {},
  {
    get() {
      throw new Error("txonce: no Prisma transaction was started for this attempt (its claim found the key taken)");
    },
  },
);

/** txonce's statements on a transaction Prisma never had, once it is ending: refused. */
const refused: SqlExecutor = {
  query: () => Promise.reject(new Error("txonce: this transaction has ended")),
};

/** A {@link Database} over a Prisma client. */
export function prismaDatabase<Client extends PrismaClientLike>(
  prisma: Client,
): Database<TransactionClientOf<Client>, PrismaTransactionOptions> {
  checkPrismaClient(prisma);
  const primary = primaryOf(prisma);
  const throughPrisma: SqlExecutor = { query: (sql, params) => primary.$queryRawUnsafe<Row[]>(sql, ...params) };
  // A client whose adapter txonceAdapter wrapped: statements outside a transaction go through
  // the adapter too (found where prismaSchemaOf finds the adapter's schema).
  const factory = engineAdapterOf(primary);
  const root = adaptersWrapped() ? (directRootExecutor(factory, throughPrisma) ?? throughPrisma) : throughPrisma;
  const sqlFor = (tx: TransactionClientOf<Client>): SqlExecutor => {
    const raw: PrismaTransactionLike = tx;
    return { query: (sql, params) => raw.$queryRawUnsafe<Row[]>(sql, ...params) };
  };
  return refusingEndedTransactions({
    query: (sql, params) => root.query(sql, params),
    transaction: (work, options, first) => {
      checkOption(options?.isolationLevel, ISOLATION_LEVELS, "transaction.isolationLevel");
      if (!adaptersWrapped()) return prisma.$transaction((tx: TransactionClientOf<Client>) => work(tx, sqlFor(tx)), options);
      // The client's adapter may be wrapped by txonceAdapter: then txonce's statements go to the
      // transaction it hands over, and through Prisma when it handed none (another adapter).
      // Over @prisma/adapter-pg, the first statement (the claim) goes with the BEGIN, and when it
      // finds the key taken no Prisma transaction is started (see inTxonceTransaction).
      return inTxonceTransaction(
        factory,
        first,
        options?.isolationLevel === undefined,
        (slot) =>
          prisma.$transaction((tx: TransactionClientOf<Client>) => {
            const direct = slot();
            return work(tx, direct ? directExecutor(direct, sqlFor(tx)) : sqlFor(tx), direct?.firstRows);
          }, options),
        (direct) => work(NO_TRANSACTION_CLIENT as TransactionClientOf<Client>, directExecutor(direct, refused), direct.firstRows),
      );
    },
    sqlFor,
    // A transaction client lacks the root client's `$connect` (Prisma's ITXClientDenyList); it
    // has `$transaction` since Prisma 7, so that cannot tell them apart.
    outsideTransaction: (tx) =>
      typeof (tx as { $connect?: unknown }).$connect === "function"
        ? "this is the root Prisma client, not a transaction client: pass the `tx` that withIdempotency or " +
          "prisma.$transaction(async (tx) => ...) gives you, so the message commits or rolls back with your change"
        : undefined,
  });
}

export type TxonceOptions = TxonceOptionsOver<PrismaTransactionOptions>;

/**
 * The schema the client's driver adapter queries: `PrismaPg`'s `schema` option, else the
 * `?schema=` of its connection string (what `prisma migrate` reads). Read from the client's
 * engine configuration, which Prisma does not document: `undefined` when it is not there.
 */
export function prismaSchemaOf(prisma: unknown): string | undefined {
  try {
    const adapter = engineAdapterOf(prisma) as { options?: { schema?: unknown }; config?: { connectionString?: unknown } } | undefined;
    const schema = adapter?.options?.schema;
    if (typeof schema === "string" && schema !== "") return schema;
    const url = adapter?.config?.connectionString;
    if (typeof url === "string" && url.includes("schema=")) return new URL(url).searchParams.get("schema") || undefined;
  } catch {
    // not a URL, or an engine configuration of another shape
  }
  return undefined;
}

/** The driver adapter factory the client was made with, from its engine configuration (undocumented): `undefined` when not there. */
function engineAdapterOf(prisma: unknown): unknown {
  try {
    return (prisma as { _engineConfig?: { adapter?: unknown } })._engineConfig?.adapter;
  } catch {
    return undefined;
  }
}

export type Txonce<Client> = TxonceOver<TransactionClientOf<Client>, PrismaTransactionOptions>;

/**
 * Makes retried operations safe on a Prisma client.
 *
 * @example
 * const { withIdempotency } = txonce(prisma, { retention: "48h" });
 * const charge = await withIdempotency(key, (tx) => tx.charge.create({ data }), { scope: accountId });
 */
export function txonce<Client extends PrismaClientLike>(prisma: Client, options: TxonceOptions = {}): Txonce<Client> {
  return createTxonce(
    prismaDatabase(prisma),
    { ...options, schema: options.schema ?? prismaSchemaOf(prisma), types: [prismaDecimalType, ...(options.types ?? [])] },
    // The cleanup lock's transaction stays open (idle, holding only the lock) for a whole run.
    { lockTransactionOptions: (maxDurationMs) => ({ maxWait: 10_000, timeout: maxDurationMs + 60_000 }) },
  );
}

export { txonceExtension } from "./prisma-extension.js";
export { txonceAdapter } from "./prisma-driver-adapter.js";
