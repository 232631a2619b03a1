/**
 * `npm run check:package`: checks what users install, not the source tree. Builds, packs the
 * tarball, and checks
 *   - its contents: dist, the models and the migrations; nothing from test/, bench/, scripts/,
 *     generated/, examples/ or the dev schema;
 *   - package.json: a `types` condition (listed first) and a `.d.ts` for every `exports` subpath,
 *     optional peer dependencies, and that dist imports nothing at run time that is neither a
 *     dependency nor a peer (and `@prisma/client`, `kysely`, `drizzle-orm` only from their own
 *     adapters; `pg`, `knex`, `typeorm`, `postgres` from nowhere);
 *   - in a fresh project with the tarball installed (from the npm registry or cache only):
 *     `txonce` and `txonce/pg` load without any peer installed; with the peers, every subpath
 *     loads with `import` and with `require()` (Node >= 20.19), as the same module; `instanceof`
 *     on the error classes holds across `txonce`, `txonce/prisma` and `txonce/pg`; a TypeScript
 *     consumer (module nodenext, no decorator options) type-checks against the shipped
 *     declarations, the HTTP entry points included;
 *   - `attw --profile esm-only` (Are the types wrong?) on the tarball;
 *   - the README's path, as a new user walks it (scripts/readme-path.ts): install with Prisma 7,
 *     `prisma init`, `txonce init`, generate, the tables, the README's samples as written, and
 *     `txonce cleanup` from cron's point of view;
 *   - LICENSE in the tarball, `repository`, `homepage` and `bugs` set, and no link in the README
 *     that only works inside the repository (the npm page shows the README alone).
 * Leaves the temporary folder in place when a check fails, and prints where it is.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { checkReadmePath } from "./readme-path.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

interface PackageJson {
  name: string;
  version: string;
  exports: Record<string, string | Record<string, string>>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  devDependencies?: Record<string, string>;
  sideEffects?: boolean;
  repository?: unknown;
  homepage?: string;
  bugs?: unknown;
  bin?: string | Record<string, string>;
  engines?: Record<string, string>;
}

const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as PackageJson;
const failures: string[] = [];

function check(ok: boolean, what: string, detail?: string): void {
  if (ok) {
    console.log(`  ok    ${what}`);
  } else {
    console.log(`  FAIL  ${what}${detail ? `\n        ${detail.replaceAll("\n", "\n        ")}` : ""}`);
    failures.push(what);
  }
}

function section(title: string): void {
  console.log(`\n${title}`);
}

/** Runs a command; with `bare`, in an environment of PATH (this Node first) and `env` only, as cron gives. */
function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}, { bare = false } = {}) {
  const result = spawnSync(command, args, {
    cwd,
    encoding: "utf8",
    env: bare
      ? { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, ...env }
      : { ...process.env, NODE_NO_WARNINGS: "1", npm_config_update_notifier: "false", ...env },
  });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function runOrThrow(command: string, args: string[], cwd: string): string {
  const result = run(command, args, cwd);
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.status}):\n${result.stderr}${result.stdout}`);
  }
  return result.stdout;
}

/** Installed version of a package in this repository, for installing the same one as a peer. */
function localVersion(name: string): string {
  // Read from node_modules: some packages (reflect-metadata) do not export their package.json.
  return (JSON.parse(readFileSync(join(root, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
}

const subpaths = Object.keys(pkg.exports).filter((subpath) => !subpath.endsWith(".json"));
const specifierOf = (subpath: string) => (subpath === "." ? pkg.name : `${pkg.name}/${subpath.slice(2)}`);

const work = mkdtempSync(join(tmpdir(), "txonce-check-package-"));
try {
  section("tarball contents");
  // From no dist/, as on a fresh clone: npm pack (and npm publish) build it, by the prepack script.
  rmSync(join(root, "dist"), { recursive: true, force: true });
  const packed = JSON.parse(runOrThrow("npm", ["pack", "--json", "--pack-destination", work], root)) as {
    filename: string;
    files: { path: string }[];
  }[];
  const tarball = join(work, packed[0]!.filename);
  const files = packed[0]!.files.map((file) => file.path);
  console.log(`  ${tarball}: ${files.length} files`);
  const has = (path: string) => files.includes(path);
  check(has("dist/index.js") && has("dist/cli/main.js"), "npm pack built dist/ (prepack) and packed it, the CLI included");

  check(has("prisma/txonce.prisma"), "prisma/txonce.prisma is in the tarball");
  const migrations = readdirSync(join(root, "prisma", "migrations"), { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => `prisma/migrations/${entry.name}/migration.sql`);
  check(migrations.length > 0, "the repository has migrations");
  for (const migration of migrations) check(has(migration), `${migration} is in the tarball`);
  const forbidden = /^(test|bench|scripts|generated|examples|docs|src|coverage|node_modules)\/|^prisma\/(schema|app)\.prisma$|\.tsbuildinfo$|(^|\/)\.env/;
  const strays = files.filter((file) => forbidden.test(file) || (/\.[cm]?ts$/.test(file) && !/\.d\.[cm]?ts$/.test(file)));
  check(strays.length === 0, "nothing from src/, test/, bench/, scripts/, generated/, examples/, docs/ or the dev schema", strays.join("\n"));
  const errorClasses = files.filter(
    (file) => file.endsWith(".js") && /class TxonceError\b/.test(readFileSync(join(root, file), "utf8")),
  );
  check(errorClasses.length === 1, "one implementation of the error classes in dist (one copy of stateful code)", errorClasses.join(", "));
  const brokenMaps = files
    .filter((file) => file.endsWith(".map"))
    .flatMap((file) =>
      (JSON.parse(readFileSync(join(root, file), "utf8")) as { sources: string[] }).sources
        .map((source) => join(dirname(file), source))
        .filter((source) => !has(source)),
    );
  if (brokenMaps.length > 0) {
    console.log(`  note  ${new Set(brokenMaps).size} source files named by shipped .map files are not shipped (e.g. ${brokenMaps[0]})`);
  }

  section("package.json");
  for (const subpath of Object.keys(pkg.exports)) {
    const target = pkg.exports[subpath]!;
    if (typeof target === "string") {
      check(has(target.replace(/^\.\//, "")), `exports["${subpath}"] -> ${target} is in the tarball`);
      continue;
    }
    const conditions = Object.keys(target);
    check(conditions[0] === "types", `exports["${subpath}"] lists the "types" condition first`, conditions.join(", "));
    for (const [condition, path] of Object.entries(target)) {
      check(has(path.replace(/^\.\//, "")), `exports["${subpath}"].${condition} -> ${path} is in the tarball`);
    }
    const types = target.types ?? "";
    check(/\.d\.[cm]?ts$/.test(types), `exports["${subpath}"] has a .d.ts`, types);
  }
  const bins = typeof pkg.bin === "string" ? { [pkg.name]: pkg.bin } : (pkg.bin ?? {});
  for (const [name, path] of Object.entries(bins)) {
    check(has(path.replace(/^\.\//, "")), `bin "${name}" -> ${path} is in the tarball`);
  }
  check(pkg.sideEffects === false, "sideEffects: false");
  check(Boolean(pkg.engines?.node), `engines.node is set (${pkg.engines?.node})`);
  check(has("LICENSE"), "LICENSE is in the tarball");
  for (const field of ["repository", "homepage", "bugs"] as const) check(Boolean(pkg[field]), `${field} is set`);
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const relativeLinks = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((href) => !/^(https?:|mailto:|#)/.test(href));
  check(relativeLinks.length === 0, "README links are absolute (they work on the npm page)", relativeLinks.join("\n"));
  for (const peer of ["@prisma/client", "pg"]) {
    check(Boolean(pkg.peerDependencies?.[peer]), `${peer} is a peer dependency (${pkg.peerDependencies?.[peer]})`);
    check(pkg.peerDependenciesMeta?.[peer]?.optional === true, `${peer} is an optional peer`);
  }
  // Bare specifiers that dist imports: statically (`import ... from "x"`) or on demand (`import("x")`).
  const runtimeImports = new Map<string, Set<string>>();
  const staticImports = new Map<string, Set<string>>();
  for (const file of files.filter((file) => file.endsWith(".js"))) {
    const text = readFileSync(join(root, file), "utf8");
    for (const match of text.matchAll(/(\bfrom\s*|\bimport\s*\(\s*|\bimport\s*|\brequire\s*\(\s*)["']([^"'./][^"']*)["']/g)) {
      const specifier = match[2]!;
      if (specifier.startsWith("node:")) continue;
      const name = specifier.startsWith("@") ? specifier.split("/").slice(0, 2).join("/") : specifier.split("/")[0]!;
      runtimeImports.set(name, (runtimeImports.get(name) ?? new Set()).add(file));
      if (!/\(/.test(match[1]!)) staticImports.set(name, (staticImports.get(name) ?? new Set()).add(file));
    }
  }
  for (const [name, importers] of runtimeImports) {
    const declared = Boolean(pkg.dependencies?.[name] ?? pkg.peerDependencies?.[name]);
    check(declared, `dist imports "${name}", a dependency or peer`, [...importers].join(", "));
  }
  const unused = Object.keys(pkg.dependencies ?? {}).filter((name) => !runtimeImports.has(name));
  if (unused.length > 0) console.log(`  note  dependencies that dist never imports: ${unused.join(", ")}`);
  // Each adapter's library is imported at run time by that adapter alone, and only where it needs
  // one of its values; the others take structural types only.
  const ownImporters: Record<string, string[]> = {
    "@prisma/client": ["dist/adapters/prisma.js", "dist/adapters/prisma-extension.js", "dist/adapters/prisma-driver-adapter.js"],
    kysely: ["dist/adapters/kysely.js"],
    "drizzle-orm": ["dist/adapters/drizzle.js"],
  };
  for (const [library, allowed] of Object.entries(ownImporters)) {
    const importers = [...(staticImports.get(library) ?? [])];
    check(importers.every((file) => allowed.includes(file)), `only ${allowed.join(" and ")} import ${library} statically`, importers.join(", "));
  }
  for (const library of ["pg", "knex", "typeorm", "postgres"]) {
    check(!staticImports.has(library), `nothing imports ${library} statically (structural types only)`, [...(staticImports.get(library) ?? [])].join(", "));
  }

  section("install in a fresh project");
  const project = join(work, "consumer");
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2));
  const npmInstall = ["install", "--no-audit", "--no-fund", "--prefer-offline", "--no-package-lock"];
  runOrThrow("npm", [...npmInstall, tarball], project);
  check(existsSync(join(project, "node_modules", pkg.name, "package.json")), `npm install ${relative(work, tarball)}`);

  const node = (script: string, kind: "esm" | "cjs") =>
    run(process.execPath, kind === "esm" ? ["--input-type=module", "-e", script] : ["--input-type=commonjs", "-e", script], project);

  // Without peers: the core and the pg adapter must not need @prisma/client or pg (nor express or koa,
  // whose types only txonce/express and txonce/koa use); txonce/fastify needs fastify-plugin,
  // txonce/nestjs @nestjs/common, @nestjs/core and rxjs, txonce/hono hono, like txonce/prisma @prisma/client.
  // txonce/kysely and txonce/drizzle import Kysely's CompiledQuery and Drizzle's sql.
  const needPeers = new Set(["./prisma", "./kysely", "./drizzle", "./fastify", "./nestjs", "./hono"]);
  for (const subpath of subpaths.filter((subpath) => !needPeers.has(subpath))) {
    const result = node(`await import(${JSON.stringify(specifierOf(subpath))})`, "esm");
    check(result.status === 0, `${specifierOf(subpath)} loads with no peer dependency installed`, result.stderr);
  }

  // The peers, plus the types a TypeScript user of them has, at the versions this repository uses.
  const peers = [
    "@prisma/client",
    "pg",
    "@types/pg",
    "@types/node",
    "express",
    "fastify",
    "fastify-plugin",
    "@nestjs/common",
    "@nestjs/core",
    "reflect-metadata",
    "rxjs",
    "hono",
    "koa",
    "@types/koa",
    "kysely",
    "drizzle-orm",
    "knex",
    "typeorm",
    "postgres",
  ].map((name) => `${name}@${localVersion(name)}`);
  runOrThrow("npm", [...npmInstall, tarball, ...peers], project);
  check(true, `npm install ${peers.join(" ")} (the versions this repository tests with)`);

  for (const subpath of Object.keys(pkg.exports)) {
    const specifier = specifierOf(subpath);
    const isJson = subpath.endsWith(".json");
    const esm = node(
      isJson
        ? `const m = await import(${JSON.stringify(specifier)}, { with: { type: "json" } }); console.log(JSON.stringify(Object.keys(m.default)));`
        : `const m = await import(${JSON.stringify(specifier)}); console.log(JSON.stringify(Object.keys(m).filter((k) => k !== "default").sort()));`,
      "esm",
    );
    check(esm.status === 0, `import ${JSON.stringify(specifier)} (Node ESM)`, esm.stderr);
    const cjs = node(
      isJson
        ? `console.log(JSON.stringify(Object.keys(require(${JSON.stringify(specifier)}))));`
        : `const m = require(${JSON.stringify(specifier)}); console.log(JSON.stringify(Object.keys(m).filter((k) => k !== "default" && k !== "__esModule").sort()));`,
      "cjs",
    );
    check(cjs.status === 0, `require(${JSON.stringify(specifier)}) (require(esm))`, cjs.stderr);
    if (esm.status === 0 && cjs.status === 0) {
      const names = JSON.parse(esm.stdout) as string[];
      check(names.length > 0 && esm.stdout === cjs.stdout, `  same exports both ways: ${names.join(", ")}`, `require: ${cjs.stdout}`);
    }
    if (!isJson) {
      const dts = join(project, "node_modules", pkg.name, (pkg.exports[subpath] as Record<string, string>).types!);
      check(existsSync(dts), `  ${relative(project, dts)} exists`);
    }
  }

  const identity = node(
    `
    import { createRequire } from "node:module";
    import * as core from "txonce";
    import * as prisma from "txonce/prisma";
    import * as pg from "txonce/pg";
    const require = createRequire(import.meta.url);
    const results = {};
    const thrown = (f) => { try { f(); } catch (error) { return error; } throw new Error("did not throw"); };
    const fakePrisma = { $queryRawUnsafe: async () => [], $transaction: async (fn) => fn({}), $connect: async () => {} };
    const fakePool = { query: async () => ({ rows: [] }), connect: async () => ({ query: async () => ({ rows: [] }), release() {} }) };
    const fromPrisma = thrown(() => prisma.txonce(fakePrisma, { retention: "soon" }));
    const fromPg = thrown(() => pg.txonce(fakePool, { maxKeyLength: 0 }));
    const fromCore = thrown(() => core.createIdempotency({}, { maxKeyLength: -1 }));
    for (const [name, error] of Object.entries({ fromPrisma, fromPg, fromCore })) {
      results[name + " instanceof InvalidArgumentError"] = error instanceof core.InvalidArgumentError;
      results[name + " instanceof TxonceError"] = error instanceof core.TxonceError;
      results[name + " has code " + error.code] = typeof error.code === "string" && error.code.startsWith("TXONCE_");
    }
    results["require('txonce') is import('txonce')"] = require("txonce").TxonceError === core.TxonceError;
    results["require('txonce/prisma') is import('txonce/prisma')"] = require("txonce/prisma").txonce === prisma.txonce;
    console.log(JSON.stringify(results));
    `,
    "esm",
  );
  check(identity.status === 0, "error classes across subpaths (script ran)", identity.stderr);
  if (identity.status === 0) {
    for (const [what, ok] of Object.entries(JSON.parse(identity.stdout) as Record<string, boolean>)) check(ok, what);
  }

  section("TypeScript consumer (module nodenext, the shipped .d.ts)");
  writeFileSync(
    join(project, "consumer.mts"),
    `
import pg from "pg";
import { TxonceError, createIdempotency, type IdempotencyOutcome } from "txonce";
import { txonce as txoncePg } from "txonce/pg";
import { txonce as txoncePrisma, type PrismaClientLike } from "txonce/prisma";

declare const prismaClient: PrismaClientLike;
const pool = new pg.Pool();
const { withIdempotency } = txoncePg(pool);
const id: Promise<number> = withIdempotency("key", async (client: pg.PoolClient) => {
  const { rows } = await client.query<{ id: number }>("SELECT 1 AS id");
  return rows[0]!.id;
});
const outcome: Promise<IdempotencyOutcome<string>> = txoncePrisma(prismaClient).withIdempotencyOutcome("key", async () => "ok");
const isTxonceError = (error: unknown): error is TxonceError => error instanceof TxonceError;

// The HTTP entry points of NestJS, Hono and Koa, in a build without experimentalDecorators or
// emitDecoratorMetadata: txonce's own declarations need neither.
import { idempotency as honoIdempotency } from "txonce/hono";
import { idempotency as koaIdempotency } from "txonce/koa";
import { Idempotent, TxonceModule, TxonceTransaction } from "txonce/nestjs";
const honoRoute = honoIdempotency(txoncePg(pool))();
const koaRoute = koaIdempotency(txoncePg(pool))();
const nestModule = TxonceModule.forRoot({ txonce: txoncePg(pool), scope: (req) => req.headers["x-account"] });
const idempotent: MethodDecorator = Idempotent({ lockTimeout: "1s" });
const client: pg.PoolClient | undefined = new TxonceTransaction<pg.PoolClient>().optionalTx;

// The other adapters: the operation gets each library's own transaction type.
import { Kysely, PostgresDialect, type Transaction } from "kysely";
import { drizzle } from "drizzle-orm/node-postgres";
import knexFactory, { type Knex } from "knex";
import { DataSource, type EntityManager } from "typeorm";
import postgres from "postgres";
import { txonce as txonceKysely } from "txonce/kysely";
import { txonce as txonceDrizzle } from "txonce/drizzle";
import { txonce as txonceKnex } from "txonce/knex";
import { txonce as txonceTypeorm } from "txonce/typeorm";
import { txonce as txoncePostgres } from "txonce/postgres";
import { txonceExtension } from "txonce/prisma";
interface Db { charges: { id: number } }
const kysely = new Kysely<Db>({ dialect: new PostgresDialect({ pool }) });
const fromKysely: Promise<number> = txonceKysely(kysely).withIdempotency("key", async (trx: Transaction<Db>) => 1);
const fromDrizzle: Promise<number> = txonceDrizzle(drizzle({ client: pool })).withIdempotency("key", async (tx) => (typeof tx.rollback === "function" ? 1 : 0));
const fromKnex: Promise<number> = txonceKnex(knexFactory({ client: "pg" })).withIdempotency("key", async (trx: Knex.Transaction) => 1);
const fromTypeorm: Promise<number> = txonceTypeorm(new DataSource({ type: "postgres" })).withIdempotency("key", async (manager: EntityManager) => 1);
const fromPostgres: Promise<number> = txoncePostgres(postgres()).withIdempotency("key", async (sql: postgres.TransactionSql) => 1);
const extension = txonceExtension({ retention: "48h" });
export { createIdempotency, id, outcome, isTxonceError, honoRoute, koaRoute, nestModule, idempotent, client };
export { fromKysely, fromDrizzle, fromKnex, fromTypeorm, fromPostgres, extension };
`,
  );
  const tsc = join(dirname(require.resolve("typescript/package.json")), "bin", "tsc");
  const typecheck = run(
    process.execPath,
    [
      tsc,
      "--noEmit",
      "--strict",
      "--module",
      "nodenext",
      "--moduleResolution",
      "nodenext",
      "--target",
      "es2023",
      "--skipLibCheck",
      "--types",
      "node",
      "consumer.mts",
    ],
    project,
  );
  check(typecheck.status === 0, "consumer.mts type-checks", typecheck.stdout + typecheck.stderr);

  section("attw (Are the types wrong?)");
  const attwPackage = require.resolve("@arethetypeswrong/cli/package.json");
  const attwBin = (JSON.parse(readFileSync(attwPackage, "utf8")) as { bin: Record<string, string> }).bin.attw!;
  const attw = run(process.execPath, [join(dirname(attwPackage), attwBin), tarball, "--profile", "esm-only"], work, { FORCE_COLOR: "0" });
  console.log(attw.stdout.replace(/^/gm, "  ").trimEnd());
  check(attw.status === 0, "attw --profile esm-only", attw.stderr);

  section("the README's path: a new user's steps on the tarball, its samples as written (scripts/readme-path.ts)");
  const newUser = join(work, "new-user");
  mkdirSync(newUser);
  await checkReadmePath({ root, tarball, project: newUser, check, run });
} catch (error) {
  failures.push(String(error));
  console.error(error);
}

if (failures.length > 0) {
  console.error(`\n${failures.length} check(s) failed; the packed tarball and consumer project are in ${work}`);
  process.exitCode = 1;
} else {
  rmSync(work, { recursive: true, force: true });
  console.log("\nall package checks passed");
}
