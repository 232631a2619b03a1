/**
 * Telemetry when nobody asked for it: with `@opentelemetry/api` installed but no SDK registered,
 * txonce works as before, stores and carries no trace context, and throws nothing; without the
 * package at all (a child process that cannot resolve it) it works the same. And an SDK
 * registered after txonce was set up is picked up from then on.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { trace } from "@opentelemetry/api";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { continueTrace, type OutboxMessage } from "../src/index.js";
import { headersOf } from "../src/outbox/publishers/common.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { registerTestTelemetry } from "./support/telemetry.js";
import { sleep } from "./support/wait.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const metadata = ["txonce-message-id", "txonce-topic"];

describe("telemetry without an SDK", () => {
  test("calls, enqueue, relay, cleanup and continueTrace work, and no trace context is stored or carried; an SDK registered later is used from then on", async () => {
    const t = txonce(db.prisma);
    const received: OutboxMessage[] = [];
    const relay = t.outbox.relay({ publisher: async (m) => void received.push(m), pollInterval: 20 });
    await relay.start();
    let id: string;
    try {
      id = await t.withIdempotency("no-sdk", async (tx) => {
        expect(trace.getActiveSpan()).toBeUndefined();
        return t.outbox.enqueue(tx, { topic: "no-sdk", payload: 1 });
      });
      expect(await t.withIdempotencyOutcome("no-sdk", async () => "again")).toMatchObject({ replayed: true, value: id });
      while (received.length === 0) await sleep(10);
    } finally {
      await relay.stop();
    }
    expect(received[0]!.traceContext).toEqual({});
    expect(Object.keys(headersOf(received[0]!)).sort()).toEqual(metadata);
    expect((await db.pool.query("SELECT trace_context FROM txonce_outbox_messages WHERE id = $1", [id])).rows[0].trace_context).toBeNull();
    expect(await continueTrace({ headers: headersOf(received[0]!) }, async () => "handled")).toBe("handled");
    await expect(continueTrace({ headers: {} }, async () => Promise.reject(new Error("handler failed")))).rejects.toThrow("handler failed");
    expect((await t.cleanup()).finished).toBe(true);

    // The application registers its SDK only now: the same txonce instance emits from here on.
    const otel = registerTestTelemetry();
    try {
      await t.withIdempotency("after-sdk", async (tx) => t.outbox.enqueue(tx, { topic: "after-sdk", payload: 2 }));
      expect(otel.spans.getFinishedSpans().map((s) => s.name).sort()).toEqual(["create after-sdk", "withIdempotency"]);
      expect(await otel.total("txonce.idempotency.calls", { "txonce.idempotency.outcome": "executed" })).toBe(1);
    } finally {
      await otel.shutdown();
    }
  });
});

describe("telemetry without @opentelemetry/api installed", () => {
  test("a process that cannot resolve the package runs calls, the relay, cleanup and continueTrace as usual", async () => {
    const fixtures = join(import.meta.dirname, "fixtures");
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", "--import", join(fixtures, "hide-opentelemetry-api.ts"), join(fixtures, "without-opentelemetry-api.ts")],
      { env: { ...process.env, DATABASE_URL: db.url }, timeout: 60_000 },
    );
    expect(JSON.parse(stdout.trim().split("\n").at(-1)!)).toEqual({
      apiLoadable: false,
      replayed: true,
      sameValue: true,
      traceContext: {},
      headers: metadata,
      stored: null,
      handled: "handled",
      cleanupFinished: true,
    });
  });
});
