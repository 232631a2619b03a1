/**
 * txonce's OpenTelemetry spans and metrics, with the SDK registered as an application registers it
 * and its in-memory exporters, on a real PostgreSQL: the outcome of each kind of withIdempotency
 * call, the outbox's create/send spans and the trace context carried to a consumer, metric values
 * after known traffic, and cleanup's.
 */
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { diag, DiagLogLevel, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { txonce } from "../src/adapters/prisma.js";
import { txonce as txoncePg } from "../src/adapters/pg.js";
import { handleIdempotentRequest } from "../src/http/core.js";
import { IdempotencyKeyInUseError, IdempotencyKeyReusedError } from "../src/errors.js";
import { continueTrace, type OutboxMessage } from "../src/index.js";
import { headersOf, PublishRejectedError } from "../src/outbox/publishers/common.js";
import { redisStreamFields } from "../src/outbox/publishers/redis.js";
import { webhookPublisher } from "../src/outbox/publishers/webhook.js";
import { outboxTelemetry } from "../src/telemetry/outbox.js";
import * as sql from "../src/sql/postgres.js";
import { createTestDatabase, type TestDatabase } from "./support/database.js";
import { parentOf, registerTestTelemetry, type TestTelemetry } from "./support/telemetry.js";
import { sleep, until } from "./support/wait.js";

let db: TestDatabase;
let otel: TestTelemetry;
beforeAll(async () => {
  otel = registerTestTelemetry();
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
  await otel?.shutdown();
});
beforeEach(() => otel.spans.reset());

const unique = (prefix: string) => `${prefix}-${Math.random().toString(36).slice(2, 10)}`;

describe("withIdempotency", () => {
  test("one span per call, named by the template, with its outcome; calls, durations and lock waits by outcome", async () => {
    const t = txonce(db.prisma);
    const other = txonce(db.prisma); // another "process": its calls poll for ours
    const scope = unique("scope");
    const options = { name: "charge", scope };

    // executed, then replayed (from the replay cache)
    await t.withIdempotency("k1", async () => 1, options);
    await t.withIdempotency("k1", async () => 2, options);
    // two calls at once in one process: the second waits for the first's attempt, then replays
    const slow = async () => {
      await sleep(150);
      return "slow";
    };
    await Promise.all([t.withIdempotency("k2", slow, options), t.withIdempotency("k2", slow, options)]);
    // a call in another instance polls until the first commits, then replays
    await Promise.all([t.withIdempotency("k3", slow, options), sleep(30).then(() => other.withIdempotency("k3", slow, options))]);
    // in use: the other instance gives up before the first is done
    const held = t.withIdempotency("k4", async () => sleep(400), options);
    await sleep(30);
    await expect(other.withIdempotency("k4", slow, { ...options, lockTimeout: 50 })).rejects.toBeInstanceOf(IdempotencyKeyInUseError);
    await held;
    // reused with another request
    await t.withIdempotency("k5", async () => 5, { ...options, fingerprint: { a: 1 } });
    await expect(t.withIdempotency("k5", async () => 5, { ...options, fingerprint: { a: 2 } })).rejects.toBeInstanceOf(IdempotencyKeyReusedError);
    // the operation throws
    await expect(t.withIdempotency("k6", async () => Promise.reject(new RangeError("boom")), options)).rejects.toThrow("boom");

    const spans = otel.spansNamed("withIdempotency charge");
    const outcomes = spans.map((s) => s.attributes["txonce.idempotency.outcome"]).sort();
    expect(outcomes).toEqual(
      ["executed", "replayed", "executed", "waited_then_replayed", "executed", "waited_then_replayed", "executed", "in_use", "executed", "reused_key", "failed"].sort(),
    );
    // txonce emits no span per SQL statement: every span of its scope is a withIdempotency span.
    expect(otel.spans.getFinishedSpans().filter((s) => s.instrumentationScope.name === "txonce")).toHaveLength(11);
    for (const span of spans) {
      expect(span.kind).toBe(SpanKind.INTERNAL);
      expect(span.attributes["txonce.operation.name"]).toBe("charge");
      // Keys and scopes stay off spans unless recordKeys is on.
      expect(span.attributes).not.toHaveProperty("txonce.idempotency.key");
      expect(span.attributes).not.toHaveProperty("txonce.idempotency.scope");
    }
    const failed = spans.find((s) => s.attributes["txonce.idempotency.outcome"] === "failed")!;
    expect(failed.status.code).toBe(SpanStatusCode.ERROR);
    expect(failed.attributes["error.type"]).toBe("RangeError");
    expect(failed.events.map((e) => e.name)).toEqual(["exception"]);
    const waited = spans.filter((s) => s.attributes["txonce.idempotency.outcome"] === "waited_then_replayed");
    for (const span of waited) expect(span.attributes["txonce.idempotency.lock_wait.duration"]).toBeGreaterThan(0.05);
    expect(spans.find((s) => s.attributes["txonce.idempotency.outcome"] === "executed")!.attributes).not.toHaveProperty("txonce.idempotency.lock_wait.duration");

    const calls = (o: string) => otel.total("txonce.idempotency.calls", { "txonce.operation.name": "charge", "txonce.idempotency.outcome": o });
    expect(await calls("executed")).toBe(5);
    expect(await calls("replayed")).toBe(1);
    expect(await calls("waited_then_replayed")).toBe(2);
    expect(await calls("in_use")).toBe(1);
    expect(await calls("reused_key")).toBe(1);
    expect(await calls("failed")).toBe(1);
    expect(await otel.total("txonce.idempotency.calls", { "txonce.idempotency.outcome": "failed", "error.type": "RangeError" })).toBe(1);
    expect(await otel.total("txonce.idempotency.duration", { "txonce.operation.name": "charge" })).toBe(11);
    // Lock waits: the two waited_then_replayed calls and the in_use one.
    expect(await otel.total("txonce.idempotency.lock_wait.duration", { "txonce.operation.name": "charge" })).toBe(3);
    const [inUseWait] = (await otel.points("txonce.idempotency.lock_wait.duration")).filter((p) => p.attributes["txonce.idempotency.outcome"] === "in_use");
    expect((inUseWait!.value as { sum: number }).sum).toBeGreaterThan(0);
  });

  test("the span is the parent of what the operation does; key and scope only with recordKeys", async () => {
    const t = txonce(db.prisma, { telemetry: { recordKeys: true } });
    const tracer = trace.getTracer("test");
    let inner: string | undefined;
    await t.withIdempotency(
      "order-7",
      async () => {
        tracer.startActiveSpan("business", (span) => {
          inner = span.spanContext().spanId;
          span.end();
        });
      },
      { scope: "tenant-1" },
    );
    const [span] = otel.spansNamed("withIdempotency");
    expect(span!.attributes).toMatchObject({ "txonce.idempotency.key": "order-7", "txonce.idempotency.scope": "tenant-1", "txonce.idempotency.outcome": "executed" });
    expect(parentOf(otel.spans.getFinishedSpans().find((s) => s.spanContext().spanId === inner)!, [span!])).toBe(span);
  });

  test("an HTTP route's call is named by its method and route pattern, not by its URL or key", async () => {
    const t = txonce(db.prisma);
    const info = (id: string) => ({
      request: {},
      method: "POST",
      route: "/accounts/:id/charges",
      url: `/accounts/${id}/charges`,
      body: { amount: 1 },
      header: (name: string) => (name === "idempotency-key" ? `"${unique("k")}"` : undefined),
    });
    await handleIdempotentRequest(t, {}, info("a1"), async () => ({ status: 201 }));
    await handleIdempotentRequest(t, { name: "charge" }, info("a2"), async () => ({ status: 201 }));
    expect(otel.spansNamed("withIdempotency POST /accounts/:id/charges")).toHaveLength(1);
    expect(otel.spansNamed("withIdempotency charge")).toHaveLength(1);
    expect(await otel.total("txonce.idempotency.calls", { "txonce.operation.name": "POST /accounts/:id/charges" })).toBe(1);
  });

  test("telemetry: { enabled: false } emits nothing", async () => {
    const t = txonce(db.prisma, { telemetry: { enabled: false } });
    const before = await otel.total("txonce.idempotency.calls");
    await t.withIdempotency(unique("k"), async () => 1);
    expect(otel.spans.getFinishedSpans()).toHaveLength(0);
    expect(await otel.total("txonce.idempotency.calls")).toBe(before);
  });
});

describe("outbox", () => {
  test("create spans in the producer's trace, send spans linked to them, the creation context in the publisher's headers and continued by the consumer", async () => {
    const t = txonce(db.prisma);
    const consumer = txonce(db.prisma);
    const received: OutboxMessage[] = [];
    const topic = unique("orders");
    const relay = t.outbox.relay({ publisher: { system: "memory", publish: async (m) => void received.push(m) }, pollInterval: 20 });
    await relay.start();
    try {
      const id = await trace.getTracer("test").startActiveSpan("POST /orders", { kind: SpanKind.SERVER }, async (request) => {
        try {
          return await t.withIdempotency(unique("k"), (tx) => t.outbox.enqueue(tx, { topic, payload: { n: 1 } }), { name: "order" });
        } finally {
          request.end();
        }
      });
      await until(() => received.length === 1);
      const [message] = received;
      // The consumer: its inbox in a process span that continues the message's trace.
      await continueTrace({ headers: headersOf(message!), system: "memory" }, () =>
        consumer.withIdempotency(message!.id, async () => "handled", { scope: "consumer:test", name: "inbox" }),
      );
      await until(() => otel.spansNamed(`send ${topic}`).length === 1);

      const spans = otel.spans.getFinishedSpans();
      const [request] = otel.spansNamed("POST /orders");
      const [create] = otel.spansNamed(`create ${topic}`);
      const [send] = otel.spansNamed(`send ${topic}`);
      const [process] = otel.spansNamed(`process ${topic}`);
      const [inbox] = otel.spansNamed("withIdempotency inbox");
      expect(create!.kind).toBe(SpanKind.PRODUCER);
      expect(create!.attributes).toMatchObject({
        "messaging.system": "txonce",
        "messaging.operation.name": "create",
        "messaging.operation.type": "create",
        "messaging.destination.name": topic,
        "messaging.message.id": id,
      });
      expect(parentOf(create!, spans)).toBe(otel.spansNamed("withIdempotency order")[0]);
      expect(parentOf(otel.spansNamed("withIdempotency order")[0]!, spans)).toBe(request);
      // The stored creation context, handed to the publisher and written in its headers.
      const traceparent = `00-${create!.spanContext().traceId}-${create!.spanContext().spanId}-01`;
      expect(message!.traceContext).toEqual({ traceparent });
      expect(headersOf(message!)).toMatchObject({ traceparent, "txonce-message-id": id });
      // The relay's send span (a batch of one): a trace of its own, linked to the creation context.
      expect(send!.kind).toBe(SpanKind.CLIENT);
      expect(send!.parentSpanContext).toBeUndefined();
      expect(send!.links.map((l) => l.context.spanId)).toEqual([create!.spanContext().spanId]);
      expect(send!.attributes).toMatchObject({
        "messaging.system": "memory",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": id,
        "messaging.batch.message_count": 1,
      });
      // The consumer: child of the create span, in the request's trace; the inbox inside it.
      expect(process!.kind).toBe(SpanKind.CONSUMER);
      expect(parentOf(process!, spans)).toBe(create);
      expect(process!.spanContext().traceId).toBe(request!.spanContext().traceId);
      expect(process!.attributes).toMatchObject({ "messaging.system": "memory", "messaging.operation.type": "process", "messaging.message.id": id });
      expect(parentOf(inbox!, spans)).toBe(process);
      const { rows } = await db.pool.query("SELECT trace_context FROM txonce_outbox_messages WHERE id = $1", [id]);
      expect(rows[0].trace_context).toEqual({ traceparent });
    } finally {
      await relay.stop();
    }
  });

  test("messages sent, failed and dead-lettered, publish latency, and the backlog gauges, after known traffic", async () => {
    const t = txonce(db.prisma);
    const topic = unique("metrics");
    const poison = unique("poison");
    let flakyFailures = 0;
    const publish = async (m: OutboxMessage) => {
      if (m.topic === poison) throw new PublishRejectedError("refused", m.id, true);
      if (m.payload === "flaky" && flakyFailures++ === 0) throw new PublishRejectedError("not now", m.id);
    };
    const relay = t.outbox.relay({ publisher: { system: "memory", publish }, pollInterval: 20, backoff: { initial: 10, max: 10 }, logger: false });
    await db.prisma.$transaction(async (tx) => {
      await t.outbox.enqueueMany(tx, [
        { topic, payload: 1 },
        { topic, payload: 2 },
        { topic, payload: "flaky" },
        { topic: poison, payload: 3 },
        { topic, payload: "later", delay: "1h" },
      ]);
    });
    // One message enqueued without an SDK's span around it: the relay's send span is its creation context.
    const latencies = await otel.total("txonce.outbox.publish.latency");
    await relay.start();
    try {
      const attrs = { "messaging.system": "memory", "messaging.destination.name": topic };
      await until(async () => (await otel.total("messaging.client.sent.messages", attrs)) === 4);
      await until(async () => (await otel.total("txonce.outbox.messages.dead_lettered")) >= 1);
      const points = await otel.points("messaging.client.sent.messages");
      const sum = (match: (a: Record<string, unknown>) => boolean) => points.filter((p) => match(p.attributes)).reduce((s, p) => s + (p.value as number), 0);
      expect(sum((a) => a["messaging.destination.name"] === topic && a["error.type"] === undefined)).toBe(3);
      expect(sum((a) => a["messaging.destination.name"] === topic && a["error.type"] === "PublishRejectedError")).toBe(1);
      expect(sum((a) => a["messaging.destination.name"] === poison && a["error.type"] === "PublishRejectedError")).toBe(1);
      expect(await otel.total("txonce.outbox.messages.dead_lettered", { "messaging.destination.name": poison, "messaging.system": "memory" })).toBe(1);
      // The latency: one value per message published, the relay's as a whole (no attributes).
      expect((await otel.total("txonce.outbox.publish.latency")) - latencies).toBe(3);
      expect((await otel.points("txonce.outbox.publish.latency")).map((p) => p.attributes)).toEqual([{}]);
      // One send operation per batch: the first three together, then the flaky one's retry.
      expect(await otel.total("messaging.client.operation.duration", attrs)).toBe(2);
      // Gauges: the delayed message pending, the poison message dead, read in one query per collection.
      const gauge = async (name: string) => (await otel.points(name)).map((p) => p.value as number);
      expect(await gauge("txonce.outbox.messages.pending")).toEqual([1]);
      expect(await gauge("txonce.outbox.messages.dead")).toEqual([1]);
      const [age] = await gauge("txonce.outbox.oldest_pending.age");
      expect(age).toBeGreaterThan(0);
      expect(age).toBeLessThan(60);
    } finally {
      await relay.stop();
    }
  });

  test("one send span per topic of a claimed batch, linked to each message's creation context, with the batch's count", async () => {
    const t = txonce(db.prisma);
    const received: OutboxMessage[] = [];
    const [orders, refunds] = [unique("orders"), unique("refunds")];
    // Eight messages in one transaction, each in its own request's trace: one claim takes them all.
    await db.prisma.$transaction(async (tx) => {
      for (const [i, topic] of [orders, orders, orders, orders, orders, refunds, refunds, refunds].entries()) {
        await trace.getTracer("test").startActiveSpan(`request ${i}`, async (request) => {
          await t.outbox.enqueue(tx, { topic, payload: i });
          request.end();
        });
      }
    });
    const relay = t.outbox.relay({ publisher: { system: "memory", publish: async (m) => void received.push(m) }, pollInterval: 20 });
    const latencies = await otel.total("txonce.outbox.publish.latency");
    await relay.start();
    try {
      await until(() => received.length === 8 && otel.spansNamed(`send ${orders}`).length + otel.spansNamed(`send ${refunds}`).length === 2);
    } finally {
      await relay.stop();
    }
    for (const [topic, n] of [[orders, 5], [refunds, 3]] as const) {
      const sends = otel.spansNamed(`send ${topic}`);
      expect(sends).toHaveLength(1);
      const [send] = sends;
      const creates = otel.spansNamed(`create ${topic}`);
      expect(creates).toHaveLength(n);
      expect(send!.kind).toBe(SpanKind.CLIENT);
      expect(send!.attributes).toMatchObject({ "messaging.system": "memory", "messaging.destination.name": topic, "messaging.batch.message_count": n });
      expect(send!.attributes["messaging.message.id"]).toBeUndefined();
      expect(new Set(send!.links.map((l) => l.context.spanId))).toEqual(new Set(creates.map((c) => c.spanContext().spanId)));
      expect(new Set(send!.links.map((l) => l.context.traceId))).toEqual(new Set(creates.map((c) => c.spanContext().traceId)));
      expect(send!.status.code).not.toBe(SpanStatusCode.ERROR);
      // Each message still carries its own creation context to the broker, not the batch span's.
      for (const m of received.filter((m) => m.topic === topic)) {
        const create = creates.find((c) => c.attributes["messaging.message.id"] === m.id)!;
        expect(m.traceContext).toEqual({ traceparent: `00-${create.spanContext().traceId}-${create.spanContext().spanId}-01` });
      }
    }
    expect(await otel.total("messaging.client.operation.duration", { "messaging.destination.name": orders })).toBe(1); // one operation
    expect(await otel.total("messaging.client.sent.messages", { "messaging.destination.name": orders })).toBe(5);
    expect((await otel.total("txonce.outbox.publish.latency")) - latencies).toBe(8);
  });

  test("a failed message in a batch: the span's status, count and an event naming it; the metrics by outcome", async () => {
    const t = txonce(db.prisma);
    const topic = unique("partial");
    let failedId: string | undefined;
    const publish = async (m: OutboxMessage) => {
      if (m.payload === "bad" && failedId === undefined) {
        failedId = m.id;
        throw new PublishRejectedError("broker said no", m.id);
      }
    };
    await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, [{ topic, payload: 1 }, { topic, payload: "bad" }, { topic, payload: 3 }]));
    const latencies = await otel.total("txonce.outbox.publish.latency");
    const relay = t.outbox.relay({ publisher: { system: "memory", publish }, pollInterval: 20, backoff: { initial: 10, max: 10 }, logger: false });
    await relay.start();
    try {
      await until(() => otel.spansNamed(`send ${topic}`).length === 2); // the batch, then the retry
    } finally {
      await relay.stop();
    }
    const [batch, retry] = otel.spansNamed(`send ${topic}`).sort((a, b) => (b.attributes["messaging.batch.message_count"] as number) - (a.attributes["messaging.batch.message_count"] as number));
    expect(batch!.attributes).toMatchObject({ "messaging.batch.message_count": 3, "error.type": "PublishRejectedError", "txonce.outbox.send.failed_count": 1 });
    expect(batch!.status).toEqual({ code: SpanStatusCode.ERROR, message: "1 of 3 messages failed: broker said no" });
    expect(batch!.events.map((e) => [e.name, e.attributes?.["messaging.message.id"], e.attributes?.["exception.type"]])).toEqual([["exception", failedId, "PublishRejectedError"]]);
    expect(retry!.attributes).toMatchObject({ "messaging.batch.message_count": 1, "messaging.message.id": failedId });
    expect(retry!.status.code).not.toBe(SpanStatusCode.ERROR);
    const attrs = { "messaging.destination.name": topic };
    expect(await otel.total("messaging.client.sent.messages", attrs)).toBe(4);
    expect(await otel.total("messaging.client.sent.messages", { ...attrs, "error.type": "PublishRejectedError" })).toBe(1);
    expect((await otel.total("txonce.outbox.publish.latency")) - latencies).toBe(3);
    expect(await otel.total("messaging.client.operation.duration", { ...attrs, "error.type": "PublishRejectedError" })).toBe(1);
  });

  test("the links read the stored contexts: a traceparent alone, one with a tracestate, and none from an invalid one", async () => {
    const topic = unique("stored");
    const ids = (n: number) => [n.toString(16).padStart(32, "0"), n.toString(16).padStart(16, "0")] as const;
    const [t1, s1] = ids(1);
    const [t2, s2] = ids(2);
    const [t5, s5] = ids(5);
    const message = (i: number, traceContext: Record<string, string>): OutboxMessage => ({
      id: `0197f0aa-0000-7000-8000-${String(i).padStart(12, "0")}`, seq: String(i), topic, key: null, payload: i,
      encodedPayload: String(i), headers: {}, createdAt: new Date(), attempts: 1, traceContext,
    });
    const messages = [
      message(1, { traceparent: `00-${t1}-${s1}-00` }),
      message(2, { traceparent: `00-${t2}-${s2}-01`, tracestate: "vendor=v" }),
      message(3, { traceparent: `00-${"0".repeat(32)}-${s1}-01` }), // an invalid trace id
      message(4, { traceparent: "not a traceparent" }),
      message(5, { traceparent: `00-${t5}-${s5}-0b` }), // after the span was started for message 3's headers; flags 0x0b
      message(6, { traceparent: `00-${t1}-${"0".repeat(16)}-01` }), // an invalid span id
      message(7, { traceparent: `00-${"A".repeat(32)}-${s1}-01` }), // uppercase hex
      message(8, { traceparent: `00-${t1}-${s1}-01-` }), // one character too many
    ];
    const handed: OutboxMessage[] = [];
    const telemetry = outboxTelemetry({})!;
    const batch = telemetry.sendBatch("memory");
    for (const m of messages) {
      await batch.send(m, async (h) => void handed.push(h));
      batch.ended(m);
    }
    batch.end();
    telemetry.flush(); // what a relay does when it stops; otherwise in the event loop's next check phase
    const [send] = otel.spansNamed(`send ${topic}`);
    expect(send!.attributes["messaging.batch.message_count"]).toBe(8);
    expect(send!.kind).toBe(SpanKind.CLIENT); // its first message has a creation context
    expect(send!.links.map((l) => [l.context.traceId, l.context.spanId, l.context.traceFlags, l.context.traceState?.get("vendor")])).toEqual([
      [t1, s1, 0, undefined],
      [t2, s2, 1, "v"],
      [t5, s5, 11, undefined],
    ]);
    // The messages with no valid creation context are handed over with the batch span's.
    const own = { traceparent: `00-${send!.spanContext().traceId}-${send!.spanContext().spanId}-01` };
    expect(handed.map((h) => h.traceContext)).toEqual([messages[0]!.traceContext, messages[1]!.traceContext, own, own, messages[4]!.traceContext, own, own, own]);
  });

  test("a send span starts when its batch's first message is handed over and ends when its last publish ended, though it is recorded later", async () => {
    const topic = unique("timed");
    const telemetry = outboxTelemetry({})!;
    const batch = telemetry.sendBatch("memory");
    const m: OutboxMessage = {
      id: "0197f0aa-0000-7000-8000-000000000011", seq: "1", topic, key: null, payload: 1, encodedPayload: "1", headers: {},
      createdAt: new Date(), attempts: 1, traceContext: { traceparent: `00-${"1".repeat(32)}-${"2".repeat(16)}-01` },
    };
    const handedAt = Date.now();
    await batch.send(m, () => sleep(50));
    batch.ended(m);
    batch.end();
    const endedAt = Date.now();
    await sleep(30); // recorded in the next check phase, well before this
    const [send] = otel.spansNamed(`send ${topic}`);
    const ms = ([s, ns]: [number, number]) => s * 1000 + ns / 1e6;
    expect(ms(send!.startTime)).toBeGreaterThanOrEqual(handedAt - 2);
    expect(ms(send!.startTime)).toBeLessThan(handedAt + 10);
    expect(ms(send!.endTime)).toBeLessThanOrEqual(endedAt + 2);
    expect(ms(send!.duration)).toBeGreaterThanOrEqual(45);
  });

  test("a batch's outcomes are written before its telemetry is recorded: the next batch waits for that write, not for the recording", async () => {
    // The relay over node-postgres, its pool watched: at each write of outcomes, was the batch's
    // send span already recorded? Both run at the end of the batch's event-loop turn; the
    // recording first would hold up the write (and so the next batch) by its own Node CPU.
    const topic = unique("ordered");
    const spansAtWrite: number[] = [];
    const watched = {
      query: (text: string, values?: unknown[]) => {
        if (text === sql.recordProgress && String(values?.[0]).includes('"outcome":"published"')) spansAtWrite.push(otel.spansNamed(`send ${topic}`).length);
        return db.pool.query(text, values);
      },
      connect: () => db.pool.connect(),
    };
    const relayer = txoncePg(watched);
    await db.prisma.$transaction((tx) => txonce(db.prisma).outbox.enqueueMany(tx, [1, 2, 3].map((n) => ({ topic, payload: n }))));
    const received: OutboxMessage[] = [];
    const relay = relayer.outbox.relay({ publisher: async (m) => void (m.topic === topic && received.push(m)), pollInterval: 20 });
    await relay.start();
    try {
      await until(() => received.length === 3 && otel.spansNamed(`send ${topic}`).length === 1);
    } finally {
      await relay.stop();
    }
    expect(otel.spansNamed(`send ${topic}`)[0]!.attributes["messaging.batch.message_count"]).toBe(3);
    expect(spansAtWrite.length).toBeGreaterThan(0);
    expect(spansAtWrite[0]).toBe(0);
  });

  test("a throw while a batch's telemetry is recorded, after the relay has moved on, goes to the OpenTelemetry diag logger, not out of the process", async () => {
    const errors: unknown[][] = [];
    diag.setLogger({ error: (...args: unknown[]) => void errors.push(args), warn() {}, info() {}, debug() {}, verbose() {} }, DiagLogLevel.ERROR);
    try {
      const batch = outboxTelemetry({})!.sendBatch("memory");
      const m: OutboxMessage = {
        id: "0197f0aa-0000-7000-8000-000000000009", seq: "1", topic: unique("throws"), key: null, payload: 1,
        encodedPayload: "1", headers: {}, createdAt: new Date(), attempts: 1, traceContext: {},
      };
      await batch.send(m, async () => {});
      const hostile = new Error("refused");
      Object.defineProperty(hostile, "message", { get: () => { throw new Error("a getter that throws"); } });
      batch.ended(m, hostile);
      batch.end();
      await new Promise((resolve) => setImmediate(resolve)); // the check phase that records it
      expect(errors.map(([message]) => message)).toEqual(["txonce: recording the telemetry of a relay's batch failed"]);
    } finally {
      diag.disable();
    }
  });

  test("a message enqueued outside any trace gets the send span's context in its headers", async () => {
    const t = txonce(db.prisma, { telemetry: { enabled: false } }); // the producer is not traced
    const relayer = txonce(db.prisma);
    const received: OutboxMessage[] = [];
    const topic = unique("untraced");
    await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic, payload: 1 }));
    const relay = relayer.outbox.relay({ publisher: async (m) => void received.push(m), pollInterval: 20 });
    await relay.start();
    try {
      await until(() => received.length === 1);
      await until(() => otel.spansNamed(`send ${topic}`).length === 1);
    } finally {
      await relay.stop();
    }
    const [send] = otel.spansNamed(`send ${topic}`);
    expect(send!.kind).toBe(SpanKind.PRODUCER);
    expect(send!.links).toEqual([]);
    expect(send!.attributes["messaging.system"]).toBe("txonce");
    expect(received[0]!.traceContext).toEqual({ traceparent: `00-${send!.spanContext().traceId}-${send!.spanContext().spanId}-01` });
    // A consumer continues it: its process span is the send span's child, in its trace.
    await continueTrace({ headers: headersOf(received[0]!), system: "memory" }, async () => {});
    const [process] = otel.spansNamed(`process ${topic}`);
    expect(parentOf(process!, otel.spans.getFinishedSpans())).toBe(send);
  });
});

describe("publishers carry the creation context", () => {
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const message: OutboxMessage = {
    id: "01a21fde-431c-7470-ba69-9b057936d5cf",
    seq: "1",
    topic: "orders.created",
    key: null,
    payload: 1,
    encodedPayload: "1",
    headers: { traceparent: "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01", "x-app": "a" },
    createdAt: new Date(),
    attempts: 1,
    traceContext: { traceparent, tracestate: "vendor=1" },
  };

  test("in the headers (AMQP, NATS, webhook), over a same-named header of the message's own", () => {
    expect(headersOf(message)).toEqual({ traceparent, tracestate: "vendor=1", "x-app": "a", "txonce-message-id": message.id, "txonce-topic": "orders.created" });
  });

  test("in a Redis stream entry's own fields, which continueTrace reads as they are", async () => {
    const fields = redisStreamFields(message);
    expect(fields).toMatchObject({ traceparent, tracestate: "vendor=1", id: message.id, topic: "orders.created" });
    let seen: string | undefined;
    await continueTrace({ headers: fields, system: "redis", topic: fields.topic, id: fields.id }, async () => {
      seen = trace.getActiveSpan()!.spanContext().traceId;
    });
    expect(seen).toBe("0af7651916cd43dd8448eb211c80319c");
    expect(otel.spansNamed("process orders.created")[0]!.parentSpanContext!.spanId).toBe("b7ad6b7169203331");
  });

  test("in the webhook's HTTP request headers", async () => {
    let received: IncomingHttpHeaders | undefined;
    const server = createServer((req, res) => {
      received = req.headers;
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, resolve));
    try {
      await webhookPublisher({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook` }).publish(message);
    } finally {
      server.close();
    }
    expect(received).toMatchObject({ traceparent, tracestate: "vendor=1", "idempotency-key": message.id });
  });
});

describe("cleanup", () => {
  test("rows deleted per table, run duration, and runs skipped while another process holds the lock", async () => {
    const t = txonce(db.prisma);
    await db.pool.query(
      `INSERT INTO txonce_idempotency_keys (scope, key, result, expires_at)
       SELECT 'cleanup-test', 'k' || i, '1', now() - interval '1 hour' FROM generate_series(1, 25) AS i`,
    );
    const deleted = (table: string) => otel.total("txonce.cleanup.rows.deleted", { "db.collection.name": table });
    const before = await deleted("txonce_idempotency_keys");
    const result = await t.cleanup({ batchSize: 10 });
    expect(result.tables.txonce_idempotency_keys!.deleted).toBeGreaterThanOrEqual(25);
    expect((await deleted("txonce_idempotency_keys")) - before).toBe(result.tables.txonce_idempotency_keys!.deleted);
    expect(await otel.total("txonce.cleanup.duration", { "txonce.cleanup.finished": true })).toBeGreaterThanOrEqual(1);
    const [span] = otel.spansNamed("txonce cleanup");
    expect(span!.attributes).toMatchObject({ "txonce.cleanup.finished": true, "txonce.cleanup.deleted.txonce_idempotency_keys": result.deleted - (result.tables.txonce_outbox_messages?.deleted ?? 0) });

    // Another replica holds the lock: the scheduled run is skipped and counted.
    const holder = await db.pool.connect();
    try {
      await holder.query("BEGIN");
      expect((await holder.query(sql.tryCleanupLock)).rows[0].locked).toBe(true);
      let skips = 0;
      const schedule = t.scheduleCleanup({ every: "1h", onSkip: () => skips++ });
      await until(() => skips === 1);
      await schedule.stop();
      expect(await otel.total("txonce.cleanup.runs.skipped")).toBe(1);
    } finally {
      await holder.query("ROLLBACK");
      holder.release();
    }
  });
});
