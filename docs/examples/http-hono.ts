// docs/http.md's Hono example, compiled by `npm run typecheck` so that it cannot rot.
import { serve } from "@hono/node-server";
import { PrismaPg } from "@prisma/adapter-pg";
import { Hono, type Context } from "hono";
import { idempotency } from "txonce/hono";
import { txonce } from "txonce/prisma";
import { PrismaClient } from "../../generated/prisma/client.js";

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });

/** Your authentication's answer to "whose request is this?" (here: a bearer token naming the account). */
const accountOf = (c: Context) => /^Bearer (\S+)$/.exec(c.req.header("authorization") ?? "")?.[1] ?? "anonymous";

const idempotent = idempotency(txonce(prisma), { scope: accountOf });

export const app = new Hono();
app.post("/v1/charges", idempotent(), async (c) => {
  const { amount } = await c.req.json<{ amount: string }>(); // the body is still readable
  const charge = await c.var.tx.charge.create({ data: { accountId: accountOf(c), amount } });
  c.header("location", `/v1/charges/${charge.id}`);
  return c.json(charge, 201);
});

serve({ fetch: app.fetch, port: 3000 });
