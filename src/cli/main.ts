#!/usr/bin/env node
/**
 * The `txonce` command. `npx txonce cleanup` prunes expired records from cron, with no generated
 * Prisma client needed: it talks to PostgreSQL through node-postgres (`pg`, which
 * `@prisma/adapter-pg` already brings).
 */
import { runCli } from "./run.js";

process.exitCode = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  signals: process,
});
