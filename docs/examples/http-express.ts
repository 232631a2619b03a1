// docs/http.md's Express example, compiled by `npm run typecheck` so that it cannot rot.
import { PrismaPg } from "@prisma/adapter-pg";
import express, { type Request } from "express";
import { idempotency } from "txonce/express";
import { txonce } from "txonce/prisma";
import { PrismaClient } from "../../generated/prisma/client.js";

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });

/** Your authentication's answer to "whose request is this?" (here: a bearer token naming the account). */
const accountOf = (req: Request) => /^Bearer (\S+)$/.exec(req.get("authorization") ?? "")?.[1] ?? "anonymous";

const idempotent = idempotency(txonce(prisma), {
  scope: (req) => accountOf(req), // whose keys these are
});

export const app = express();
app.use(express.json()); // parse the body first: the fingerprint covers it
app.post(
  "/v1/charges",
  idempotent<Record<string, string>, { amount: string }>(async (req, tx) => {
    const charge = await tx.charge.create({ data: { accountId: accountOf(req), amount: req.body.amount } });
    return { status: 201, headers: { location: `/v1/charges/${charge.id}` }, body: charge };
  }),
);
