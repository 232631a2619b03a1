// docs/http.md's NestJS example, compiled by `npm run typecheck` so that it cannot rot.
import "reflect-metadata";
import { Body, Controller, Injectable, Module, Post, Req } from "@nestjs/common";
import { NestFactory } from "@nestjs/core";
import { PrismaPg } from "@prisma/adapter-pg";
import { Idempotent, TxonceModule, TxonceTransaction, type NestRequest } from "txonce/nestjs";
import { txonce } from "txonce/prisma";
import { PrismaClient, type Prisma } from "../../generated/prisma/client.js";

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });

/** Your authentication's answer to "whose request is this?" (here: a bearer token naming the account). */
const accountOf = (req: NestRequest): string => /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1] ?? "anonymous";

@Injectable()
class ChargesService {
  // The idempotent request's transaction, wherever the service is called from.
  constructor(private readonly transaction: TxonceTransaction<Prisma.TransactionClient>) {}

  create(accountId: string, amount: string) {
    return this.transaction.tx.charge.create({ data: { accountId, amount } });
  }
}

@Controller("v1/charges")
class ChargesController {
  constructor(private readonly charges: ChargesService) {}

  @Post()
  @Idempotent() // takes an Idempotency-Key; runs in the idempotent transaction
  create(@Req() req: NestRequest, @Body() body: { amount: string }) {
    return this.charges.create(accountOf(req), body.amount); // 201 with the charge, stored with the key
  }
}

@Module({
  imports: [TxonceModule.forRoot({ txonce: txonce(prisma), scope: accountOf })],
  controllers: [ChargesController],
  providers: [ChargesService],
})
class AppModule {}

export const app = await NestFactory.create(AppModule); // or with new FastifyAdapter()
