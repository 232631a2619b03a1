/**
 * `txonce init`: adds txonce's models to the project's Prisma schema, wherever Prisma reads it
 * from. A schema folder gets them as `txonce.prisma` in it; a single schema file gets them
 * appended between two marker comments. Running it again changes nothing, and a newer txonce
 * replaces its own models in place.
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import type { CliIo } from "./run.js";
import { InvalidArgumentError } from "../errors.js";
import { checkSchema } from "../sql/statements.js";
import { findPrismaSchema, type SchemaLocation } from "./prisma-schema.js";
import { UsageError } from "./usage-error.js";

export const initOptions = {
  schema: { type: "string" },
  "db-schema": { type: "string" },
  config: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

export const initUsage = `Usage: txonce init [options]

Adds txonce's Prisma models (TxonceIdempotencyKey, TxonceOutboxMessage) to your Prisma schema,
found the way Prisma 7 finds it: the \`schema\` of prisma.config.ts, else prisma/schema.prisma.
A schema folder gets them as txonce.prisma in it; a single schema file gets them appended between
"txonce:begin" and "txonce:end" comments. Run it again after upgrading txonce: it changes nothing
when the models are current and replaces them in place when they are not.
Then create the tables: npx prisma migrate dev --name txonce, and npx prisma generate.

Options:
  --schema <path>   the schema file or folder, instead of asking the Prisma config
  --db-schema <name>  the PostgreSQL schema of txonce's tables in a multi-schema datasource
                    (schemas = [...]): adds @@schema("<name>") to txonce's models; kept when
                    init runs again without it (default: none, the datasource's schema)
  --config <file>   the Prisma config file (default: the one Prisma finds in this folder)
  -h, --help        show this help
`;

type Values = { schema?: string; config?: string; "db-schema"?: string };

const BEGIN = "// txonce:begin";
const END = "// txonce:end";
const BLOCK = /^\/\/ txonce:begin[^\n]*\n[\s\S]*?^\/\/ txonce:end[^\n]*(\n|$)/m;
const MODEL_NAMES = ["TxonceIdempotencyKey", "TxonceOutboxMessage"];
const TABLE_NAMES = ["txonce_idempotency_keys", "txonce_outbox_messages"];

export async function initCommand(values: Values, io: CliIo): Promise<number> {
  const dbSchemaOption = values["db-schema"];
  if (dbSchemaOption !== undefined) {
    try {
      checkSchema(dbSchemaOption);
    } catch (error) {
      if (error instanceof InvalidArgumentError) throw new UsageError(`--db-schema: ${error.reason}`);
      throw error;
    }
  }
  const schema = await findPrismaSchema(io.cwd, values);
  const shown = (path: string) => relative(io.cwd, path) || path;

  checkProvider(schema);
  const elsewhere = modelledElsewhere(schema);
  if (elsewhere) {
    io.stderr.write(
      `txonce init: ${shown(elsewhere.file)} already has ${elsewhere.what}; txonce init leaves the models it did not write alone.\n` +
        "Delete them there and run it again to have txonce manage them, or keep them as they are and leave txonce init out.\n",
    );
    return 1;
  }

  let target: string;
  let before: string | undefined;
  let after: string;
  const ownedText = (text: string | undefined) => (schema.kind === "folder" ? text : BLOCK.exec(text ?? "")?.[0]);
  const earlier = schema.kind === "folder" ? readIfExists(join(schema.path, "txonce.prisma")) : readFileSync(schema.path, "utf8");
  // The database schema txonce's models were given before, kept when the option is left out.
  const dbSchema = dbSchemaOption ?? /^\s*@@schema\("([^"]+)"\)/m.exec(ownedText(earlier) ?? "")?.[1];
  const models = withDbSchema(shippedModels(), dbSchema);
  if (dbSchema === undefined && schemaFiles(schema).some((file) => /^\s*schemas\s*=\s*\[/m.test(readFileSync(file, "utf8")))) {
    io.stderr.write(
      "txonce init: your datasource lists schemas (schemas = [...]), so Prisma wants @@schema on every model: " +
        "run it again with --db-schema <name> (one of those schemas), and give txonce the same name as its schema option. Nothing changed.\n",
    );
    return 1;
  }
  if (schema.kind === "folder") {
    target = join(schema.path, "txonce.prisma");
    before = earlier;
    after = `${FOLDER_FILE_HEADER}\n${models}`;
  } else {
    target = schema.path;
    before = earlier ?? "";
    const block = `${BEGIN} (added by \`npx txonce init\`: run it again to update; do not edit down to txonce:end)\n${models}${END}\n`;
    after = BLOCK.test(before) ? before.replace(BLOCK, block) : `${before}${before.endsWith("\n") || before === "" ? "" : "\n"}\n${block}`;
  }

  const from = schema.source === "the default location" ? "found at Prisma's default location" : `from ${schema.source}`;
  if (before === after) {
    io.stdout.write(`txonce init: txonce's models in ${shown(target)} are up to date (schema ${shown(schema.path)}, ${from}); nothing changed.\n`);
  } else {
    writeFileSync(target, after);
    const what =
      schema.kind === "folder"
        ? `${before === undefined ? "wrote" : "updated"} ${shown(target)} in your schema folder`
        : `${before?.includes(BEGIN) ? "updated txonce's models in" : "added txonce's models to"} ${shown(target)}, between the txonce:begin and txonce:end comments`;
    io.stdout.write(`txonce init: ${what} (schema ${from}).\n`);
  }
  const stray = schema.kind === "file" ? join(dirname(schema.path), "txonce.prisma") : undefined;
  if (stray && readIfExists(stray) !== undefined) {
    io.stdout.write(`Note: Prisma does not read ${shown(stray)} (your schema is the single file ${shown(schema.path)}); delete it.\n`);
  }
  io.stdout.write(
    [
      "Next, create the tables and regenerate the client:",
      "  npx prisma migrate dev --name txonce",
      "  npx prisma generate",
      "",
    ].join("\n"),
  );
  return 0;
}

const FOLDER_FILE_HEADER = [
  "// txonce's models, written by `npx txonce init`: run it again after upgrading txonce to update",
  "// this file, and do not edit it. Keep the table and column names: txonce's SQL uses them.",
].join("\n");

/** The models with `@@schema("name")` after each `@@map`, for a multi-schema datasource. */
function withDbSchema(models: string, dbSchema: string | undefined): string {
  if (dbSchema === undefined) return models;
  return models.replace(/^(\s*)(@@map\("txonce_[a-z_]+"\))$/gm, (_line, indent: string, map: string) => `${indent}${map}\n${indent}@@schema("${dbSchema}")`);
}

/** The models of the shipped prisma/txonce.prisma, without its header comment. */
function shippedModels(): string {
  // From dist/cli/ (the package) or src/cli/ (this repository), the models are two folders up.
  const file = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "prisma", "txonce.prisma");
  const lines = readFileSync(file, "utf8").split("\n");
  let start = 0;
  while (start < lines.length && (/^\/\/(?!\/)/.test(lines[start]!) || lines[start]!.trim() === "")) start++;
  return `${lines.slice(start).join("\n").trimEnd()}\n`;
}

/** txonce's models need PostgreSQL (`@db.Timestamptz`, `@db.Uuid`). */
function checkProvider(schema: SchemaLocation): void {
  for (const file of schemaFiles(schema)) {
    const provider = /^\s*datasource\s+\w+\s*\{[^}]*?^\s*provider\s*=\s*"([^"]+)"/m.exec(readFileSync(file, "utf8"))?.[1];
    if (provider !== undefined && provider !== "postgresql") {
      throw new Error(`txonce needs PostgreSQL, and the datasource in ${file} has provider "${provider}"`);
    }
  }
}

/** A model of txonce's tables that txonce init did not write (copied or introspected by hand). */
function modelledElsewhere(schema: SchemaLocation): { file: string; what: string } | undefined {
  const ours = schema.kind === "folder" ? join(schema.path, "txonce.prisma") : undefined;
  for (const file of schemaFiles(schema)) {
    if (file === ours) continue;
    const text = readFileSync(file, "utf8").replace(BLOCK, "");
    for (const name of MODEL_NAMES) {
      if (new RegExp(`^\\s*model\\s+${name}\\s*\\{`, "m").test(text)) return { file, what: `a model ${name}` };
    }
    for (const table of TABLE_NAMES) {
      if (new RegExp(`^\\s*model\\s+${table}\\s*\\{|@@map\\(\\s*"${table}"\\s*\\)`, "m").test(text)) {
        return { file, what: `a model of the table ${table}` };
      }
    }
  }
  return undefined;
}

/** The `.prisma` files Prisma reads for this schema. */
function schemaFiles(schema: SchemaLocation): string[] {
  if (schema.kind === "file") return [schema.path];
  return (readdirSync(schema.path, { recursive: true, withFileTypes: true }) as import("node:fs").Dirent[])
    .filter((entry) => entry.isFile() && entry.name.endsWith(".prisma"))
    .map((entry) => join(entry.parentPath, entry.name));
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}
