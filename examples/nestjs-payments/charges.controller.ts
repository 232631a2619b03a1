/**
 * The HTTP routes. `POST /v1/charges` takes an Idempotency-Key (`@Idempotent()`); the reads do not.
 */
import { Body, Controller, Get, Header, Inject, NotFoundException, Param, ParseIntPipe, Post, Req, Res, type PipeTransform } from "@nestjs/common";
import { Idempotent, type NestRequest } from "txonce/nestjs";
import type { PrismaClient } from "../../generated/prisma/client.js";
import { ChargesService, ProblemException } from "./charges.service.js";
import { PRISMA } from "./tokens.js";

/** The account a request acts for: `Authorization: Bearer <account id>` (a stand-in for real authentication). */
export const accountOf = (req: NestRequest): string | undefined => /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1];

/** What both platforms' responses have: Express `res.header()`, Fastify `reply.header()`. */
interface ResponseHeaders {
  header(name: string, value: string): unknown;
}

const AMOUNT = /^(?!0+(\.0+)?$)\d{1,8}(\.\d{1,2})?$/;

/** Validates the body before the handler runs: its 400 rolls back and stores nothing. */
class ChargeBodyPipe implements PipeTransform<unknown, { amount: string }> {
  transform(body: unknown) {
    const amount = (body as { amount?: unknown } | undefined)?.amount;
    if (typeof amount !== "string" || !AMOUNT.test(amount)) {
      throw new ProblemException(400, "invalid-amount", "Invalid amount", 'amount must be a positive decimal string like "12.34"');
    }
    return { amount };
  }
}

@Controller("v1")
export class ChargesController {
  constructor(
    @Inject(ChargesService) private readonly charges: ChargesService,
    @Inject(PRISMA) private readonly prisma: PrismaClient,
  ) {}

  @Post("charges")
  @Idempotent()
  @Header("cache-control", "no-store")
  async create(
    @Req() req: NestRequest,
    @Res({ passthrough: true }) res: ResponseHeaders,
    @Body(new ChargeBodyPipe()) body: { amount: string },
  ) {
    const accountId = accountOf(req)!;
    const { charge, balance } = await this.charges.charge(accountId, body.amount);
    res.header("location", `/v1/charges/${charge.id}`); // stored and replayed with the body
    return { id: charge.id, accountId, amount: charge.amount.toFixed(2), balanceAfter: balance.toFixed(2), createdAt: charge.createdAt };
  }

  @Get("charges/:id")
  async get(@Req() req: NestRequest, @Param("id", ParseIntPipe) id: number) {
    const charge = await this.prisma.charge.findFirst({ where: { id, accountId: accountOf(req) } });
    if (!charge) throw new NotFoundException("No such charge");
    return { id: charge.id, accountId: charge.accountId, amount: charge.amount.toFixed(2), createdAt: charge.createdAt };
  }

  @Get("account")
  async account(@Req() req: NestRequest) {
    const account = await this.prisma.account.findUnique({ where: { id: accountOf(req) ?? "" } });
    if (!account) throw new NotFoundException("No such account");
    return { id: account.id, balance: account.balance.toFixed(2) };
  }
}
