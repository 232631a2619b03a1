/**
 * The README's path, on the packed tarball, in a fresh folder: what a new user does, step by
 * step, with the samples extracted from README.md (not copied), so that the README cannot drift
 * from what works. Part of `npm run check:package`.
 *
 *   1. npm install the tarball with Prisma 7, @prisma/adapter-pg, pg, express, amqplib, dotenv;
 *   2. `prisma init` (the real one, Prisma 7.10: one schema file named by its config file), plus
 *      the user's own models (Account, Charge: this repository's prisma/app.prisma);
 *   3. `npx txonce init`, then `prisma generate`: the client must have txonce's models;
 *   4. the tables: `prisma migrate dev` cannot get its schema engine here, so the shipped
 *      migration SQL (the SQL `prisma migrate` makes for these models; `npm run migrations`
 *      checks that) is applied with pg, as the README's "another way" says;
 *   5. the README's "Use it" charge, its Express app, "Without Prisma" and the outbox sample
 *      (relay to the RabbitMQ service, when it answers) run as written;
 *   6. `txonce cleanup` as cron runs it: a bare environment, DATABASE_URL from .env, Prisma's
 *      `?schema=` picking the schema; and `txonce --version`.
 */
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import pg from "pg";
import { databaseUrl, startPostgres } from "../test/support/postgres-server.js";
import { samplesOf, type Sample } from "./samples.js";

export interface PathInput {
  readonly root: string;
  readonly tarball: string;
  /** An empty folder for the project. */
  readonly project: string;
  readonly check: (ok: boolean, what: string, detail?: string) => void;
  readonly run: (
    command: string,
    args: string[],
    cwd: string,
    env?: NodeJS.ProcessEnv,
    options?: { bare?: boolean },
  ) => { status: number | null; stdout: string; stderr: string };
}

const require = createRequire(import.meta.url);
/** The version this repository has installed (some packages do not export their package.json). */
const version = (root: string, name: string) =>
  (JSON.parse(readFileSync(join(root, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;

export async function checkReadmePath({ root, tarball, project, check, run }: PathInput): Promise<void> {
  const server = await startPostgres((line) => console.log(`  (${line})`));
  const name = `txonce_readme_path_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = databaseUrl(server.url, name);
  try {
    await walkThePath({ root, tarball, project, check, run }, url);
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
    await server.stop();
  }
}

async function walkThePath({ root, tarball, project, check, run }: PathInput, url: string): Promise<void> {
  const prismaEnv = { PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, CHECKPOINT_DISABLE: "1", PRISMA_HIDE_UPDATE_MESSAGE: "1" };
  const shell = (what: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
    const result = run(command, args, project, env);
    check(result.status === 0, what, `${result.stdout}${result.stderr}`);
    if (result.status !== 0) throw new Error(`${what} failed`);
    return result.stdout;
  };
  const bin = (name: string) => join(project, "node_modules", ".bin", name);

  // 1. Install, as the README's Install section and Prisma's getting-started say.
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "new-user", private: true, type: "module" }, null, 2));
  const packages = ["prisma", "@prisma/client", "@prisma/adapter-pg", "pg", "express", "amqplib", "dotenv"].map((p) => `${p}@${version(root, p)}`);
  shell(`npm install <tarball> ${packages.join(" ")}`, "npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", tarball, ...packages]);

  // 2. prisma init, then the user's own models.
  shell("npx prisma init --no-skills", bin("prisma"), ["init", "--no-skills"], prismaEnv);
  const schemaFile = join(project, "prisma", "schema.prisma");
  const appModels = readFileSync(join(root, "prisma", "app.prisma"), "utf8");
  writeFileSync(schemaFile, `${readFileSync(schemaFile, "utf8")}\n${appModels}`);
  writeFileSync(join(project, ".env"), `DATABASE_URL="${url}"\n`);

  // 3. txonce init, generate.
  const init = shell("npx txonce init", bin("txonce"), ["init"]);
  check(init.includes("added txonce's models to prisma/schema.prisma"), "  it appended the models to prisma/schema.prisma", init);
  check(init.includes("npx prisma migrate dev --name txonce"), "  it says what to run next", init);
  shell("npx prisma generate", bin("prisma"), ["generate"], prismaEnv);
  const models = readdirSync(join(project, "generated", "prisma", "models")).sort();
  check(
    models.includes("TxonceIdempotencyKey.ts") && models.includes("TxonceOutboxMessage.ts"),
    "  the generated client has txonce's models",
    models.join(", "),
  );

  // 4. The tables: the shipped migrations in order, then the user's own tables.
  const migrations = join(project, "node_modules", "txonce", "prisma", "migrations");
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    for (const folder of readdirSync(migrations).filter((f) => !f.endsWith(".toml")).sort()) {
      await db.query(readFileSync(join(migrations, folder, "migration.sql"), "utf8"));
    }
    await db.query(readFileSync(join(root, "examples", "demo", "app-tables.sql"), "utf8"));
    await db.query("INSERT INTO accounts (id, balance) VALUES ('acct_1', 100)");
    check(true, "applied node_modules/txonce/prisma/migrations/*/migration.sql (what prisma migrate dev would apply)");

    // 5. The README's samples, as written.
    runSamples({ root, project, check, run }, url);

    // 6. txonce cleanup from cron's point of view.
    await cleanupFromCron({ project, check, run }, url, db);
  } finally {
    await db.end();
  }
}

/** The README's blocks under `heading`, in order. */
function readmeSamples(root: string, heading: string): Sample[] {
  const samples = samplesOf(root, "README.md").filter((s) => s.heading === heading);
  if (samples.length === 0) throw new Error(`README.md has no TypeScript block under "## ${heading}" any more: update scripts/readme-path.ts`);
  return samples;
}

function runSamples({ root, project, check, run }: Omit<PathInput, "tarball">, url: string): void {
  const [useIt, expressApp] = readmeSamples(root, "Use it");
  const [withoutPrisma] = readmeSamples(root, "Without Prisma");
  const [outbox] = readmeSamples(root, "Publish events with the outbox");
  const files = { "use-it.ts": useIt, "express-app.ts": expressApp, "without-prisma.ts": withoutPrisma, "outbox.ts": outbox };
  for (const [file, sample] of Object.entries(files)) {
    if (!sample) throw new Error(`README.md lost the sample for ${file}: update scripts/readme-path.ts`);
    writeFileSync(join(project, file), `// ${sample.page}:${sample.line}\n${sample.code}\n`);
  }
  // What docs/reader.d.ts says the reader has, for real: the Prisma client of "Use it".
  writeFileSync(
    join(project, "reader.ts"),
    `import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "./generated/prisma/client.js";
(globalThis as { prisma?: unknown }).prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }) });
`,
  );
  writeFileSync(join(project, "drive.ts"), DRIVER);
  const rabbitmqUrl = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";
  const tsx = join(dirname(require.resolve("tsx/package.json")), "dist", "loader.mjs");
  const result = run(process.execPath, ["--import", tsx, "--import", "./reader.ts", "drive.ts"], project, {
    DATABASE_URL: url,
    RABBITMQ_URL: rabbitmqUrl,
  });
  const lines = result.stdout.trim().split("\n");
  let outcome: Record<string, [boolean, string]> = {};
  try {
    outcome = JSON.parse(lines.at(-1) ?? "{}") as Record<string, [boolean, string]>;
  } catch {
    // reported below
  }
  check(result.status === 0 && Object.keys(outcome).length > 0, "the README's samples ran (use-it.ts, express-app.ts, without-prisma.ts, outbox.ts)", `${result.stdout}${result.stderr}`);
  for (const [what, [ok, detail]] of Object.entries(outcome)) check(ok, `  ${what}`, detail);
}

/** Imports the samples and does with them what the README says they do. Prints one JSON line. */
const DRIVER = `
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import pg from "pg";

const results: Record<string, [boolean, string]> = {};
const expect = (what: string, ok: boolean, detail: unknown = "") => (results[what] = [ok, typeof detail === "string" ? detail : JSON.stringify(detail)]);
const db = new pg.Pool({ connectionString: process.env.DATABASE_URL });
const count = async (sql: string, params: unknown[] = []) => Number((await db.query(sql, params)).rows[0].n);

try {
  const useIt = await import("./use-it.ts");
  const a = await useIt.charge("key-use-it", "acct_1", 5);
  const b = await useIt.charge("key-use-it", "acct_1", 5);
  expect("Use it: charge() twice with one key: one charge, the same one returned", a.id === b.id && (await count("SELECT count(*) AS n FROM charges")) === 1, { a, b });
  expect("Use it: the balance was debited once", (await db.query("SELECT balance::text FROM accounts")).rows[0].balance === "95.00");
  const reused = await useIt.charge("key-use-it", "acct_1", 6).then(() => "no error", (e: Error) => e.name);
  expect("Use it: the same key with another amount is IdempotencyKeyReusedError", reused === "IdempotencyKeyReusedError", reused);

  const withoutPrisma = await import("./without-prisma.ts");
  const c = await withoutPrisma.charge("key-pg", "acct_1", 3);
  const d = await withoutPrisma.charge("key-pg", "acct_1", 3);
  expect("Without Prisma: charge() twice: one row, returned both times", c.id === d.id && c.amount === "3.00" && (await count("SELECT count(*) AS n FROM charges")) === 2, { c, d });

  const { app } = await import("./express-app.ts");
  const server = app.listen(0, "127.0.0.1");
  await once(server, "listening");
  const base = "http://127.0.0.1:" + (server.address() as AddressInfo).port;
  const post = (headers: Record<string, string>) =>
    fetch(base + "/charges", { method: "POST", headers: { "content-type": "application/json", authorization: "acct_1", ...headers }, body: JSON.stringify({ accountId: "acct_1", amount: "2.50" }) });
  const first = await post({ "idempotency-key": '"key-http"' });
  const firstBody = await first.text();
  const second = await post({ "idempotency-key": '"key-http"' });
  const secondBody = await second.text();
  expect("Express: 201, then the same 201 replayed with Idempotent-Replayed: true", first.status === 201 && second.status === 201 && second.headers.get("idempotent-replayed") === "true" && firstBody === secondBody, { first: first.status, second: second.status, firstBody });
  const missing = await post({});
  expect("Express: no Idempotency-Key is a 400 problem", missing.status === 400 && missing.headers.get("content-type") === "application/problem+json", missing.status);
  server.close();

  let amqplib: typeof import("amqplib") | undefined;
  let connection: import("amqplib").ChannelModel | undefined;
  try {
    amqplib = await import("amqplib");
    connection = await amqplib.connect(process.env.RABBITMQ_URL!);
  } catch {
    if (process.env.TXONCE_REQUIRE_BROKERS) expect("outbox: RabbitMQ answers", false, process.env.RABBITMQ_URL);
    else expect("outbox: SKIPPED, RabbitMQ did not answer at " + process.env.RABBITMQ_URL + " (TXONCE_REQUIRE_BROKERS=1 makes this a failure)", true);
  }
  if (connection) {
    const channel = await connection.createChannel();
    const { queue } = await channel.assertQueue("", { exclusive: true });
    await channel.bindQueue(queue, "amq.topic", "charges.created");
    const received: import("amqplib").ConsumeMessage[] = [];
    await channel.consume(queue, (m) => m && received.push(m), { noAck: true });
    const outbox = await import("./outbox.ts");
    const charge = await outbox.charge("key-outbox", "acct_1", 1);
    for (let i = 0; i < 100 && received.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    await outbox.relay.stop();
    const message = received[0];
    expect("outbox: the relay published the charge to amq.topic, routing key charges.created", received.length === 1 && message!.fields.routingKey === "charges.created" && message!.properties.headers?.["txonce-key"] === "acct_1", { received: received.length, charge });
    await connection.close();
  }
} catch (error) {
  expect("the samples ran without throwing", false, String((error as Error).stack ?? error));
} finally {
  await db.end();
}
console.log(JSON.stringify(results));
process.exit(0);
`;

async function cleanupFromCron({ project, check, run }: Omit<PathInput, "tarball" | "root">, url: string, db: pg.Client): Promise<void> {
  // Tables in schema "app" too, as `prisma migrate` makes them for a URL with ?schema=app.
  await db.query("CREATE SCHEMA app");
  await db.query("SET search_path TO app");
  const migrations = join(project, "node_modules", "txonce", "prisma", "migrations");
  for (const folder of readdirSync(migrations).filter((f) => !f.endsWith(".toml")).sort()) {
    await db.query(readFileSync(join(migrations, folder, "migration.sql"), "utf8"));
  }
  const seed = (schema: string, n: number) =>
    db.query(`INSERT INTO ${schema}.txonce_idempotency_keys (key, expires_at) SELECT 'old-' || i, now() - interval '1 day' FROM generate_series(1, ${n}) i`);
  await seed("app", 3);
  await seed("public", 5);
  await db.query("RESET search_path");

  const cron = (env: NodeJS.ProcessEnv = {}) =>
    // A bare environment, as cron gives: PATH (for `#!/usr/bin/env node`) and nothing else.
    run(join(project, "node_modules", ".bin", "txonce"), ["cleanup"], project, env, { bare: true });
  const schemaUrl = new URL(url);
  schemaUrl.searchParams.set("schema", "app");
  writeFileSync(join(project, ".env"), `DATABASE_URL="${schemaUrl}"\n`);
  const inApp = cron();
  check(inApp.status === 0 && /deleted 3 expired rows in 1 batch/.test(inApp.stdout), "cron: txonce cleanup, DATABASE_URL from .env with ?schema=app: deleted the 3 rows of schema app", inApp.stdout + inApp.stderr);
  writeFileSync(join(project, ".env"), `DATABASE_URL="${url}"\n`);
  const inPublic = cron();
  check(inPublic.status === 0 && /deleted 5 expired rows in 1 batch/.test(inPublic.stdout), "cron: without ?schema=, the 5 rows of schema public", inPublic.stdout + inPublic.stderr);
  const versionOut = run(join(project, "node_modules", ".bin", "txonce"), ["--version"], project, {}, { bare: true });
  const expected = (JSON.parse(readFileSync(join(project, "node_modules", "txonce", "package.json"), "utf8")) as { version: string }).version;
  check(versionOut.stdout.trim() === expected, `npx txonce --version prints ${expected}`, versionOut.stdout + versionOut.stderr);
}
