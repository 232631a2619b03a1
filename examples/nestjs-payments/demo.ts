/**
 * `npm run demo:nestjs`: the NestJS payments API (app.module.ts) on an embedded PostgreSQL
 * (PGlite: nothing to install), walked through the cases an Idempotency-Key exists for, over real
 * HTTP, each checked against the responses and the database. Exits with 1 if a check fails.
 *
 * DEMO_PLATFORM=fastify runs it on @nestjs/platform-fastify instead of platform-express.
 */
import "reflect-metadata";
import { randomUUID } from "node:crypto";
import { Injectable, type CallHandler, type ExecutionContext, type INestApplication, type NestInterceptor } from "@nestjs/common";
import { NestFactory } from "@nestjs/core";
import { FastifyAdapter } from "@nestjs/platform-fastify";
import { map, type Observable } from "rxjs";
import { startEmbeddedDatabase } from "../demo/pglite.js";
import { PaymentsModule } from "./app.module.js";
import { ProblemFilter } from "./problem.filter.js";

const platform = process.env.DEMO_PLATFORM === "fastify" ? "fastify" : "express";

/**
 * The demo's fault: with `X-Demo-Fault: crash`, the request fails after the handler's writes,
 * before the commit (as a response-mapping interceptor or serializer could). Not part of the app.
 */
@Injectable()
class InjectedFault implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const crash = context.switchToHttp().getRequest().headers["x-demo-fault"] === "crash";
    return next.handle().pipe(
      map((value) => {
        if (crash) throw new Error("injected: failed after the handler's writes, before the commit");
        return value;
      }),
    );
  }
}

const database = await startEmbeddedDatabase();
const { prisma } = database;
await prisma.account.createMany({ data: [{ id: "acct_ada", balance: "500.00" }, { id: "acct_bob", balance: "20.00" }] });

const module = PaymentsModule.forRoot(prisma, {
  // On PGlite's single connection transactions queue behind each other: allow a long wait to begin one.
  transaction: { maxWait: 60_000, timeout: 60_000 },
});
const app: INestApplication =
  platform === "fastify"
    ? await NestFactory.create(module, new FastifyAdapter(), { logger: false }) // the checks below report what matters
    : await NestFactory.create(module, { logger: false });
app.useGlobalFilters(new ProblemFilter());
app.useGlobalInterceptors(new InjectedFault());
await app.listen(0, "127.0.0.1");
const baseUrl = (await app.getUrl()).replace("[::1]", "127.0.0.1");
console.log(`PGlite and the NestJS payments API (platform-${platform}) on ${baseUrl}\n`);

interface Answer {
  status: number;
  replayed: boolean;
  location: string | null;
  contentType: string | null;
  text: string;
  json: any;
}

async function charge(account: string, key: string | undefined, amount: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const response = await fetch(`${baseUrl}/v1/charges`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${account}`,
      "content-type": "application/json",
      ...(key === undefined ? {} : { "idempotency-key": `"${key}"` }),
      ...headers,
    },
    body: JSON.stringify({ amount }),
  });
  const text = await response.text();
  return {
    status: response.status,
    replayed: response.headers.get("idempotent-replayed") === "true",
    location: response.headers.get("location"),
    contentType: response.headers.get("content-type"),
    text,
    json: JSON.parse(text),
  };
}

const checks: [string, boolean][] = [];
function step(title: string, results: [string, boolean][]): void {
  console.log(title);
  for (const [what, ok] of results) {
    console.log(`  ${ok ? "✓" : "✗"} ${what}`);
    checks.push([`${title}: ${what}`, ok]);
  }
}
const chargesOf = (accountId: string) => prisma.charge.count({ where: { accountId } });

// 1. A charge, and its retry.
const k1 = randomUUID();
const first = await charge("acct_ada", k1, "12.34");
const retry = await charge("acct_ada", k1, "12.34");
step("1. POST /v1/charges, then the same request again (a retry after a lost response)", [
  [`first: ${first.status} ${first.location}, balance after ${first.json.balanceAfter}`, first.status === 201 && first.location !== null],
  ["retry: the stored response, Idempotent-Replayed: true, same bytes and Location", retry.replayed && retry.text === first.text && retry.location === first.location],
  ["one charge in the database", (await chargesOf("acct_ada")) === 1],
]);

// 2. The same key for another request.
const reused = await charge("acct_ada", k1, "99.00");
step("2. The same key with another amount", [[`${reused.status} ${reused.json.type}`, reused.status === 422 && /idempotency-key-reused$/.test(reused.json.type)]]);

// 3. A failure before the commit, and the retry.
const k2 = randomUUID();
const crashed = await charge("acct_ada", k2, "5.00", { "x-demo-fault": "crash" });
const afterCrash = await chargesOf("acct_ada");
const recovered = await charge("acct_ada", k2, "5.00");
step("3. The server fails after the writes, before the commit; the client retries", [
  [`failed attempt: ${crashed.status}, charge and key rolled back`, crashed.status === 500 && afterCrash === 1],
  ["retry: runs afresh (not a replay) and charges once", recovered.status === 201 && !recovered.replayed && (await chargesOf("acct_ada")) === 2],
]);

// 4. A declined charge is a stored client error, formatted by the app's ProblemFilter.
const k3 = randomUUID();
const declined = await charge("acct_bob", k3, "50.00");
await prisma.account.update({ where: { id: "acct_bob" }, data: { balance: "1000.00" } }); // a top-up meanwhile
const declinedAgain = await charge("acct_bob", k3, "50.00");
step("4. A charge the balance does not cover (the service throws a 402), retried after a top-up", [
  [`${declined.status} ${declined.contentType} ${declined.json.type}`, declined.status === 402 && declined.contentType?.startsWith("application/problem+json") === true],
  ["retry: the same 402, replayed byte for byte (a declined charge stays declined)", declinedAgain.replayed && declinedAgain.text === declined.text],
  ["no charge", (await chargesOf("acct_bob")) === 0],
]);

// 5. A body the pipe rejects stores nothing: the corrected request may keep the key.
const k4 = randomUUID();
const invalid = await charge("acct_bob", k4, "12,50");
const corrected = await charge("acct_bob", k4, "12.50");
step("5. An invalid amount (rejected by a pipe before the handler), then corrected with the same key", [
  [`${invalid.status} ${invalid.json.type}`, invalid.status === 400 && /invalid-amount$/.test(invalid.json.type)],
  ["corrected: 201, not a replay", corrected.status === 201 && !corrected.replayed],
]);

// 6. Concurrent duplicates.
const k5 = randomUUID();
const racing = await Promise.all(Array.from({ length: 5 }, () => charge("acct_bob", k5, "1.00")));
step("6. Five copies of one request at once", [
  ["one ran, four got its response replayed", racing.filter((r) => r.replayed).length === 4 && new Set(racing.map((r) => r.text)).size === 1],
  ["two charges for acct_bob in all (steps 5 and 6)", (await chargesOf("acct_bob")) === 2],
]);

// 7. No key.
const keyless = await charge("acct_ada", undefined, "1.00");
step("7. No Idempotency-Key", [[`${keyless.status} ${keyless.json.type}`, keyless.status === 400 && /idempotency-key-missing$/.test(keyless.json.type)]]);

const ada = await prisma.account.findUniqueOrThrow({ where: { id: "acct_ada" } });
const bob = await prisma.account.findUniqueOrThrow({ where: { id: "acct_bob" } });
step("Balances", [
  [`acct_ada: 500.00 - 12.34 - 5.00 = ${ada.balance.toFixed(2)}`, ada.balance.toFixed(2) === "482.66"],
  [`acct_bob: 1000.00 - 12.50 - 1.00 = ${bob.balance.toFixed(2)}`, bob.balance.toFixed(2) === "986.50"],
]);

await app.close();
await database.close();
const failed = checks.filter(([, ok]) => !ok);
console.log(failed.length === 0 ? `\nAll ${checks.length} checks passed.` : `\n${failed.length} of ${checks.length} checks FAILED.`);
// After close(): PGlite's Emscripten runtime sets process.exitCode to 0 when it exits.
process.exitCode = failed.length === 0 ? 0 : 1;
