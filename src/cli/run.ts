import { parseArgs, type ParseArgsConfig } from "node:util";
import { cleanupCommand, cleanupOptions, cleanupUsage } from "./cleanup-command.js";

/** What a command may touch: streams, environment and signals, passed in so tests can drive it. */
export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  signals: Pick<NodeJS.Process, "once" | "off">;
}

/** A failure the user can fix: wrong flag, missing URL. Exit code 2. */
export class UsageError extends Error {}

const usage = `Usage: txonce <command> [options]

Commands:
  cleanup   delete expired idempotency records in batches (for cron)

Run \`txonce <command> --help\` for a command's options.
`;

/** Runs the CLI with `argv` (without node and the script) and returns the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    (command === undefined ? io.stderr : io.stdout).write(usage);
    return command === undefined ? 2 : 0;
  }
  if (command !== "cleanup") {
    io.stderr.write(`txonce: unknown command ${JSON.stringify(command)}\n${usage}`);
    return 2;
  }
  let values: ReturnType<typeof parseArgs<{ options: typeof cleanupOptions; strict: true }>>["values"];
  try {
    ({ values } = parseArgs({ args: rest, options: cleanupOptions, strict: true, allowPositionals: false } satisfies ParseArgsConfig));
  } catch (error) {
    io.stderr.write(`txonce cleanup: ${(error as Error).message}\nRun \`txonce cleanup --help\` for the options.\n`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(cleanupUsage);
    return 0;
  }
  try {
    return await cleanupCommand(values, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr.write(`txonce cleanup: ${error.message}\nRun \`txonce cleanup --help\` for the options.\n`);
      return 2;
    }
    io.stderr.write(`txonce cleanup: ${oneLine(error)}\n`);
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
