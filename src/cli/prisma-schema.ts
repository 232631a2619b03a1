/**
 * Where a project's Prisma schema is, found the way Prisma 7 finds it: `--schema`, else the
 * `schema` of the Prisma config file (`prisma.config.ts` and its variants, loaded by the project's
 * own `@prisma/config`, the module the Prisma CLI loads it with), else `schema.prisma` or
 * `prisma/schema.prisma` next to the config file (or in the current folder). The schema is one
 * file or a folder of `.prisma` files.
 */
import { existsSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { UsageError } from "./usage-error.js";

export interface SchemaLocation {
  /** Absolute path of the schema file or folder. */
  readonly path: string;
  readonly kind: "file" | "folder";
  /** How it was found, for the user: `--schema`, `prisma.config.ts`, or `the default location`. */
  readonly source: string;
}

/** The part of `@prisma/config` read here (Prisma 7). */
interface PrismaConfigModule {
  loadConfigFromFile(input: { configFile?: string; configRoot?: string }): Promise<{
    config?: { schema?: string; loadedFromFile: string | null };
    error?: { _tag: string; error?: Error };
    resolvedPath: string | null;
  }>;
}

/** Finds the schema of the project in `cwd`; a {@link UsageError} says what to do when it cannot. */
export async function findPrismaSchema(cwd: string, flags: { schema?: string; config?: string }): Promise<SchemaLocation> {
  if (flags.schema !== undefined) return located(resolve(cwd, flags.schema), "--schema");

  const config = await loadPrismaConfig(cwd, flags.config);
  if (config?.schema) return located(config.schema, relative(cwd, config.file) || config.file);

  // Prisma's defaults, relative to the config file's folder (the current folder without one).
  const base = flags.config === undefined ? cwd : dirname(resolve(cwd, flags.config));
  const candidates = [join(base, "schema.prisma"), join(base, "prisma", "schema.prisma")];
  const found = candidates.find((candidate) => statSync(candidate, { throwIfNoEntry: false })?.isFile());
  if (found) return located(found, "the default location");
  throw new UsageError(
    `no Prisma schema found: ${config ? `${relative(cwd, config.file)} names none, and ` : ""}` +
      `there is no ${candidates.map((c) => relative(cwd, c)).join(" or ")}. ` +
      "Run `npx prisma init` first, or pass --schema <file or folder>",
  );
}

function located(path: string, source: string): SchemaLocation {
  const stat = statSync(path, { throwIfNoEntry: false });
  if (!stat) throw new UsageError(`the Prisma schema ${path} (from ${source}) does not exist`);
  if (!stat.isFile() && !stat.isDirectory()) throw new UsageError(`the Prisma schema ${path} is neither a file nor a folder`);
  return { path, kind: stat.isDirectory() ? "folder" : "file", source };
}

/**
 * The project's Prisma config, loaded by the project's own `@prisma/config` (the one its `prisma`
 * package depends on), so that a config Prisma can read is read the same way here. `undefined`
 * when the project has no config file.
 */
async function loadPrismaConfig(cwd: string, configFlag: string | undefined): Promise<{ schema?: string; file: string } | undefined> {
  const prismaConfig = await importPrismaConfig(cwd);
  if (!prismaConfig) {
    const file = configFlag === undefined ? CONFIG_FILES.map((name) => join(cwd, name)).find((path) => existsSync(path)) : resolve(cwd, configFlag);
    if (file === undefined) return undefined;
    throw new UsageError(
      `${relative(cwd, file)} can only be read with Prisma installed in this project (npm install --save-dev prisma), ` +
        "or pass --schema <file or folder>",
    );
  }
  const result = await prismaConfig.loadConfigFromFile({ configRoot: cwd, configFile: configFlag });
  if (result.error) {
    const file = result.resolvedPath ? relative(cwd, result.resolvedPath) || result.resolvedPath : "the Prisma config file";
    const reason = result.error._tag === "ConfigFileNotFound" ? "not found" : (result.error.error?.message.split("\n")[0] ?? result.error._tag);
    throw new UsageError(`could not load ${file}: ${reason}. Fix it (Prisma cannot read it either), or pass --schema <file or folder>`);
  }
  const file = result.config?.loadedFromFile;
  if (!file) return undefined;
  return { schema: result.config?.schema, file };
}

/** The config file names Prisma 7 looks for, for the message when Prisma is missing. */
const CONFIG_FILES = ["prisma7.config.ts", "prisma.config.ts", "prisma7.config.js", "prisma.config.js", "prisma.config.mjs", ".config/prisma.ts"];

async function importPrismaConfig(cwd: string): Promise<PrismaConfigModule | undefined> {
  let modulePath: string;
  try {
    const fromProject = createRequire(join(cwd, "package.json"));
    const fromPrisma = createRequire(fromProject.resolve("prisma/package.json"));
    modulePath = fromPrisma.resolve("@prisma/config");
  } catch {
    return undefined;
  }
  const loaded = (await import(pathToFileURL(modulePath).href)) as Partial<PrismaConfigModule> & { default?: PrismaConfigModule };
  const module = typeof loaded.loadConfigFromFile === "function" ? loaded : loaded.default;
  if (typeof module?.loadConfigFromFile !== "function") {
    throw new UsageError(`the installed @prisma/config (${modulePath}) is not Prisma 7's; pass --schema <file or folder>`);
  }
  return module as PrismaConfigModule;
}
