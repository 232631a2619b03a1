/**
 * The payments app: TxonceModule (the account is the idempotency scope), the charges controller
 * and service, and the PrismaClient under the PRISMA token.
 */
import { Module, type DynamicModule } from "@nestjs/common";
import { TxonceModule } from "txonce/nestjs";
import { txonce, type TxonceOptions } from "txonce/prisma";
import type { PrismaClient } from "../../generated/prisma/client.js";
import { accountOf, ChargesController } from "./charges.controller.js";
import { ChargesService } from "./charges.service.js";
import { PRISMA } from "./tokens.js";

@Module({})
export class PaymentsModule {
  static forRoot(prisma: PrismaClient, txonceOptions?: TxonceOptions): DynamicModule {
    return {
      module: PaymentsModule,
      imports: [TxonceModule.forRoot({ txonce: txonce(prisma, txonceOptions), scope: accountOf, retention: "24h" })],
      controllers: [ChargesController],
      providers: [{ provide: PRISMA, useValue: prisma }, ChargesService],
      exports: [PRISMA],
    };
  }
}
