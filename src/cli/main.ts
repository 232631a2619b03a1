#!/usr/bin/env node
/**
 * The `txonce` command: `npx txonce init` adds txonce's models to a Prisma schema,
 * `npx txonce cleanup` prunes expired records from cron, `npx txonce doctor` checks the tables'
 * health, `keys` and `dead` are the operator actions; no generated Prisma client is needed
 * (it talks to PostgreSQL through node-postgres, `pg`, which `@prisma/adapter-pg` already brings).
 */
import { existsSync } from "node:fs";
import { runCli } from "./run.js";

// Like Prisma 7 users' own tooling: .env in the current folder, without overriding the environment.
if (existsSync(".env")) process.loadEnvFile(".env");

process.exitCode = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
  signals: process,
});
