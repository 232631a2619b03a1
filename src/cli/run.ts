import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { cleanupCommand, cleanupOptions, cleanupUsage } from "./cleanup-command.js";
import { deadActions, deadCommand, deadOptions, deadUsage } from "./dead-command.js";
import { doctorCommand, doctorOptions, doctorUsage } from "./doctor-command.js";
import { initCommand, initOptions, initUsage } from "./init-command.js";
import { keysActions, keysCommand, keysOptions, keysUsage } from "./keys-command.js";
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
  doctor    check the health of txonce's tables (exit code 0 ok, 1 warning, 2 problem)
  keys      show, forget or purge idempotency keys: keys show|forget|purge --scope S ...
  dead      list or requeue dead-lettered outbox messages: dead list|requeue ...

Options:
  -v, --version   print txonce's version
  -h, --help      show this help

Run \`txonce <command> --help\` for a command's options. Reads .env in the current folder when
there is one (variables already set in the environment win). A bad command or flag exits with 64.
`;

/** The exit code of a usage error (sysexits' EX_USAGE): wrong command, flag or missing argument. */
export const EXIT_USAGE = 64;

interface Command {
  options: NonNullable<Parameters<typeof parseArgs>[0]>["options"];
  usage: string;
  /** The subcommands (`keys show`, `dead list` ...), given as the first argument; none for most commands. */
  actions?: readonly string[];
  run(values: Record<string, string | boolean | string[] | undefined>, io: CliIo, action: string): Promise<number>;
}

const commands: Record<string, Command> = {
  init: { options: initOptions, usage: initUsage, run: (values, io) => initCommand(values as never, io) },
  cleanup: { options: cleanupOptions, usage: cleanupUsage, run: (values, io) => cleanupCommand(values as never, io) },
  doctor: { options: doctorOptions, usage: doctorUsage, run: (values, io) => doctorCommand(values as never, io) },
  keys: { options: keysOptions, usage: keysUsage, actions: keysActions, run: (values, io, action) => keysCommand(action as never, values as never, io) },
  dead: { options: deadOptions, usage: deadUsage, actions: deadActions, run: (values, io, action) => deadCommand(action as never, values as never, io) },
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
    return name === undefined ? EXIT_USAGE : 0;
  }
  if (name === "--version" || name === "-v" || name === "version") {
    io.stdout.write(`${version()}\n`);
    return 0;
  }
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined;
  if (!command) {
    io.stderr.write(`txonce: unknown command ${JSON.stringify(name)}\n${usage}`);
    return EXIT_USAGE;
  }
  const usageHint = `Run \`txonce ${name} --help\` for the options.`;
  let action = "";
  let args = rest;
  if (command.actions && rest[0] !== undefined && !rest[0].startsWith("-")) {
    action = rest[0];
    args = rest.slice(1);
  }
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({ args, options: command.options, strict: true, allowPositionals: false }));
  } catch (error) {
    io.stderr.write(`txonce ${name}: ${(error as Error).message}\n${usageHint}\n`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout.write(command.usage);
    return 0;
  }
  if (command.actions && !command.actions.includes(action)) {
    const what = action === "" ? "missing subcommand" : `unknown subcommand ${JSON.stringify(action)}`;
    io.stderr.write(`txonce ${name}: ${what}: expected ${command.actions.join(", ")}\n${usageHint}\n`);
    return EXIT_USAGE;
  }
  try {
    return await command.run(values, io, action);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`txonce ${name}${action ? ` ${action}` : ""}: ${error.message}\n${usageHint}\n`);
      return EXIT_USAGE;
    }
    io.stderr.write(`txonce ${name}${action ? ` ${action}` : ""}: ${oneLine(error)}\n`);
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
