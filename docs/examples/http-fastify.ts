// docs/http.md's Fastify example, compiled by `npm run typecheck` so that it cannot rot.
import { PrismaPg } from "@prisma/adapter-pg";
import Fastify, { type FastifyRequest } from "fastify";
import txonceFastify from "txonce/fastify";
import { txonce } from "txonce/prisma";
import { PrismaClient, type Prisma } from "../../generated/prisma/client.js";

declare module "txonce/fastify" {
  interface TxonceFastifyTypes {
    tx: Prisma.TransactionClient; // types `tx` in app.idempotent
  }
}

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });

/** Your authentication's answer to "whose request is this?" (here: a bearer token naming the account). */
const accountOf = (request: FastifyRequest) => /^Bearer (\S+)$/.exec(request.headers.authorization ?? "")?.[1] ?? "anonymous";

type ChargeRoute = { Body: { amount: string } };

export const app = Fastify();
await app.register(txonceFastify, { txonce: txonce(prisma), scope: accountOf });
app.post<ChargeRoute>(
  "/v1/charges",
  app.idempotent<ChargeRoute>(async (request, tx) => {
    const charge = await tx.charge.create({ data: { accountId: accountOf(request), amount: request.body.amount } });
    return { status: 201, body: charge };
  }),
);
