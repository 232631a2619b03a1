/**
 * Type tests of the HTTP entry points added for NestJS, Hono and Koa (vitest's typecheck mode,
 * never executed): the route's transaction client is typed from the txonce instance, options are
 * typed with the framework's request, and the nestjs-cls wrapper keeps the adapter's type.
 */
import { TransactionalAdapterPrisma } from "@nestjs-cls/transactional-adapter-prisma";
import Router from "@koa/router";
import { Hono, type Context as HonoContext } from "hono";
import type { Context as KoaContext } from "koa";
import { describe, expectTypeOf, test } from "vitest";
import type { PrismaClient } from "../generated/prisma/client.js";
import { txonce, type TransactionClientOf } from "../src/adapters/prisma.js";
import { idempotency as honoIdempotency, type HonoIdempotencyOptions } from "../src/http/hono.js";
import { idempotency as koaIdempotency, type KoaIdempotencyOptions } from "../src/http/koa.js";
import { currentTransaction, joinIdempotentTransaction, TxonceModule, TxonceTransaction } from "../src/http/nestjs.js";

declare const prisma: PrismaClient;
type Tx = TransactionClientOf<PrismaClient>;

describe("txonce/hono", () => {
  test("c.var.tx is the transaction client of the txonce instance", () => {
    const idempotent = honoIdempotency(txonce(prisma));
    new Hono().post("/charges", idempotent(), (c) => {
      expectTypeOf(c.var.tx).toEqualTypeOf<Tx>();
      return c.text("ok");
    });
  });
  test("scope gets the Hono Context", () => {
    expectTypeOf<Parameters<NonNullable<HonoIdempotencyOptions["scope"]>>[0]>().toEqualTypeOf<HonoContext>();
  });
});

describe("txonce/koa", () => {
  test("ctx.state.tx is the transaction client of the txonce instance", () => {
    const idempotent = koaIdempotency(txonce(prisma));
    new Router().post("/charges", idempotent(), (ctx) => {
      expectTypeOf(ctx.state.tx).toEqualTypeOf<Tx>();
    });
  });
  test("scope gets the Koa Context", () => {
    expectTypeOf<Parameters<NonNullable<KoaIdempotencyOptions["scope"]>>[0]>().toEqualTypeOf<KoaContext>();
  });
});

describe("txonce/nestjs", () => {
  test("TxonceTransaction and currentTransaction are typed by the caller", () => {
    expectTypeOf(new TxonceTransaction<Tx>().tx).toEqualTypeOf<Tx>();
    expectTypeOf(new TxonceTransaction<Tx>().optionalTx).toEqualTypeOf<Tx | undefined>();
    expectTypeOf(currentTransaction<Tx>()).toEqualTypeOf<Tx>();
  });
  test("forRoot takes the txonce instance; something else is rejected", () => {
    TxonceModule.forRoot({ txonce: txonce(prisma), lockTimeout: "1s" });
    // @ts-expect-error: the txonce instance is required
    TxonceModule.forRoot({ lockTimeout: "1s" });
  });
  test("joinIdempotentTransaction returns the adapter's own type", () => {
    const adapter = new TransactionalAdapterPrisma<PrismaClient>({ prismaInjectionToken: "PRISMA" });
    expectTypeOf(joinIdempotentTransaction(adapter)).toEqualTypeOf<TransactionalAdapterPrisma<PrismaClient>>();
  });
});
