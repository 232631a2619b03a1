/**
 * The SQL that `prisma migrate dev` writes for a set of Prisma models, produced offline with
 * Prisma 6.19's WebAssembly schema engine (a dev-only tool: Prisma 7's CLI needs a native engine
 * that cannot be downloaded on our machines). See ../../docs/development.md.
 */
import { execFile } from "node:child_process";
import { copyFile, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
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

/** What a migration folder that Prisma made for no change holds. */
export const EMPTY_MIGRATION = "-- This is an empty migration.";

/**
 * What `prisma migrate dev` would write into the next migration.sql for the models in
 * `schemaFiles`: the difference between the schema that the migrations in `migrationsDir` build
 * (applied to a shadow database) and the models; from an empty database when `migrationsDir` is
 * null. Needs a reachable PostgreSQL (`databaseUrl`) whose role may create databases; it leaves
 * nothing behind. Returns `EMPTY_MIGRATION` (plus a newline) when there is no difference.
 */
export async function migrationSqlFor(
  schemaFiles: string[],
  databaseUrl: string,
  { migrationsDir = null }: { migrationsDir?: string | null } = {},
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "txonce-prisma6-"));
  try {
    const schemaDir = join(dir, "schema");
    await mkdir(schemaDir);
    await writeFile(join(schemaDir, "schema.prisma"), header);
    for (const file of schemaFiles) await copyFile(file, join(schemaDir, `models-${basename(file)}`));
    let from = ["--from-empty"];
    if (migrationsDir) {
      // Prisma wants the lock file that `migrate dev` writes next to a project's migrations.
      const copy = join(dir, "migrations");
      await cp(migrationsDir, copy, { recursive: true });
      await writeFile(join(copy, "migration_lock.toml"), 'provider = "postgresql"\n');
      from = ["--from-migrations", copy];
    }
    const cli = join(dirname(require.resolve("prisma6/package.json")), "build", "index.js");
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [cli, "migrate", "diff", ...from, "--to-schema-datamodel", schemaDir, "--script",
        "--config", join(here, "prisma.config.ts")],
      {
        env: { ...process.env, DATABASE_URL: databaseUrl, TXONCE_PRISMA6_SCHEMA: schemaDir, CHECKPOINT_DISABLE: "1" },
        maxBuffer: 16 * 1024 * 1024,
      },
    );
    // `migrate diff --from-empty` also creates the schema, which `migrate dev` leaves out.
    return stdout.replace(/^-- CreateSchema\nCREATE SCHEMA IF NOT EXISTS "public";\n\n/, "");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
