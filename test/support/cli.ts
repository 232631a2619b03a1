/** Runs the `txonce` command as a child process (as cron or an operator does), from the sources. */
import { spawn } from "node:child_process";
import { join } from "node:path";

export function txonceCli(args: string[], env: Record<string, string | undefined> = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), join(import.meta.dirname, "..", "..", "src", "cli", "main.ts"), ...args], {
      env: { ...process.env, DATABASE_URL: undefined, ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
