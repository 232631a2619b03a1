/**
 * The ambient transaction of txonce/nestjs: while an `@Idempotent()` route handler runs, the
 * transaction client it runs in is kept in an AsyncLocalStorage, so that the handler and every
 * service it calls reach it without passing it along (`TxonceTransaction.tx`, `currentTransaction()`,
 * or the `@Tx()` parameter decorator).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { TxonceError } from "../errors.js";

/** What the interceptor keeps for the request it runs, while its handler runs. */
export interface IdempotentContext {
  readonly tx: unknown;
  /** Set when the route's own method starts: after the guards, interceptors and pipes. */
  handlerStarted: boolean;
}

export const idempotentContext = new AsyncLocalStorage<IdempotentContext>();

/**
 * `currentTransaction()` or `TxonceTransaction.tx` was read outside the handler of an
 * `@Idempotent()` route (or outside the async calls it made): there is no idempotent
 * transaction to give.
 */
export class NoIdempotentTransactionError extends TxonceError {
  readonly code = "TXONCE_NO_TRANSACTION";
  constructor() {
    super(
      "No idempotent transaction here: the transaction client is available only while the handler of an @Idempotent() route runs " +
        "(and in the calls it makes). Use TxonceTransaction.optionalTx to fall back to your own client elsewhere.",
    );
  }
}

/**
 * The transaction client of the `@Idempotent()` request being handled. Throws
 * {@link NoIdempotentTransactionError} outside one.
 */
export function currentTransaction<Tx = unknown>(): Tx {
  const context = idempotentContext.getStore();
  if (!context) throw new NoIdempotentTransactionError();
  return context.tx as Tx;
}

/**
 * Injectable access to the idempotent transaction, for services: `constructor(private readonly
 * transaction: TxonceTransaction<Prisma.TransactionClient>)`, then `this.transaction.tx.charge.create(...)`.
 * Provided by `TxonceModule` (a global module), so every module can inject it.
 */
export class TxonceTransaction<Tx = unknown> {
  /** The transaction client of the running `@Idempotent()` request; throws {@link NoIdempotentTransactionError} outside one. */
  get tx(): Tx {
    return currentTransaction<Tx>();
  }

  /** The transaction client of the running `@Idempotent()` request, or `undefined` outside one. */
  get optionalTx(): Tx | undefined {
    return idempotentContext.getStore()?.tx as Tx | undefined;
  }

  /** Whether code runs inside an `@Idempotent()` request's transaction. */
  get isActive(): boolean {
    return idempotentContext.getStore() !== undefined;
  }
}
