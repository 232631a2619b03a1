/**
 * Starts (or finds) a PostgreSQL server once for the whole run and builds a template database
 * from the shipped migration plus the tests' business tables; each test file clones it (see
 * database.ts), so files never see each other's rows.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { schemaSql } from "../../src/sql/schema.js";
import { databaseUrl, startPostgres } from "./postgres-server.js";

declare module "vitest" {
  export interface ProvidedContext {
    postgres: { serverUrl: string; template: string; runId: string; source: string };
  }
}

export default async function setup(project: TestProject) {
  const server = await startPostgres((line) => console.log(`[postgres] ${line}`));
  console.log(`[postgres] tests use ${server.source}`);
  const runId = randomBytes(4).toString("hex");
  const template = `txonce_template_${runId}`;
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${template}`);
    // The test models' tables, as Prisma makes them (npm run migrations checks the file).
    const appSql = await readFile(join(import.meta.dirname, "../../examples/demo/app-tables.sql"), "utf8");
    const db = new pg.Client({ connectionString: databaseUrl(server.url, template) });
    await db.connect();
    try {
      await db.query(schemaSql);
      await db.query(appSql);
    } finally {
      await db.end();
    }
  } finally {
    await admin.end();
  }
  project.provide("postgres", { serverUrl: server.url, template, runId, source: server.source });

  return async () => {
    const cleanup = new pg.Client({ connectionString: server.url });
    await cleanup.connect();
    try {
      const { rows } = await cleanup.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE datname LIKE $1",
        [`%\\_${runId}%`],
      );
      for (const { datname } of rows) await cleanup.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
    } finally {
      await cleanup.end();
    }
    await server.stop();
  };
}
