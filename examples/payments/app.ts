/**
 * A small payments API on txonce/express: accounts with a balance, and charges against them.
 *
 *   POST /v1/charges        { "amount": "12.34" }  needs an Idempotency-Key; 201 with the charge
 *   GET  /v1/charges/:id    the charge, if it belongs to the caller's account
 *   GET  /v1/account        the caller's account and balance
 *
 * Every request names its account with `Authorization: Bearer <account id>`: a stand-in for real
 * authentication that keeps the example short. The account is the idempotency scope, so two
 * clients that happen to pick the same key never see each other's charges.
 */
import express, { type ErrorRequestHandler, type Request, type RequestHandler } from "express";
import { txonce } from "txonce/prisma";
import { idempotency } from "txonce/express";
import type { PrismaClient } from "../../generated/prisma/client.js";

export interface PaymentsAppOptions {
  readonly prisma: PrismaClient;
  /** Options of the txonce instance (e.g. longer transaction waits on an embedded database). (Default: txonce's) */
  readonly txonce?: Parameters<typeof txonce>[1];
  /**
   * Called inside the charge's transaction after its writes, before the commit. The demo uses it
   * to make the server fail at the worst moment. (Default: none)
   */
  readonly beforeCommit?: (req: Request) => void | Promise<void>;
}

const AMOUNT = /^(?!0+(\.0+)?$)\d{1,8}(\.\d{1,2})?$/;
const accounts = new WeakMap<Request, string>();
const accountOf = (req: Request) => accounts.get(req)!;

/** RFC 9457 problem details for this API's own errors, like txonce's. */
const problem = (status: number, type: string, title: string, detail: string) => ({
  status,
  headers: { "content-type": "application/problem+json" },
  body: { type: `https://payments.example/problems/${type}`, title, status, detail },
});

export function createPaymentsApp({ prisma, txonce: txonceOptions, beforeCommit }: PaymentsAppOptions): express.Express {
  const idempotent = idempotency(txonce(prisma, txonceOptions), {
    scope: (req) => accountOf(req),
    retention: "24h",
  });

  const authenticate: RequestHandler = (req, res, next) => {
    const accountId = /^Bearer (\S+)$/.exec(req.get("authorization") ?? "")?.[1];
    if (!accountId) {
      res.status(401).type("application/problem+json").json({ title: "Unauthorized", status: 401 });
      return;
    }
    accounts.set(req, accountId);
    next();
  };

  const app = express();
  app.use(express.json());
  app.use("/v1", authenticate);

  app.post(
    "/v1/charges",
    idempotent<Record<string, never>, { amount?: unknown }>(async (req, tx) => {
      const accountId = accountOf(req);
      const amount = req.body?.amount;
      if (typeof amount !== "string" || !AMOUNT.test(amount)) {
        return problem(400, "invalid-amount", "Invalid amount", 'amount must be a positive decimal string like "12.34"');
      }
      // Decrement only if the balance covers it: one statement, no read-modify-write race.
      const debited = await tx.account.updateMany({
        where: { id: accountId, balance: { gte: amount } },
        data: { balance: { decrement: amount } },
      });
      if (debited.count === 0) {
        const exists = await tx.account.count({ where: { id: accountId } });
        return exists
          ? problem(402, "insufficient-funds", "Insufficient funds", `the balance does not cover ${amount}`)
          : problem(404, "no-such-account", "No such account", `account ${accountId} does not exist`);
      }
      const charge = await tx.charge.create({ data: { accountId, amount } });
      const { balance } = await tx.account.findUniqueOrThrow({ where: { id: accountId } });
      await beforeCommit?.(req);
      return {
        status: 201,
        headers: { location: `/v1/charges/${charge.id}` },
        body: {
          id: charge.id,
          accountId,
          amount: charge.amount.toFixed(2),
          balanceAfter: balance.toFixed(2),
          createdAt: charge.createdAt,
        },
      };
    }),
  );

  app.get("/v1/charges/:id", async (req, res) => {
    const charge = await prisma.charge.findFirst({ where: { id: Number(req.params.id) || -1, accountId: accountOf(req) } });
    if (!charge) {
      res.status(404).type("application/problem+json").json({ title: "No such charge", status: 404 });
      return;
    }
    res.json({ id: charge.id, accountId: charge.accountId, amount: charge.amount.toFixed(2), createdAt: charge.createdAt });
  });

  app.get("/v1/account", async (req, res) => {
    const account = await prisma.account.findUnique({ where: { id: accountOf(req) } });
    if (!account) {
      res.status(404).type("application/problem+json").json({ title: "No such account", status: 404 });
      return;
    }
    res.json({ id: account.id, balance: account.balance.toFixed(2) });
  });

  // Handler errors (after txonce rolled the charge back) and anything else unexpected.
  app.use(((error, _req, res, _next) => {
    const status = typeof error?.statusCode === "number" ? error.statusCode : 500;
    res.status(status).type("application/problem+json").json({ title: "Internal Server Error", status, detail: String(error?.message ?? error) });
  }) satisfies ErrorRequestHandler);

  return app;
}
