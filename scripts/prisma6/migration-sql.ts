/**
 * The SQL that `prisma migrate dev` writes for a set of Prisma models, produced offline with
 * Prisma 6.19's WebAssembly schema engine (a dev-only tool: Prisma 7's CLI needs a native engine
 * that cannot be downloaded on our machines). See ../../docs/development.md.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile, copyFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const header = `generator client {
  provider   = "prisma-client-js"
  engineType = "client"
}

datasource db {
  provider = "postgresql"
  url      = env("DATABASE_URL")
}
`;

/**
 * What `prisma migrate dev` would write into migration.sql for the models in `schemaFiles`,
 * starting from an empty database. Needs a reachable PostgreSQL (`databaseUrl`) but writes
 * nothing to it.
 */
export async function migrationSqlFor(schemaFiles: string[], databaseUrl: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "txonce-prisma6-"));
  try {
    await writeFile(join(dir, "schema.prisma"), header);
    for (const file of schemaFiles) await copyFile(file, join(dir, `models-${basename(file)}`));
    const cli = join(dirname(require.resolve("prisma6/package.json")), "build", "index.js");
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [cli, "migrate", "diff", "--from-empty", "--to-schema-datamodel", dir, "--script",
        "--config", join(here, "prisma.config.ts")],
      {
        env: { ...process.env, DATABASE_URL: databaseUrl, TXONCE_PRISMA6_SCHEMA: dir, CHECKPOINT_DISABLE: "1" },
        maxBuffer: 16 * 1024 * 1024,
      },
    );
    // `migrate diff --from-empty` also creates the schema, which `migrate dev` leaves out.
    return stdout.replace(/^-- CreateSchema\nCREATE SCHEMA IF NOT EXISTS "public";\n\n/, "");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function readText(path: string): Promise<string> {
  return readFile(path, "utf8");
}
