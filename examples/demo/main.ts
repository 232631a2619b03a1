/**
 * `npm run demo`: a burst of retried payment requests over an unreliable network, ending in
 * exactly one charge per idempotency key.
 *
 * It runs on PGlite (PostgreSQL compiled to WebAssembly, in memory) through pglite-prisma-adapter
 * with this repository's generated Prisma 7 client: no server to install or start. The tables
 * come from txonce's shipped DDL (`schemaSql`) and from app-tables.sql, which
 * `npm run migrations -- --write` generates from prisma/app.prisma.
 *
 * The network is simulated in-process. Each attempt of a request may
 *   - fail before the commit: the operation throws after its writes, its transaction (key
 *     included) rolls back, the client gets an error and retries, and the retry runs afresh;
 *   - lose the response after the commit: the client times out and retries the same key, which
 *     replays the stored result;
 *   - be delivered twice at once: two copies of the request run concurrently, one charges and the
 *     other waits for it and replays its result;
 * and clients retry with backoff until they get an answer. At the end the database is checked:
 * one charge per request, none twice, balances that add up. The exit code is 1 if a check fails.
 *
 * PGlite has a single connection, and pglite-prisma-adapter runs Prisma's interactive
 * transactions one at a time (a transaction waits for the previous one to end; so does a query
 * outside a transaction). So the second copy of a duplicated request does not wait on the key's
 * row lock as it would on a PostgreSQL server: it waits to begin, then finds the key taken and
 * replays. It also means an operation must only use `tx`: a query on `prisma` inside it would wait
 * for its own transaction forever.
 *
 * DEMO_SEED=<n> picks other requests and faults (default 1).
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Prisma } from "../../generated/prisma/client.js";
import { txonce } from "../../src/adapters/prisma.js";
import { startEmbeddedDatabase } from "./pglite.js";
import { seededRandom } from "./random.js";

const ACCOUNTS: readonly (readonly [id: string, balance: string])[] = [
  ["acct_ada", "5000.00"],
  ["acct_bob", "3000.00"],
  ["acct_cy", "4000.00"],
  ["acct_dee", "2500.00"],
  ["acct_eve", "6000.00"],
];
const REQUESTS = 200;
/** Clients with a request in flight at any moment. */
const CLIENTS = 20;
/** Per attempt: the server fails before the commit / the response is lost / the request arrives twice. */
const P_FAIL = 0.15;
const P_LOSE = 0.2;
const P_DUPLICATE = 0.1;
/** A client gives up after this many attempts (it never should). */
const MAX_ATTEMPTS = 30;
const SEED = Number(process.env.DEMO_SEED ?? 1);

type ChargeRequest = { key: string; body: { accountId: string; amount: string } };
type ChargeResult = { chargeId: number; accountId: string; amount: Prisma.Decimal; balanceAfter: Prisma.Decimal };
type Served = { value: ChargeResult; replayed: boolean };

/** The server crashed after its writes, before the commit. */
class InjectedFailure extends Error {
  override name = "InjectedFailure";
}
/** The server answered, the answer never arrived: the client saw a timeout. */
class ResponseLost extends Error {
  override name = "ResponseLost";
}

const random = seededRandom(SEED);

const stats = {
  attempts: 0,
  lost: 0,
  injected: 0,
  duplicates: 0,
  /** Duplicated deliveries where both copies ran the operation: must stay 0. */
  duplicatesBothRan: 0,
  replays: 0,
  /** Operations that ran and committed. */
  committed: 0,
  unexpected: [] as unknown[],
};
/** Every charge id the server answered for each key, fresh or replayed. */
const answeredByKey = new Map<string, Set<number>>();

let started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(1)}s`;

// --- The database: PGlite in memory, tables from the shipped DDL and the generated app DDL. ---

const database = await startEmbeddedDatabase();
const { prisma } = database;
// On one connection, transactions queue behind each other: allow a long wait to begin one.
const { withIdempotencyOutcome } = txonce(prisma, { transaction: { maxWait: 30_000 } });
await prisma.account.createMany({ data: ACCOUNTS.map(([id, balance]) => ({ id, balance })) });
console.log(`PGlite (PostgreSQL in WebAssembly, in memory) started in ${elapsed()}; tables from schemaSql + app-tables.sql`);

// --- The server: one endpoint that charges an account, idempotently. ---

async function serveCharge({ key, body }: ChargeRequest, failBeforeCommit: boolean): Promise<Served> {
  const outcome = await withIdempotencyOutcome(
    key,
    async (tx): Promise<ChargeResult> => {
      const account = await tx.account.update({
        where: { id: body.accountId },
        data: { balance: { decrement: body.amount } },
      });
      const charge = await tx.charge.create({ data: { accountId: body.accountId, amount: body.amount } });
      if (failBeforeCommit) {
        stats.injected++;
        throw new InjectedFailure("server crashed before the commit");
      }
      return { chargeId: charge.id, accountId: charge.accountId, amount: charge.amount, balanceAfter: account.balance };
    },
    { scope: body.accountId, fingerprint: body },
  );
  if (outcome.replayed) stats.replays++;
  else stats.committed++;
  const answered = answeredByKey.get(key) ?? new Set<number>();
  answered.add(outcome.value.chargeId);
  answeredByKey.set(key, answered);
  return { value: outcome.value, replayed: outcome.replayed };
}

// --- The network between client and server, and a client that retries. ---

async function sendOverNetwork(request: ChargeRequest): Promise<ChargeResult> {
  stats.attempts++;
  const fate = random();
  await sleep(random() * 3);
  if (fate < P_DUPLICATE) {
    stats.duplicates++;
    const copies = await Promise.allSettled([serveCharge(request, false), serveCharge(request, false)]);
    const served = copies.flatMap((c) => (c.status === "fulfilled" ? [c.value] : []));
    if (served.filter((s) => !s.replayed).length > 1) stats.duplicatesBothRan++;
    const first = served[0];
    if (first) return first.value;
    throw (copies[0] as PromiseRejectedResult).reason;
  }
  if (fate < P_DUPLICATE + P_FAIL) return (await serveCharge(request, true)).value; // throws unless already done
  if (fate < P_DUPLICATE + P_FAIL + P_LOSE) {
    await serveCharge(request, false);
    stats.lost++;
    throw new ResponseLost("timed out waiting for the response");
  }
  return (await serveCharge(request, false)).value;
}

async function clientCharge(request: ChargeRequest): Promise<ChargeResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await sendOverNetwork(request);
    } catch (error) {
      if (!(error instanceof InjectedFailure || error instanceof ResponseLost)) stats.unexpected.push(error);
      if (attempt >= MAX_ATTEMPTS) throw new Error(`no answer after ${attempt} attempts`, { cause: error });
      await sleep(Math.min(2 ** attempt, 40) * (0.5 + random())); // exponential backoff with jitter
    }
  }
}

// --- The burst. ---

const requests: ChargeRequest[] = Array.from({ length: REQUESTS }, () => ({
  key: randomUUID(),
  body: {
    accountId: ACCOUNTS[Math.floor(random() * ACCOUNTS.length)]![0],
    amount: (1 + Math.floor(random() * 9900) / 100).toFixed(2),
  },
}));
console.log(
  `${REQUESTS} charge requests, ${CLIENTS} clients at a time; per attempt: ${P_FAIL * 100}% fail before the commit, ` +
    `${P_LOSE * 100}% lose the response, ${P_DUPLICATE * 100}% arrive twice (seed ${SEED})`,
);
started = performance.now();

const answers = new Map<string, ChargeResult>();
const gaveUp: string[] = [];
let next = 0;
await Promise.all(
  Array.from({ length: CLIENTS }, async () => {
    for (let request = requests[next++]; request; request = requests[next++]) {
      try {
        answers.set(request.key, await clientCharge(request));
      } catch {
        gaveUp.push(request.key);
      }
      const done = answers.size + gaveUp.length;
      if (done % (REQUESTS / 4) === 0) console.log(`  ${String(done).padStart(3)}/${REQUESTS} answered (${elapsed()})`);
    }
  }),
);

// --- Check every invariant against the database. ---

const dbCharges = await prisma.charge.findMany({ select: { id: true, accountId: true, amount: true } });
const dbAccounts = await prisma.account.findMany();
const keyRows = await prisma.txonceIdempotencyKey.count({ where: { result: { not: null } } });

const answeredIds = new Set([...answers.values()].map((a) => a.chargeId));
const wrongAnswers = requests.filter((r) => {
  const a = answers.get(r.key);
  return a && (a.accountId !== r.body.accountId || !a.amount.equals(r.body.amount));
}).length;
const inconsistentKeys = [...answeredByKey.values()].filter((ids) => ids.size > 1).length;
// A charge that is no request's answer is an extra effect: a request charged twice.
const duplicateCharges = dbCharges.filter((c) => !answeredIds.has(c.id)).length;

const checks: [string, boolean][] = [];
const check = (name: string, ok: boolean) => checks.push([name, ok]);
check("every request got an answer", gaveUp.length === 0 && answers.size === REQUESTS);
check("no errors besides the injected ones", stats.unexpected.length === 0);
check("operations committed = requests", stats.committed === REQUESTS);
check("charges in the database = requests", dbCharges.length === REQUESTS);
check("no duplicate charges", duplicateCharges === 0 && stats.duplicatesBothRan === 0);
check("each request got its own charge, with its account and amount", answeredIds.size === REQUESTS && wrongAnswers === 0);
check("every replay returned the original charge", inconsistentKeys === 0);
check("one idempotency key row per request", keyRows === REQUESTS);

const requestsByAccount = new Map<string, number>();
for (const r of requests) requestsByAccount.set(r.body.accountId, (requestsByAccount.get(r.body.accountId) ?? 0) + 1);
const balanceRows = ACCOUNTS.map(([id, startText]) => {
  const start = new Prisma.Decimal(startText);
  const charges = dbCharges.filter((c) => c.accountId === id);
  const charged = charges.reduce((sum, c) => sum.plus(c.amount), new Prisma.Decimal(0));
  const requested = requests
    .filter((r) => r.body.accountId === id)
    .reduce((sum, r) => sum.plus(r.body.amount), new Prisma.Decimal(0));
  const final = dbAccounts.find((a) => a.id === id)?.balance ?? new Prisma.Decimal(NaN);
  const requestCount = requestsByAccount.get(id) ?? 0;
  const ok = charges.length === requestCount && charged.equals(requested) && start.minus(charged).equals(final);
  return { id, start, requests: requestCount, count: charges.length, requested, charged, final, ok };
});
check("per account: charges = requests, charged = requested, start - charged = final", balanceRows.every((r) => r.ok));

// --- Summary. ---

const mark = (ok: boolean) => (ok ? "✓" : "✗");
const line = (label: string, value: number, note = "") =>
  console.log(`  ${label.padEnd(26)}${String(value).padStart(5)}   ${note}`.trimEnd());
console.log(`\nAll answered in ${elapsed()}.\n`);
line("requests", REQUESTS);
line("attempts", stats.attempts, "sent by the clients: first tries and retries");
line("  responses lost", stats.lost, "committed, then the client timed out and retried the same key");
line("  failures injected", stats.injected, "thrown before the commit: rolled back, the retry ran afresh");
line("  concurrent duplicates", stats.duplicates, "delivered twice at once: one ran, the copy waited and replayed");
line("replays", stats.replays, "answered from the stored result without running the operation");
line("charges created", dbCharges.length, `${mark(dbCharges.length === REQUESTS)} = requests`);
line("duplicate charges", duplicateCharges, mark(duplicateCharges === 0));
if (stats.unexpected.length) line("unexpected errors", stats.unexpected.length, mark(false));

const cols = ["account", "requests", "charges", "requested", "charged", "start", "final", ""];
const widths = [10, 8, 8, 10, 10, 10, 10, 0];
const row = (cells: string[]) =>
  console.log(("  " + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" ")).trimEnd());
console.log("");
row(cols);
for (const r of balanceRows) {
  row([
    r.id, String(r.requests), String(r.count), r.requested.toFixed(2), r.charged.toFixed(2), r.start.toFixed(2),
    r.final.toFixed(2), ` ${mark(r.ok)}`,
  ]);
}
const sum = (pick: (r: (typeof balanceRows)[number]) => Prisma.Decimal) =>
  balanceRows.reduce((s, r) => s.plus(pick(r)), new Prisma.Decimal(0)).toFixed(2);
row([
  "total", String(REQUESTS), String(dbCharges.length), sum((r) => r.requested), sum((r) => r.charged),
  sum((r) => r.start), sum((r) => r.final), "",
]);
console.log("  (charges, charged, final: read from the database; ✓: charges = requests, charged = requested, start - charged = final)");

const failed = checks.filter(([, ok]) => !ok);
console.log("");
if (failed.length === 0) console.log(`All ${checks.length} checks passed: exactly one charge per idempotency key.`);
else {
  for (const [name] of failed) console.log(`FAILED: ${name}`);
  for (const error of stats.unexpected.slice(0, 3)) console.error(error);
}

await database.close();
// After close(): PGlite's Emscripten runtime sets process.exitCode to 0 when it exits.
process.exitCode = failed.length === 0 ? 0 : 1;
