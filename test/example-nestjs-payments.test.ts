/**
 * examples/nestjs-payments runs: `npm run demo:nestjs`'s script, as a child process under tsx (as
 * users run it: no decorator metadata), ends with every check passed and exit code 0.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { expect, test } from "vitest";

const root = join(import.meta.dirname, "..");

test("the NestJS payments demo passes all its checks on the embedded database", () => {
  const result = spawnSync(process.execPath, [join(root, "node_modules", "tsx", "dist", "cli.mjs"), "examples/nestjs-payments/demo.ts"], {
    cwd: root,
    encoding: "utf8",
    timeout: 120_000,
  });
  expect(result.stderr).toBe("");
  expect(result.stdout).toMatch(/All \d+ checks passed\./);
  expect(result.stdout).not.toContain("✗");
  expect(result.status).toBe(0);
}, 150_000);
