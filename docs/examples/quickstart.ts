// Linked from the README ("Use it"): a charge with the errors mapped to HTTP status codes. Compiled by `npm run typecheck`.
import { PrismaPg } from "@prisma/adapter-pg";
import {
  DatabaseUnavailableError,
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  OutcomeUnknownError,
} from "txonce";
import { txonce, txonceAdapter } from "txonce/prisma";
import { PrismaClient } from "../../generated/prisma/client.js";

const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString: process.env.DATABASE_URL })) });
const { withIdempotency, withIdempotencyOutcome } = txonce(prisma, { retention: "48h" });

interface ChargeRequest {
  accountId: string;
  amount: number;
}

export async function charge(idempotencyKey: string, body: ChargeRequest) {
  const { accountId: id, amount } = body;
  return withIdempotency(
    idempotencyKey,
    async (tx) => {
      await tx.account.update({ where: { id }, data: { balance: { decrement: amount } } });
      return tx.charge.create({ data: { accountId: id, amount } });
    },
    { scope: id, fingerprint: body },
  );
}

/** The same, for an HTTP handler that reports replays and maps errors to status codes. */
export async function chargeHandler(idempotencyKey: string, body: ChargeRequest) {
  try {
    const outcome = await withIdempotencyOutcome(
      idempotencyKey,
      (tx) => tx.charge.create({ data: { accountId: body.accountId, amount: body.amount } }),
      { scope: body.accountId, fingerprint: body },
    );
    const headers: Record<string, string> = outcome.replayed ? { "Idempotent-Replayed": "true" } : {};
    return { status: 201, headers, body: outcome.value };
  } catch (error) {
    if (error instanceof IdempotencyKeyInUseError) return { status: 409, headers: { "Retry-After": "1" }, body: error.code };
    if (error instanceof IdempotencyKeyReusedError) return { status: 422, headers: {}, body: error.code };
    if (error instanceof InvalidArgumentError) return { status: 400, headers: {}, body: error.message };
    // The database failed; the key is committed or rolled back, never half: the client retries
    // with the same key, and gets a replay or a fresh run.
    if (error instanceof DatabaseUnavailableError || error instanceof OutcomeUnknownError) {
      return { status: 503, headers: { "Retry-After": "1" }, body: error.code };
    }
    throw error;
  }
}
