/**
 * The business logic: debit an account and record the charge. It writes through the idempotent
 * request's transaction (TxonceTransaction), so the charge, the debit and the stored response
 * commit together, or not at all; it never sees the transaction passed in.
 */
import { HttpException, HttpStatus, Inject, Injectable } from "@nestjs/common";
import { TxonceTransaction } from "txonce/nestjs";
import type { Prisma } from "../../generated/prisma/client.js";

/** A client error in this API's own problem+json form (the ProblemFilter renders it). */
export class ProblemException extends HttpException {
  constructor(status: number, readonly type: string, title: string, detail: string) {
    super({ title, detail }, status);
  }
}

@Injectable()
export class ChargesService {
  // `@Inject(...)` names the token, so that the example also runs where the build writes no
  // decorator metadata (tsx, esbuild); with Nest's CLI (tsc) the type alone would do.
  constructor(@Inject(TxonceTransaction) private readonly transaction: TxonceTransaction<Prisma.TransactionClient>) {}

  async charge(accountId: string, amount: string) {
    const tx = this.transaction.tx;
    // Decrement only if the balance covers it: one statement, no read-modify-write race.
    const debited = await tx.account.updateMany({
      where: { id: accountId, balance: { gte: amount } },
      data: { balance: { decrement: amount } },
    });
    if (debited.count === 0) {
      const exists = await tx.account.count({ where: { id: accountId } });
      // A thrown 4xx is a stored client error: a retry gets the same 402, even after a top-up.
      throw exists
        ? new ProblemException(HttpStatus.PAYMENT_REQUIRED, "insufficient-funds", "Insufficient funds", `the balance does not cover ${amount}`)
        : new ProblemException(HttpStatus.NOT_FOUND, "no-such-account", "No such account", `account ${accountId} does not exist`);
    }
    const charge = await tx.charge.create({ data: { accountId, amount } });
    const { balance } = await tx.account.findUniqueOrThrow({ where: { id: accountId } });
    return { charge, balance };
  }
}
