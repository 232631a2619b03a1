import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { cleanupCommand, cleanupOptions, cleanupUsage } from "./cleanup-command.js";
import { initCommand, initOptions, initUsage } from "./init-command.js";
import { UsageError } from "./usage-error.js";

/** What a command may touch: streams, environment, folder and signals, passed in so tests can drive it. */
export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** The folder the command runs in: where `init` looks for the Prisma schema. */
  cwd: string;
  signals: Pick<NodeJS.Process, "once" | "off">;
}

const usage = `Usage: txonce <command> [options]

Commands:
  init      add txonce's models to your Prisma schema (then: npx prisma migrate dev)
  cleanup   delete expired idempotency records and old outbox messages in batches (for cron)

Options:
  -v, --version   print txonce's version
  -h, --help      show this help

Run \`txonce <command> --help\` for a command's options. Reads .env in the current folder when
there is one (variables already set in the environment win).
`;

interface Command {
  options: NonNullable<Parameters<typeof parseArgs>[0]>["options"];
  usage: string;
  run(values: Record<string, string | boolean | undefined>, io: CliIo): Promise<number>;
}

const commands: Record<string, Command> = {
  init: { options: initOptions, usage: initUsage, run: (values, io) => initCommand(values as never, io) },
  cleanup: { options: cleanupOptions, usage: cleanupUsage, run: (values, io) => cleanupCommand(values as never, io) },
};

/** txonce's version, from the package.json two folders up (dist/cli/ in the package, src/cli/ here). */
export function version(): string {
  return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

/** Runs the CLI with `argv` (without node and the script) and returns the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    (name === undefined ? io.stderr : io.stdout).write(usage);
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-v" || name === "version") {
    io.stdout.write(`${version()}\n`);
    return 0;
  }
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!command) {
    io.stderr.write(`txonce: unknown command ${JSON.stringify(name)}\n${usage}`);
    return 2;
  }
  const usageHint = `Run \`txonce ${name} --help\` for the options.`;
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: rest, options: command.options, strict: true, allowPositionals: false }));
  } catch (error) {
    io.stderr.write(`txonce ${name}: ${(error as Error).message}\n${usageHint}\n`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(command.usage);
    return 0;
  }
  try {
    return await command.run(values, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`txonce ${name}: ${error.message}\n${usageHint}\n`);
      return 2;
    }
    io.stderr.write(`txonce ${name}: ${oneLine(error)}\n`);
    return 1;
  }
}

/** One line that says what went wrong, with the database's own words where there are some. */
function oneLine(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return oneLine(error.errors[0]);
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const message = error.message.split("\n")[0] || error.name;
    return typeof code === "string" && !message.includes(code) ? `${message} (${code})` : message;
  }
  return String(error);
}
