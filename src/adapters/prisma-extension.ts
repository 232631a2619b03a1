/**
 * txonce as a Prisma client extension: `const db = prisma.$extends(txonceExtension(options))`
 * gives `db.$withIdempotency(key, (tx) => ...)` and the rest on the client itself. Imports only
 * `@prisma/client/extension` (Prisma's runtime), never the application's generated client.
 */
import { Prisma } from "@prisma/client/extension";
import type { IdempotencyOptions, IdempotencyOutcome, JoinedIdempotencyOptions, Operation } from "../idempotency.js";
import type { Outbox } from "../outbox/outbox.js";
import {
  txonce,
  type PrismaClientLike,
  type PrismaTransactionLike,
  type PrismaTransactionOptions,
  type TransactionClientOf,
  type Txonce,
  type TxonceOptions,
} from "./prisma.js";

/**
 * The txonce extension for a Prisma client. Each method runs on the client it is called on, with
 * every extension of that client, whichever order they were registered in: the operation's `tx`
 * is that client's own transaction client (typed from it, so it has the model methods and result
 * fields of the other extensions), and statements outside a transaction go to the primary of a
 * client with `@prisma/extension-read-replicas`. Call the methods on the client
 * (`db.$withIdempotency(...)`), not destructured: they find the client through `this`.
 *
 * One txonce instance (replay cache, in-process sharing of attempts) is kept per extended client.
 * `$outbox` is the outbox over the client the extension was added to: `enqueue(tx, ...)` takes
 * the `tx` of any of its transactions.
 *
 * @example
 * const db = prisma.$extends(txonceExtension({ retention: "48h" }));
 * const charge = await db.$withIdempotency(key, (tx) => tx.charge.create({ data }), { scope: accountId });
 */
export function txonceExtension(options: TxonceOptions = {}) {
  return Prisma.defineExtension((client) => {
    const base = txonce(client as unknown as PrismaClientLike, options);
    const instances = new WeakMap<object, Txonce<PrismaClientLike>>();
    const of = (context: unknown): Txonce<PrismaClientLike> => {
      const key = context as object;
      let instance = instances.get(key);
      if (instance === undefined) {
        instance = context === client ? base : txonce(context as PrismaClientLike, options);
        instances.set(key, instance);
      }
      return instance;
    };
    const outbox: Outbox<PrismaTransactionLike> = base.outbox;
    return client.$extends({
      name: "txonce",
      client: {
        /** `withIdempotency` of txonce on this client: see `txonce(prisma).withIdempotency`. */
        $withIdempotency<This, T>(
          this: This,
          key: string,
          operation: Operation<TransactionClientOf<This>, T>,
          callOptions?: IdempotencyOptions<PrismaTransactionOptions>,
        ): Promise<T> {
          return of(Prisma.getExtensionContext(this)).withIdempotency(key, operation as Operation<unknown, T>, callOptions);
        },
        /** `withIdempotencyOutcome` of txonce on this client. */
        $withIdempotencyOutcome<This, T>(
          this: This,
          key: string,
          operation: Operation<TransactionClientOf<This>, T>,
          callOptions?: IdempotencyOptions<PrismaTransactionOptions>,
        ): Promise<IdempotencyOutcome<T>> {
          return of(Prisma.getExtensionContext(this)).withIdempotencyOutcome(key, operation as Operation<unknown, T>, callOptions);
        },
        /** `withIdempotencyIn` of txonce on this client: the idempotent part inside a transaction you opened. */
        $withIdempotencyIn<This, T>(
          this: This,
          tx: TransactionClientOf<This>,
          key: string,
          operation: Operation<TransactionClientOf<This>, T>,
          callOptions?: JoinedIdempotencyOptions,
        ): Promise<T> {
          return of(Prisma.getExtensionContext(this)).withIdempotencyIn(tx, key, operation as Operation<unknown, T>, callOptions);
        },
        /** The whole txonce instance of this client: cleanup, scheduleCleanup, transaction, codec ... */
        $txonce<This>(this: This): Txonce<This> {
          return of(Prisma.getExtensionContext(this)) as unknown as Txonce<This>;
        },
        /** The transactional outbox: `db.$outbox.enqueue(tx, message)` inside a transaction, `db.$outbox.relay(...)`. */
        $outbox: outbox,
      },
    });
  });
}
