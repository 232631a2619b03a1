// docs/http.md's Koa example, compiled by `npm run typecheck` so that it cannot rot.
import { bodyParser } from "@koa/bodyparser";
import Router from "@koa/router";
import { PrismaPg } from "@prisma/adapter-pg";
import Koa, { type Context } from "koa";
import { idempotency } from "txonce/koa";
import { txonce } from "txonce/prisma";
import { PrismaClient } from "../../generated/prisma/client.js";

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });

/** Your authentication's answer to "whose request is this?" (here: a bearer token naming the account). */
const accountOf = (ctx: Context) => /^Bearer (\S+)$/.exec(ctx.get("authorization"))?.[1] ?? "anonymous";

const idempotent = idempotency(txonce(prisma), { scope: accountOf });

const router = new Router({ prefix: "/v1" });
router.post("/charges", idempotent(), async (ctx) => {
  const { amount } = ctx.request.body as { amount: string };
  const charge = await ctx.state.tx.charge.create({ data: { accountId: accountOf(ctx), amount } });
  ctx.status = 201;
  ctx.set("location", `/v1/charges/${charge.id}`);
  ctx.body = charge;
});

export const app = new Koa();
app.use(bodyParser()); // parse the body first: the fingerprint covers it
app.use(router.routes());
