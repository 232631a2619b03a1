/**
 * `txonce init` on Prisma 7 projects as users have them: made by the real `prisma init` (one
 * schema file named by prisma7.config.ts), or with a schema folder; each time followed by the
 * real `prisma generate`, whose client must then have txonce's models.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, expect, test } from "vitest";

const root = join(import.meta.dirname, "..");
const prismaCli = join(dirname(createRequire(import.meta.url).resolve("prisma/package.json")), "build", "index.js");
const work = mkdtempSync(join(tmpdir(), "txonce-init-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const prismaEnv = {
  ...process.env,
  // Prisma 7 wants a schema engine binary at start-up that generate does not use (see scripts/prisma-generate.ts).
  PRISMA_SCHEMA_ENGINE_BINARY: process.execPath,
  CHECKPOINT_DISABLE: "1",
  PRISMA_HIDE_UPDATE_MESSAGE: "1",
};

/** A folder with package.json and this repository's node_modules (prisma 7, @prisma/config, dotenv). */
function project(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, private: true, type: "module" }));
  symlinkSync(join(root, "node_modules"), join(dir, "node_modules"), "dir");
  return dir;
}

function prisma(dir: string, args: string[]) {
  const r = spawnSync(process.execPath, [prismaCli, ...args], { cwd: dir, env: prismaEnv, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`prisma ${args.join(" ")} failed:\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

function txonceInit(dir: string, args: string[] = []) {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(root, "src", "cli", "main.ts"), "init", ...args], {
    cwd: dir,
    env: { ...process.env, DATABASE_URL: undefined },
    encoding: "utf8",
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The model files of the client that `prisma generate` wrote (the prisma-client generator's output). */
function generatedModels(dir: string): string[] {
  prisma(dir, ["generate"]);
  const models = join(dir, "generated", "prisma", "models");
  return existsSync(models) ? readdirSync(models).sort() : [];
}

const read = (path: string) => readFileSync(path, "utf8");

test("a project made by `prisma init` (one schema file, named in prisma7.config.ts): appended once, then generated", () => {
  const dir = project("from-prisma-init");
  prisma(dir, ["init", "--no-skills"]);
  const configFile = ["prisma7.config.ts", "prisma.config.ts"].find((name) => existsSync(join(dir, name)))!;
  expect(read(join(dir, configFile))).toMatch(/schema: "prisma\/schema.prisma"/);
  const schemaFile = join(dir, "prisma", "schema.prisma");
  const original = read(schemaFile);
  // What the old README said (copy the models beside the schema) gives a client without them.
  writeFileSync(join(dir, "prisma", "txonce.prisma"), read(join(root, "prisma", "txonce.prisma")));
  expect(generatedModels(dir)).toEqual([]);
  rmSync(join(dir, "prisma", "txonce.prisma"));

  const first = txonceInit(dir);
  expect(first.code, first.stderr).toBe(0);
  expect(first.stdout).toContain(`added txonce's models to prisma/schema.prisma`);
  expect(first.stdout).toContain(`(schema from ${configFile})`);
  expect(first.stdout).toContain("npx prisma migrate dev --name txonce");
  const added = read(schemaFile);
  expect(added.startsWith(original)).toBe(true);
  expect(added).toMatch(/\n\/\/ txonce:begin[^\n]*\n[\s\S]*model TxonceIdempotencyKey \{[\s\S]*model TxonceOutboxMessage \{[\s\S]*\/\/ txonce:end\n$/);

  const second = txonceInit(dir);
  expect(second.code, second.stderr).toBe(0);
  expect(second.stdout).toContain("up to date");
  expect(read(schemaFile)).toBe(added);

  expect(generatedModels(dir)).toEqual(["TxonceIdempotencyKey.ts", "TxonceOutboxMessage.ts"]);
});

test("a schema folder (prisma.config.ts names `prisma`): txonce.prisma in it, then generated", () => {
  const dir = project("folder");
  mkdirSync(join(dir, "prisma"));
  writeFileSync(join(dir, "prisma.config.ts"), `import { defineConfig } from "prisma/config";\nexport default defineConfig({ schema: "prisma" });\n`);
  writeFileSync(
    join(dir, "prisma", "schema.prisma"),
    `generator client {\n  provider = "prisma-client"\n  output   = "../generated/prisma"\n}\n\ndatasource db {\n  provider = "postgresql"\n}\n\nmodel Order {\n  id Int @id\n}\n`,
  );
  const first = txonceInit(dir);
  expect(first.code, first.stderr).toBe(0);
  expect(first.stdout).toContain("wrote prisma/txonce.prisma in your schema folder (schema from prisma.config.ts)");
  const written = read(join(dir, "prisma", "txonce.prisma"));
  expect(written).toMatch(/^\/\/ txonce's models, written by `npx txonce init`/);
  expect(written).toBe(read(join(dir, "prisma", "txonce.prisma")));

  const second = txonceInit(dir);
  expect(second.stdout).toContain("up to date");
  expect(read(join(dir, "prisma", "txonce.prisma"))).toBe(written);
  expect(generatedModels(dir)).toEqual(["Order.ts", "TxonceIdempotencyKey.ts", "TxonceOutboxMessage.ts"]);
});

test("an older block is replaced in place; the rest of the schema stays as it was", () => {
  const dir = project("update");
  prisma(dir, ["init", "--no-skills"]);
  const schemaFile = join(dir, "prisma", "schema.prisma");
  expect(txonceInit(dir).code).toBe(0);
  const current = read(schemaFile);
  const after = "\nmodel Customer {\n  id Int @id\n}\n";
  // An "older version": one field fewer, and a model of the user's after the block.
  writeFileSync(schemaFile, current.replace(/^\s*lastError[^\n]*\n/m, "") + after);
  const r = txonceInit(dir);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toContain("updated txonce's models in prisma/schema.prisma");
  expect(read(schemaFile)).toBe(current + after);
});

test("a multi-schema datasource: --db-schema adds @@schema to txonce's models, kept by a later run; without it, exit 1 and nothing written", () => {
  const dir = project("multi-schema");
  prisma(dir, ["init", "--no-skills"]);
  const schemaFile = join(dir, "prisma", "schema.prisma");
  writeFileSync(schemaFile, read(schemaFile).replace(/(datasource db \{\n[^}]*?provider\s*=\s*"postgresql"\n)/, '$1  schemas  = ["public", "app"]\n'));
  const original = read(schemaFile);
  expect(original).toContain('schemas  = ["public", "app"]');
  const refused = txonceInit(dir);
  expect(refused.code).toBe(1);
  expect(refused.stderr).toMatch(/lists schemas .*--db-schema <name>.*Nothing changed/);
  expect(read(schemaFile)).toBe(original);

  const r = txonceInit(dir, ["--db-schema", "app"]);
  expect(r.code, r.stderr).toBe(0);
  const block = /\/\/ txonce:begin[\s\S]*\/\/ txonce:end/.exec(read(schemaFile))![0];
  expect(block.match(/^\s*@@schema\("app"\)$/gm)).toHaveLength(2);
  expect(generatedModels(dir)).toEqual(expect.arrayContaining(["TxonceIdempotencyKey.ts", "TxonceOutboxMessage.ts"]));
  const again = txonceInit(dir);
  expect(again.code, again.stderr).toBe(0);
  expect(again.stdout).toContain("are up to date");
  expect(txonceInit(dir, ["--db-schema", "app-2"]).code).toBe(2);
});

test("models copied by hand are left alone: exit 1, saying where they are", () => {
  const dir = project("hand-copied");
  prisma(dir, ["init", "--no-skills"]);
  const schemaFile = join(dir, "prisma", "schema.prisma");
  const models = read(join(root, "prisma", "txonce.prisma"));
  writeFileSync(schemaFile, `${read(schemaFile)}\n${models}`);
  const before = read(schemaFile);
  const r = txonceInit(dir);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^txonce init: prisma\/schema.prisma already has a model TxonceIdempotencyKey/);
  expect(read(schemaFile)).toBe(before);
});

test("a stray prisma/txonce.prisma next to a single schema file (the old instructions) is pointed out", () => {
  const dir = project("stray");
  prisma(dir, ["init", "--no-skills"]);
  writeFileSync(join(dir, "prisma", "txonce.prisma"), read(join(root, "prisma", "txonce.prisma")));
  const r = txonceInit(dir);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toContain("Note: Prisma does not read prisma/txonce.prisma (your schema is the single file prisma/schema.prisma); delete it.");
});

test("--schema names the schema without a config; a default-located schema.prisma is found without one", () => {
  const dir = project("no-config");
  mkdirSync(join(dir, "db"));
  const schema = `datasource db {\n  provider = "postgresql"\n}\n`;
  writeFileSync(join(dir, "db", "main.prisma"), schema);
  const r = txonceInit(dir, ["--schema", "db/main.prisma"]);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stdout).toContain("added txonce's models to db/main.prisma");
  expect(r.stdout).toContain("(schema from --schema)");

  mkdirSync(join(dir, "prisma"));
  writeFileSync(join(dir, "prisma", "schema.prisma"), schema);
  const d = txonceInit(dir);
  expect(d.code, d.stderr).toBe(0);
  expect(d.stdout).toContain("added txonce's models to prisma/schema.prisma, between the txonce:begin and txonce:end comments (schema found at Prisma's default location)");
});

test.each([
  ["no schema anywhere", (_dir: string) => {}, 2, /no Prisma schema found: there is no schema.prisma or prisma\/schema.prisma\. Run `npx prisma init` first/],
  [
    "a config that Prisma cannot load",
    (dir: string) => writeFileSync(join(dir, "prisma.config.ts"), `import "./missing-module.js";\nexport default {};\n`),
    2,
    /could not load prisma.config.ts: .*missing-module.*Prisma cannot read it either/,
  ],
  [
    "a MySQL datasource",
    (dir: string) => {
      mkdirSync(join(dir, "prisma"));
      writeFileSync(join(dir, "prisma", "schema.prisma"), `datasource db {\n  provider = "mysql"\n}\n`);
    },
    1,
    /txonce needs PostgreSQL, and the datasource in .* has provider "mysql"/,
  ],
])("%s: exits with its code and the reason", (name, setUp, code, reason) => {
  const dir = project(name.replaceAll(" ", "-"));
  setUp(dir);
  const r = txonceInit(dir);
  expect(r.code).toBe(code);
  expect(r.stderr.split("\n")[0]).toMatch(reason);
  expect(r.stdout).toBe("");
});
