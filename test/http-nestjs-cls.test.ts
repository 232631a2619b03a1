/**
 * txonce/nestjs with @nestjs-cls/transactional: services written with `@Transactional()` and
 * `TransactionHost` join the idempotent transaction of an `@Idempotent()` route when the app's
 * adapter is wrapped with `joinIdempotentTransaction`, and keep their own transactions elsewhere.
 * Real Nest (platform-express), real HTTP, real PostgreSQL.
 */
import "reflect-metadata";
import { Body, Controller, Inject, Injectable, Module, Post, type INestApplication } from "@nestjs/common";
import { NestFactory } from "@nestjs/core";
import { ClsPluginTransactional, Transactional, TransactionHost } from "@nestjs-cls/transactional";
import { TransactionalAdapterPrisma } from "@nestjs-cls/transactional-adapter-prisma";
import { ClsModule } from "nestjs-cls";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { Idempotent, joinIdempotentTransaction, TxonceModule } from "../src/http/nestjs.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { newKey } from "./support/http-suite.js";

const PRISMA = "PRISMA";
type Prisma = TestDatabase["prisma"];

/** A service as nestjs-cls users write it: `@Transactional()`, and the client from `TransactionHost`. */
@Injectable()
class LedgerService {
  constructor(@Inject(TransactionHost) private readonly txHost: TransactionHost<TransactionalAdapterPrisma<Prisma>>) {}

  @Transactional()
  async charge(accountId: string, amount: string) {
    await this.txHost.tx.account.update({ where: { id: accountId }, data: { balance: { decrement: amount } } });
    return this.txHost.tx.charge.create({ data: { accountId, amount } });
  }
}

let calls = 0;

@Controller()
class LedgerController {
  constructor(@Inject(LedgerService) private readonly ledger: LedgerService) {}

  @Post("charges")
  @Idempotent()
  async create(@Body() body: { amount: string; failAfterWrite?: boolean }) {
    calls++;
    const charge = await this.ledger.charge("acc", body.amount);
    if (body.failAfterWrite) throw new Error("failed after the @Transactional() write");
    return { id: charge.id };
  }

  @Post("plain")
  async plain(@Body() body: { amount: string }) {
    const charge = await this.ledger.charge("acc", body.amount);
    return { id: charge.id };
  }
}

describe("nestjs with @nestjs-cls/transactional", () => {
  let db: TestDatabase;
  let app: INestApplication;
  let url: string;

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 1000 } });
    class PrismaModule {}
    Module({ providers: [{ provide: PRISMA, useValue: db.prisma }], exports: [PRISMA] })(PrismaModule);
    class AppModule {}
    Module({
      imports: [
        ClsModule.forRoot({
          global: true,
          middleware: { mount: true },
          plugins: [
            new ClsPluginTransactional({
              imports: [PrismaModule],
              adapter: joinIdempotentTransaction(new TransactionalAdapterPrisma<Prisma>({ prismaInjectionToken: PRISMA })),
            }),
          ],
        }),
        TxonceModule.forRoot({ txonce: txonce(db.prisma) }),
      ],
      controllers: [LedgerController],
      providers: [LedgerService],
    })(AppModule);
    app = await NestFactory.create(AppModule, { logger: false });
    await app.listen(0, "127.0.0.1");
    url = (await app.getUrl()).replace("[::1]", "127.0.0.1");
  });
  afterAll(async () => {
    await app?.close();
    await db?.drop();
  });

  const post = async (path: string, key: string | undefined, body: unknown) => {
    const response = await fetch(url + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...(key ? { "idempotency-key": `"${key}"` } : {}) },
      body: JSON.stringify(body),
    });
    return { status: response.status, headers: response.headers, text: await response.text() };
  };
  const chargeCount = async () => (await db.pool.query("SELECT count(*)::int AS n FROM charges")).rows[0].n as number;
  const balance = async () => (await db.pool.query("SELECT balance::text FROM accounts WHERE id = 'acc'")).rows[0].balance as string;

  test("a @Transactional() write joins the idempotent transaction: committed once, replayed after", async () => {
    const key = newKey();
    const before = await chargeCount();
    const first = await post("/charges", key, { amount: "1.00" });
    const second = await post("/charges", key, { amount: "1.00" });
    expect(first.status).toBe(201);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.text).toBe(first.text);
    expect(await chargeCount()).toBe(before + 1);
  });

  test("it rolls back with the idempotent transaction when the handler fails after it", async () => {
    const key = newKey();
    const [before, balanceBefore] = [await chargeCount(), await balance()];
    const callsBefore = calls;
    const failed = await post("/charges", key, { amount: "2.00", failAfterWrite: true });
    expect(failed.status).toBe(500);
    // Had the service run in a transaction of its own, its charge would have committed.
    expect(await chargeCount()).toBe(before);
    expect(await balance()).toBe(balanceBefore);
    const retried = await post("/charges", key, { amount: "2.00" });
    expect(retried.status).toBe(201);
    expect(calls - callsBefore).toBe(2);
    expect(await chargeCount()).toBe(before + 1);
  });

  test("outside an idempotent route, @Transactional() keeps its own transaction", async () => {
    const before = await chargeCount();
    const response = await post("/plain", undefined, { amount: "3.00" });
    expect(response.status).toBe(201);
    expect(await chargeCount()).toBe(before + 1);
  });
});
