/**
 * `npm run demo`: the payments API (app.ts, on txonce/express) serving a burst of charges over a
 * lossy network, on an embedded PostgreSQL (PGlite: nothing to install), ending in exactly one
 * charge per idempotency key.
 *
 * The server listens on a real port and the clients speak real HTTP. Between them sits a
 * simulated network that, per attempt, may
 *   - make the server fail after its writes, before the commit: the transaction (key included)
 *     rolls back, the client gets a 500 and retries, and the retry runs afresh;
 *   - drop the response after the commit: the server closes the connection instead of answering;
 *     the client sees a network error and retries the same key, which replays the stored answer;
 *   - time out: the client gives up waiting after a few milliseconds while the server carries
 *     on, and retries;
 *   - deliver the request twice at once: two copies race, one charges and the other replays.
 * Clients retry with exponential backoff (and honour Retry-After on a 409) until they get a final
 * answer: a 201 with the charge, or a 402 when the account's balance does not cover it (declined,
 * stored and replayed like a 201). Then the database is checked: one charge per 201, none for a
 * 402, none twice, balances that add up and never go below zero. The exit code is 1 if a check
 * fails; every check is printed.
 *
 * The server-side faults are asked for with an `X-Demo-Fault` request header that only the
 * simulated network reads; the idempotency fingerprint (method, URL, body) does not include it.
 *
 * DEMO_SEED=<n> picks other requests and faults (default 1); DEMO_REQUESTS=<n> (default 200).
 */
import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import express, { type Request, type Response } from "express";
import { Prisma } from "../../generated/prisma/client.js";
import { startEmbeddedDatabase } from "../demo/pglite.js";
import { createPaymentsApp } from "./app.js";
import { seededRandom } from "../demo/random.js";

const ACCOUNTS: readonly (readonly [id: string, balance: string])[] = [
  ["acct_ada", "5000.00"],
  ["acct_bob", "3000.00"],
  ["acct_cy", "4000.00"],
  ["acct_dee", "2500.00"],
  ["acct_eve", "6000.00"],
];
const REQUESTS = Number(process.env.DEMO_REQUESTS ?? 200);
/** Clients with a request in flight at any moment. */
const CLIENTS = 20;
/** Per attempt: the request arrives twice / the server fails before the commit / the response is dropped / the client times out. */
const P_DUPLICATE = 0.1;
const P_CRASH = 0.15;
const P_DROP = 0.2;
const P_TIMEOUT = 0.1;
const TIMEOUT_MS = 5;
/** A client gives up after this many attempts (it never should). */
const MAX_ATTEMPTS = 30;
const SEED = Number(process.env.DEMO_SEED ?? 1);

const random = seededRandom(SEED);

const stats = {
  attempts: 0,
  duplicates: 0,
  crashes: 0,
  dropped: 0,
  timeouts: 0,
  conflicts: 0,
  /** Answers the server sent with Idempotent-Replayed: true (delivered or dropped). */
  replays: 0,
  /** Final answers the server committed, not replays: 201 (charged) or 402 (declined). */
  committed: 0,
  unexpected: [] as string[],
};

let started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)}s`;

// --- The database and the service. ---

const database = await startEmbeddedDatabase();
const { prisma } = database;
await prisma.account.createMany({ data: ACCOUNTS.map(([id, balance]) => ({ id, balance })) });

const service = createPaymentsApp({
  prisma,
  // On PGlite's single connection transactions queue behind each other: allow a long wait to begin one.
  txonce: { transaction: { maxWait: 60_000, timeout: 60_000 } },
  beforeCommit: (req) => {
    if (req.get("x-demo-fault") === "crash") {
      stats.crashes++;
      throw new Error("injected: the server failed after its writes, before the commit");
    }
  },
});

// The network in front of it: counts what the server answered, and drops responses on request.
const network = express();
network.use((req: Request, res: Response, next) => {
  res.on("finish", () => {
    if (req.method !== "POST") return;
    if (res.getHeader("idempotent-replayed") === "true") stats.replays++;
    else if (res.statusCode === 201 || res.statusCode === 402) stats.committed++;
  });
  if (req.get("x-demo-fault") === "drop") {
    // Let the server finish (and commit); then cut the connection instead of delivering the answer.
    res.end = ((..._args: unknown[]) => {
      stats.dropped++;
      res.emit("finish");
      req.socket.destroy();
      return res;
    }) as typeof res.end;
  }
  next();
});
network.use(service);
const server = network.listen(0, "127.0.0.1");
await new Promise<void>((resolve) => server.once("listening", resolve));
const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
console.log(`PGlite (PostgreSQL in WebAssembly, in memory) and the payments API on ${baseUrl} started in ${elapsed()}`);

// --- The clients. ---

type ChargeRequest = { key: string; accountId: string; amount: string };
type Charge = { id: number; accountId: string; amount: string; balanceAfter: string };
type Attempt = { status: number; body: unknown; retryAfter: number | undefined };

async function send(request: ChargeRequest, fault: "crash" | "drop" | undefined, timeoutMs: number): Promise<Attempt> {
  const response = await fetch(`${baseUrl}/v1/charges`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${request.accountId}`,
      "content-type": "application/json",
      "idempotency-key": `"${request.key}"`,
      ...(fault ? { "x-demo-fault": fault } : {}),
    },
    body: JSON.stringify({ amount: request.amount }),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const retryAfter = response.headers.get("retry-after");
  return { status: response.status, body: await response.json(), retryAfter: retryAfter === null ? undefined : Number(retryAfter) };
}

/** One attempt through the unreliable network. Rejects on a network error or timeout. */
async function attempt(request: ChargeRequest): Promise<Attempt> {
  stats.attempts++;
  const fate = random();
  await sleep(random() * 3);
  if (fate < P_DUPLICATE) {
    stats.duplicates++;
    const copies = await Promise.allSettled([send(request, undefined, 30_000), send(request, undefined, 30_000)]);
    const answered = copies.find((c) => c.status === "fulfilled");
    if (answered) return answered.value;
    throw (copies[0] as PromiseRejectedResult).reason;
  }
  if (fate < P_DUPLICATE + P_CRASH) return send(request, "crash", 30_000);
  if (fate < P_DUPLICATE + P_CRASH + P_DROP) return send(request, "drop", 30_000);
  if (fate < P_DUPLICATE + P_CRASH + P_DROP + P_TIMEOUT) {
    try {
      return await send(request, undefined, TIMEOUT_MS);
    } catch (error) {
      if ((error as Error).name === "TimeoutError") stats.timeouts++;
      throw error;
    }
  }
  return send(request, undefined, 30_000);
}

/** Retries until the server gives an answer that is final: 201, or a 4xx other than 409. */
async function charge(request: ChargeRequest): Promise<Attempt> {
  for (let n = 1; ; n++) {
    let wait = Math.min(2 ** n, 40) * (0.5 + random()); // exponential backoff with jitter
    try {
      const result = await attempt(request);
      if (result.status === 409) {
        stats.conflicts++;
        wait = Math.max(wait, (result.retryAfter ?? 0) * 1000);
      } else if (result.status < 500) {
        return result;
      } else if (!/injected/.test(JSON.stringify(result.body))) {
        stats.unexpected.push(`${result.status} ${JSON.stringify(result.body)}`);
      }
    } catch (error) {
      const cause = (error as Error & { cause?: Error }).cause;
      const networkError = (error as Error).name === "TimeoutError" || (error instanceof TypeError && cause !== undefined);
      if (!networkError) stats.unexpected.push(String(error));
    }
    if (n >= MAX_ATTEMPTS) throw new Error(`no answer after ${n} attempts`);
    await sleep(wait);
  }
}

// --- The burst. ---

const requests: ChargeRequest[] = Array.from({ length: REQUESTS }, () => ({
  key: randomUUID(),
  accountId: ACCOUNTS[Math.floor(random() * ACCOUNTS.length)]![0],
  amount: (1 + Math.floor(random() * 9900) / 100).toFixed(2),
}));
console.log(
  `${REQUESTS} charge requests over HTTP, ${CLIENTS} clients at a time; per attempt: ${P_CRASH * 100}% the server fails before ` +
    `the commit, ${P_DROP * 100}% the response is dropped after it, ${P_TIMEOUT * 100}% the client times out after ` +
    `${TIMEOUT_MS} ms, ${P_DUPLICATE * 100}% the request arrives twice (seed ${SEED})`,
);
started = performance.now();

const answers = new Map<string, Attempt>();
const gaveUp: string[] = [];
let next = 0;
await Promise.all(
  Array.from({ length: CLIENTS }, async () => {
    for (let request = requests[next++]; request; request = requests[next++]) {
      try {
        answers.set(request.key, await charge(request));
      } catch {
        gaveUp.push(request.key);
      }
      const done = answers.size + gaveUp.length;
      if (done % Math.max(1, Math.floor(REQUESTS / 4)) === 0) console.log(`  ${String(done).padStart(3)}/${REQUESTS} answered (${elapsed()})`);
    }
  }),
);
const burstTime = elapsed();

// --- Check every invariant against the database. ---

// Requests the client timed out on may still be running on the server: let them finish.
await sleep(200);
const dbCharges = await prisma.charge.findMany({ select: { id: true, accountId: true, amount: true } });
const dbAccounts = await prisma.account.findMany();
const keyRows = await prisma.txonceIdempotencyKey.count({ where: { result: { not: null } } });

const charged = requests.flatMap((r) => {
  const answer = answers.get(r.key);
  return answer?.status === 201 ? [{ request: r, charge: answer.body as Charge }] : [];
});
const declined = requests.filter((r) => answers.get(r.key)?.status === 402);
const otherAnswers = [...answers.values()].filter((a) => a.status !== 201 && a.status !== 402);
const answeredIds = new Set(charged.map((c) => c.charge.id));
const wrongAnswers = charged.filter(({ request, charge }) => charge.accountId !== request.accountId || charge.amount !== request.amount).length;
// A charge that is no request's answer is an extra effect: a request charged twice (or a declined one charged).
const duplicateCharges = dbCharges.filter((c) => !answeredIds.has(c.id)).length;

const balanceRows = ACCOUNTS.map(([id, startText]) => {
  const start = new Prisma.Decimal(startText);
  const charges = dbCharges.filter((c) => c.accountId === id);
  const total = charges.reduce((sum, c) => sum.plus(c.amount), new Prisma.Decimal(0));
  const mine = charged.filter((c) => c.request.accountId === id).map((c) => c.request);
  const requested = mine.reduce((sum, r) => sum.plus(r.amount), new Prisma.Decimal(0));
  const declinedHere = declined.filter((r) => r.accountId === id).length;
  const final = dbAccounts.find((a) => a.id === id)?.balance ?? new Prisma.Decimal(NaN);
  const ok = charges.length === mine.length && total.equals(requested) && start.minus(total).equals(final) && !final.isNegative();
  return { id, start, requests: mine.length + declinedHere, declined: declinedHere, count: charges.length, requested, charged: total, final, ok };
});

const checks: [string, boolean][] = [
  ["every request got a final answer: 201 charged or 402 declined", gaveUp.length === 0 && answers.size === REQUESTS && otherAnswers.length === 0],
  ["no errors besides the injected faults", stats.unexpected.length === 0],
  ["final answers committed by the server = requests (each once; the rest were replays)", stats.committed === REQUESTS],
  ["charges in the database = 201 answers (none for a 402)", dbCharges.length === charged.length],
  ["no duplicate charges", duplicateCharges === 0],
  ["each 201 has its own charge, with its account and amount", answeredIds.size === charged.length && wrongAnswers === 0],
  ["one stored idempotency record per request (402s are stored too)", keyRows === REQUESTS],
  ["per account: charged = the 201s' amounts, start - charged = final", balanceRows.every((r) => r.ok)],
  ["no balance below zero", dbAccounts.every((a) => !a.balance.isNegative())],
];

// --- Summary. ---

const mark = (ok: boolean) => (ok ? "✓" : "✗");
const line = (label: string, value: number, note = "") => console.log(`  ${label.padEnd(30)}${String(value).padStart(5)}   ${note}`.trimEnd());
console.log(`\nAll answered in ${burstTime}.\n`);
line("requests", REQUESTS);
line("attempts", stats.attempts, "HTTP requests sent by the clients: first tries and retries");
line("  server failed before commit", stats.crashes, "500: rolled back with its key, the retry ran afresh");
line("  responses dropped", stats.dropped, "committed, then the connection was cut; the retry got a replay");
line("  client timeouts", stats.timeouts, `the client stopped waiting after ${TIMEOUT_MS} ms and retried`);
line("  concurrent duplicates", stats.duplicates, "sent twice at once: one charged, the other replayed");
line("  409 key in use", stats.conflicts, "a retry arrived while its first attempt was still running");
line("replays", stats.replays, "answered from the stored response (Idempotent-Replayed: true)");
line("charged (201)", charged.length, "the balance covered it");
line("declined (402)", declined.length, "the balance did not cover it: a final answer, stored and replayed like a 201");
line("charges created", dbCharges.length, `${mark(dbCharges.length === charged.length)} = charged`);
line("duplicate charges", duplicateCharges, mark(duplicateCharges === 0));
if (stats.unexpected.length) line("unexpected errors", stats.unexpected.length, mark(false));

const widths = [10, 8, 8, 8, 10, 10, 10, 10, 0];
const row = (cells: string[]) =>
  console.log(("  " + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" ")).trimEnd());
console.log("");
row(["account", "requests", "declined", "charges", "201s", "charged", "start", "final", ""]);
for (const r of balanceRows) {
  row([r.id, String(r.requests), String(r.declined), String(r.count), r.requested.toFixed(2), r.charged.toFixed(2), r.start.toFixed(2), r.final.toFixed(2), ` ${mark(r.ok)}`]);
}
const sum = (pick: (r: (typeof balanceRows)[number]) => Prisma.Decimal) =>
  balanceRows.reduce((s, r) => s.plus(pick(r)), new Prisma.Decimal(0)).toFixed(2);
row(["total", String(REQUESTS), String(declined.length), String(dbCharges.length), sum((r) => r.requested), sum((r) => r.charged), sum((r) => r.start), sum((r) => r.final), ""]);
console.log("  (201s: the amounts the clients were told were charged; charges, charged, final: read from the database;");
console.log("   ✓: one charge per 201, charged = 201s, start - charged = final, final not below zero)");

const failed = checks.filter(([, ok]) => !ok);
console.log("\nChecks:");
for (const [name, ok] of checks) console.log(`  ${mark(ok)} ${name}`);
console.log("");
if (failed.length === 0) console.log(`All ${checks.length} checks passed: exactly one charge per idempotency key, none for a declined one.`);
else {
  console.log(`${failed.length} of ${checks.length} checks FAILED.`);
  for (const error of stats.unexpected.slice(0, 3)) console.error(error);
}

server.closeAllConnections();
await new Promise<void>((resolve) => server.close(() => resolve()));
await database.close();
// After close(): PGlite's Emscripten runtime sets process.exitCode to 0 when it exits.
process.exitCode = failed.length === 0 ? 0 : 1;
