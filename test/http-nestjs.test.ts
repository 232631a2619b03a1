/**
 * txonce/nestjs on NestJS 11, on both platforms (platform-express and platform-fastify): the
 * shared HTTP suite (test/support/http-suite.ts) over real HTTP on a real PostgreSQL, plus what is
 * specific to Nest: services that reach the transaction (TxonceTransaction, @Tx()), thrown
 * HttpExceptions (a 4xx is a stored client error, formatted by the app's exception filter and
 * replayed as the client got it; anything else rolls back), ValidationPipe failures (400, nothing
 * stored), @HttpCode and @Header, forRootAsync.
 */
import "reflect-metadata";
import {
  BadRequestException,
  Body,
  Catch,
  Controller,
  Header,
  HttpCode,
  HttpException,
  Inject,
  Injectable,
  Module,
  Post,
  Put,
  Req,
  Res,
  ServiceUnavailableException,
  StreamableFile,
  ValidationPipe,
  type ArgumentsHost,
  type ExceptionFilter,
  type INestApplication,
} from "@nestjs/common";
import { NestFactory } from "@nestjs/core";
import { FastifyAdapter } from "@nestjs/platform-fastify";
import { IsNumberString, IsString } from "class-validator";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import {
  currentTransaction,
  Idempotent,
  NoIdempotentTransactionError,
  Tx as TxParam,
  TxonceModule,
  TxonceTransaction,
} from "../src/http/nestjs.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { httpSuite, newKey, type StartServer, type TestRoute, type Tx } from "./support/http-suite.js";

type Platform = "express" | "fastify";

/** Renders every error as `{ code, message }` with its status, like a typical API's global filter. */
@Catch()
class RenderErrors implements ExceptionFilter {
  catch(error: any, host: ArgumentsHost) {
    const response = host.switchToHttp().getResponse();
    const status = error instanceof HttpException ? error.getStatus() : (error.statusCode ?? 500);
    const body = JSON.stringify({ code: error.code ?? error.name, message: error.message });
    if (typeof response.code === "function") response.code(status).header("content-type", "application/json").send(body);
    else response.status(status).type("application/json").send(body);
  }
}

async function start(platform: Platform, module: new () => unknown) {
  const app: INestApplication =
    platform === "fastify"
      ? await NestFactory.create(module, new FastifyAdapter(), { logger: false })
      : await NestFactory.create(module, { logger: false });
  app.useGlobalFilters(new RenderErrors());
  await app.listen(0, "127.0.0.1");
  return { app, url: (await app.getUrl()).replace("[::1]", "127.0.0.1"), close: () => app.close() };
}

/**
 * The suite's framework-free routes as one controller, a method per route, decorated as a user
 * would (here by calls, since the routes are a list): status and headers on the platform's
 * response (`@Res({ passthrough: true })`), the body returned for Nest to send.
 */
function suiteServer(platform: Platform): StartServer {
  return async ({ txonce: instance, defaults, routes }) => {
    class SuiteController {}
    const proto = SuiteController.prototype as Record<string, unknown>;
    routes.forEach((route: TestRoute, i) => {
      const name = `route${i}`;
      proto[name] = async function (req: any, res: any) {
        const reply = await route.handler(
          { body: req.body, params: req.params, header: (header) => req.headers[header.toLowerCase()] },
          currentTransaction<Tx>(),
        );
        if (platform === "fastify") res.code(reply.status ?? 200);
        else res.status(reply.status ?? 200);
        for (const [header, value] of Object.entries(reply.headers ?? {})) {
          if (value === undefined) continue;
          if (platform === "fastify") res.header(header, value);
          else res.setHeader(header, value);
        }
        // Nest on Express sends objects as JSON, Buffers included: bytes go through the response itself.
        if (platform === "express" && reply.body instanceof Uint8Array) return void res.send(Buffer.from(reply.body));
        return reply.body;
      };
      Req()(proto, name, 0);
      Res({ passthrough: true })(proto, name, 1);
      let descriptor = Object.getOwnPropertyDescriptor(proto, name)!;
      descriptor = (Idempotent(route.options)(proto, name, descriptor) as PropertyDescriptor | undefined) ?? descriptor;
      (route.method === "POST" ? Post : Put)(route.path)(proto, name, descriptor);
      Object.defineProperty(proto, name, descriptor);
    });
    Controller()(SuiteController);
    class SuiteModule {}
    Module({ imports: [TxonceModule.forRoot({ txonce: instance, ...defaults })], controllers: [SuiteController] })(SuiteModule);
    return start(platform, SuiteModule);
  };
}

// What Nest's default exception filter sends for an unknown error; txonce sends it for errors
// raised after Nest rendered the response (then the app's filters have already run).
const lateErrorBody = { statusCode: 500, message: "Internal server error" };
httpSuite("nestjs (express)", suiteServer("express"), { lateErrorBody });
httpSuite("nestjs (fastify)", suiteServer("fastify"), { lateErrorBody });

// --- What only Nest has. ---

class ChargeDto {
  @IsString()
  accountId!: string;
  @IsNumberString()
  amount!: string;
}

/** A service that writes through the idempotent transaction without being handed it. */
@Injectable()
class ChargesService {
  constructor(private readonly transaction: TxonceTransaction<Tx>) {}

  async charge(accountId: string, amount: string) {
    const tx = this.transaction.tx;
    const account = await tx.account.findUniqueOrThrow({ where: { id: accountId } });
    if (account.balance.lessThan(amount)) throw new HttpException("insufficient funds", 402);
    await tx.account.update({ where: { id: accountId }, data: { balance: { decrement: amount } } });
    return tx.charge.create({ data: { accountId, amount } });
  }
}

const calls = { charges: 0, declined: 0, unavailable: 0, validated: 0 };

@Controller("v1")
class ChargesController {
  constructor(@Inject(ChargesService) private readonly charges: ChargesService) {}

  @Post("charges")
  @Idempotent()
  async create(@Body() body: ChargeDto) {
    calls.charges++;
    const charge = await this.charges.charge(body.accountId, body.amount);
    return { id: charge.id, amount: charge.amount.toFixed(2) };
  }

  @Post("declined")
  @Idempotent()
  async declined(@TxParam() tx: Tx) {
    calls.declined++;
    // A write before the throw commits with the stored 4xx, as with a returned 4xx.
    await tx.charge.create({ data: { accountId: "acc", amount: "0.01" } });
    throw new BadRequestException({ reason: "card_declined", attempt: calls.declined });
  }

  @Post("unavailable")
  @Idempotent()
  async unavailable(@TxParam() tx: Tx) {
    calls.unavailable++;
    await tx.charge.create({ data: { accountId: "acc", amount: "0.02" } });
    throw new ServiceUnavailableException("card network down");
  }

  @Post("validated")
  @Idempotent()
  async validated(@Body(new ValidationPipe()) body: ChargeDto) {
    calls.validated++;
    return { accountId: body.accountId };
  }

  @Post("raw")
  @Idempotent()
  async raw(@Res() res: any) {
    // Writes the response itself (@Res() without passthrough): Nest sends nothing after it.
    const body = JSON.stringify({ n: ++calls.charges });
    if (typeof res.code === "function") res.code(201).header("content-type", "application/json").send(body);
    else res.status(201).type("application/json").send(body);
  }

  @Post("file")
  @Idempotent()
  async file(@TxParam() tx: Tx) {
    await tx.charge.create({ data: { accountId: "acc", amount: "0.03" } });
    return new StreamableFile(Buffer.from("a file"));
  }

  @Put("accepted")
  @HttpCode(202)
  @Header("cache-control", "no-store")
  @Idempotent({ scope: (req) => req.headers["x-tenant"] })
  async accepted(@Res({ passthrough: true }) res: any) {
    if (typeof res.header === "function") res.header("x-job", String(++calls.charges));
    else res.setHeader("x-job", String(++calls.charges));
    return { queued: true };
  }
}

/** A filter that formats HttpExceptions its own way (an `error` envelope), as many apps do. */
@Catch(HttpException)
class EnvelopeFilter implements ExceptionFilter {
  catch(error: HttpException, host: ArgumentsHost) {
    const response = host.switchToHttp().getResponse();
    const body = JSON.stringify({ error: { status: error.getStatus(), detail: error.getResponse() } });
    const status = error.getStatus();
    if (typeof response.code === "function") response.code(status).header("content-type", "application/vnd.error+json").send(body);
    else response.status(status).type("application/vnd.error+json").send(body);
  }
}

/** Stands for the app's database module: forRootAsync gets the txonce instance from it. */
class DatabaseModule {}

describe.each(["express", "fastify"] as const)("nestjs (%s) specifics", (platform) => {
  let db: TestDatabase;
  let server: Awaited<ReturnType<typeof start>>;

  beforeAll(async () => {
    db = await createTestDatabase({ prismaPoolSize: 3 });
    await db.prisma.account.create({ data: { id: "acc", balance: 100 } });
    Module({ providers: [{ provide: "TXONCE", useValue: txonce(db.prisma) }], exports: ["TXONCE"] })(DatabaseModule);
    class AppModule {}
    Module({
      imports: [
        TxonceModule.forRootAsync({
          imports: [DatabaseModule],
          inject: ["TXONCE"],
          useFactory: (instance: ReturnType<typeof txonce<TestDatabase["prisma"]>>) => ({ txonce: instance }),
        }),
      ],
      controllers: [ChargesController],
      providers: [ChargesService],
    })(AppModule);
    const app: INestApplication =
      platform === "fastify"
        ? await NestFactory.create(AppModule, new FastifyAdapter(), { logger: false })
        : await NestFactory.create(AppModule, { logger: false });
    app.useGlobalFilters(new RenderErrors(), new EnvelopeFilter());
    await app.listen(0, "127.0.0.1");
    server = { app, url: (await app.getUrl()).replace("[::1]", "127.0.0.1"), close: () => app.close() };
  });
  afterAll(async () => {
    await server?.close();
    await db?.drop();
  });

  const send = async (path: string, key: string | undefined, body: unknown = {}, method = "POST", headers: Record<string, string> = {}) => {
    const response = await fetch(server.url + path, {
      method,
      headers: { "content-type": "application/json", ...(key ? { "idempotency-key": `"${key}"` } : {}), ...headers },
      body: JSON.stringify(body),
    });
    return { status: response.status, headers: response.headers, text: await response.text() };
  };
  const keyRows = async (key: string) =>
    (await db.pool.query("SELECT scope FROM txonce_idempotency_keys WHERE key = $1", [key])).rows;
  const chargeCount = async () => (await db.pool.query("SELECT count(*)::int AS n FROM charges")).rows[0].n as number;

  test("a service reaches the transaction through TxonceTransaction; the replay is byte for byte", async () => {
    const key = newKey();
    const before = await chargeCount();
    const first = await send("/v1/charges", key, { accountId: "acc", amount: "1.50" });
    const second = await send("/v1/charges", key, { accountId: "acc", amount: "1.50" });
    expect(first.status).toBe(201);
    expect(second.status).toBe(201);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.text).toBe(first.text);
    expect(second.headers.get("content-type")).toBe(first.headers.get("content-type"));
    expect(await chargeCount()).toBe(before + 1);
    expect(await keyRows(key)).toEqual([{ scope: "POST /v1/charges" }]);
  });

  test("a 4xx HttpException thrown by the service is stored as the app's filter formatted it, and replayed", async () => {
    const key = newKey();
    const charged = calls.charges;
    const first = await send("/v1/charges", key, { accountId: "acc", amount: "1000.00" });
    const second = await send("/v1/charges", key, { accountId: "acc", amount: "1000.00" });
    expect(first.status).toBe(402);
    expect(first.headers.get("content-type")).toContain("application/vnd.error+json");
    expect(JSON.parse(first.text)).toMatchObject({ error: { status: 402 } });
    expect(second.status).toBe(402);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.text).toBe(first.text);
    expect(second.headers.get("content-type")).toBe(first.headers.get("content-type"));
    expect(calls.charges - charged).toBe(1);
  });

  test("a 4xx thrown by the handler commits the writes made before it, like a returned 4xx", async () => {
    const key = newKey();
    const before = await chargeCount();
    const first = await send("/v1/declined", key);
    const second = await send("/v1/declined", key);
    expect(first.status).toBe(400);
    expect(JSON.parse(first.text)).toEqual({ error: { status: 400, detail: { reason: "card_declined", attempt: calls.declined } } });
    expect(second.text).toBe(first.text);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(await chargeCount()).toBe(before + 1);
    expect(await keyRows(key)).toHaveLength(1);
  });

  test("a 5xx HttpException rolls back and is not stored: the filter answers, the retry runs again", async () => {
    const key = newKey();
    const before = await chargeCount();
    const callsBefore = calls.unavailable;
    const first = await send("/v1/unavailable", key);
    const second = await send("/v1/unavailable", key);
    for (const response of [first, second]) {
      expect(response.status).toBe(503);
      expect(response.headers.get("idempotent-replayed")).toBeNull();
      expect(JSON.parse(response.text)).toMatchObject({ error: { status: 503 } });
    }
    expect(calls.unavailable - callsBefore).toBe(2);
    expect(await chargeCount()).toBe(before);
    expect(await keyRows(key)).toEqual([]);
  });

  test("a ValidationPipe failure is a 400 that stores nothing; the corrected request with the same key runs", async () => {
    const key = newKey();
    const callsBefore = calls.validated;
    const invalid = await send("/v1/validated", key, { accountId: 7, amount: "x" });
    expect(invalid.status).toBe(400);
    expect(JSON.parse(invalid.text).error.detail.message).toEqual(expect.arrayContaining(["accountId must be a string"]));
    expect(await keyRows(key)).toEqual([]);
    expect(calls.validated).toBe(callsBefore);
    const valid = await send("/v1/validated", key, { accountId: "acc", amount: "1" });
    expect(valid.status).toBe(201);
    expect(JSON.parse(valid.text)).toEqual({ accountId: "acc" });
    expect(calls.validated).toBe(callsBefore + 1);
  });

  test("@HttpCode, @Header and headers set on the response are replayed; a per-route scope applies", async () => {
    const key = newKey();
    const first = await send("/v1/accepted", key, {}, "PUT", { "x-tenant": "t1" });
    const second = await send("/v1/accepted", key, {}, "PUT", { "x-tenant": "t1" });
    const otherTenant = await send("/v1/accepted", key, {}, "PUT", { "x-tenant": "t2" });
    expect(first.status).toBe(202);
    expect(first.headers.get("cache-control")).toBe("no-store");
    expect(second.status).toBe(202);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.headers.get("x-job")).toBe(first.headers.get("x-job"));
    expect(second.headers.get("cache-control")).toBe("no-store");
    expect(second.text).toBe(first.text);
    expect(otherTenant.headers.get("idempotent-replayed")).toBeNull();
    expect(otherTenant.headers.get("x-job")).not.toBe(first.headers.get("x-job"));
    expect((await keyRows(key)).map((row) => row.scope).sort()).toEqual(["PUT /v1/accepted @t1", "PUT /v1/accepted @t2"]);
  });

  test("a handler that writes the response itself (@Res()) is stored and replayed", async () => {
    const key = newKey();
    const first = await send("/v1/raw", key);
    const second = await send("/v1/raw", key);
    expect([first.status, second.status]).toEqual([201, 201]);
    expect(second.headers.get("idempotent-replayed")).toBe("true");
    expect(second.text).toBe(first.text);
    expect(second.headers.get("content-type")).toBe(first.headers.get("content-type"));
  });

  test("a StreamableFile is refused before Nest sends it: the app's filter answers 500, nothing is stored", async () => {
    const key = newKey();
    const before = await chargeCount();
    const response = await send("/v1/file", key);
    expect(response.status).toBe(500);
    expect(JSON.parse(response.text)).toMatchObject({ code: "TXONCE_RESPONSE_NOT_STORABLE", message: expect.stringContaining("stream") });
    expect(await keyRows(key)).toEqual([]);
    expect(await chargeCount()).toBe(before);
  });

  test("txonce's own answers (missing key) are problem+json, not the filter's", async () => {
    const response = await send("/v1/charges", undefined, { accountId: "acc", amount: "1" });
    expect(response.status).toBe(400);
    expect(response.headers.get("content-type")).toBe("application/problem+json");
    expect(JSON.parse(response.text).type).toBe("https://txonce.dev/problems/idempotency-key-missing");
  });

  test("outside an idempotent request there is no transaction", () => {
    const host = new TxonceTransaction();
    expect(host.isActive).toBe(false);
    expect(host.optionalTx).toBeUndefined();
    expect(() => host.tx).toThrow(NoIdempotentTransactionError);
    expect(() => currentTransaction()).toThrow(/only while the handler of an @Idempotent\(\) route runs/);
  });
});

describe("nestjs module options", () => {
  test("forRoot refuses a missing txonce instance and bad options", () => {
    expect(() => TxonceModule.forRoot({} as never)).toThrow(/txonce\(prisma\)/);
    expect(() => TxonceModule.forRoot({ txonce: { withIdempotencyOutcome: async () => ({}) } as never, maxResponseBytes: -1 })).toThrow(
      /maxResponseBytes/,
    );
    expect(() => Idempotent({ retryAfterSeconds: 1.5 })).toThrow(/retryAfterSeconds/);
  });
});
