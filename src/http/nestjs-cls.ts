/**
 * Interoperation with `@nestjs-cls/transactional`: an app whose services use `@Transactional()`
 * and `TransactionHost` (from nestjs-cls) wraps its adapter with {@link joinIdempotentTransaction},
 * and that code then runs in the idempotent transaction of an `@Idempotent()` request instead of
 * a transaction of its own. Structural types only: txonce does not import nestjs-cls.
 */
import { idempotentContext } from "./nestjs-transaction.js";

/** What `optionsFactory` of a `@nestjs-cls/transactional` adapter returns, as txonce uses it. */
interface AdapterOptions {
  wrapWithTransaction(options: unknown, fn: () => Promise<unknown>, setTx: (client?: unknown) => void): Promise<unknown>;
  getFallbackInstance(): unknown;
}

/**
 * The part of a `@nestjs-cls/transactional` `TransactionalAdapter` (e.g.
 * `TransactionalAdapterPrisma`) that {@link joinIdempotentTransaction} wraps.
 */
export interface TransactionalAdapterLike {
  optionsFactory: (connection: never, extraProviders: never) => {
    wrapWithTransaction: (options: never, fn: never, setTx: never) => Promise<unknown>;
    getFallbackInstance: () => unknown;
  };
}

/**
 * Wraps a `@nestjs-cls/transactional` adapter so that, while an `@Idempotent()` request runs,
 * `TransactionHost.tx` is the idempotent transaction's client and every transaction the plugin
 * would start (`@Transactional()`, `withTransaction()`) joins it; outside one, the adapter works
 * as before. `RequiresNew` and `NotSupported` cannot leave the idempotent transaction: everything
 * a request changes commits or rolls back with its key, which is what makes the retry safe. The
 * adapter's transaction client type must be txonce's (`Prisma.TransactionClient` with
 * `TransactionalAdapterPrisma` and `txonce/prisma`).
 *
 * @example
 * ClsModule.forRoot({ plugins: [new ClsPluginTransactional({
 *   imports: [PrismaModule],
 *   adapter: joinIdempotentTransaction(new TransactionalAdapterPrisma({ prismaInjectionToken: PrismaService })),
 * })] })
 */
export function joinIdempotentTransaction<Adapter extends TransactionalAdapterLike>(adapter: Adapter): Adapter {
  // Inherits everything else (connectionToken, defaultTxOptions, lifecycle hooks) from `adapter`.
  const joined = Object.create(adapter) as Adapter;
  joined.optionsFactory = ((connection: never, extraProviders: never) => {
    const inner = adapter.optionsFactory(connection, extraProviders) as unknown as AdapterOptions;
    const options: AdapterOptions = {
      ...inner,
      wrapWithTransaction(transactionOptions, fn, setTx) {
        const context = idempotentContext.getStore();
        if (!context) return inner.wrapWithTransaction(transactionOptions, fn, setTx);
        setTx(context.tx);
        return fn();
      },
      getFallbackInstance() {
        const context = idempotentContext.getStore();
        return context ? context.tx : inner.getFallbackInstance();
      },
    };
    return options;
  }) as unknown as Adapter["optionsFactory"];
  return joined;
}
