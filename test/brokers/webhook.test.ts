/**
 * The webhook publisher against a local HTTP server (port 0): what it sends, 2xx as success, a
 * failing endpoint (5xx, then 2xx) retried by the relay, permanent and transient statuses,
 * timeouts, an unreachable endpoint; and the end-to-end proof with the inbox.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { txonce } from "../../src/adapters/prisma.js";
import type { OutboxMessage } from "../../src/index.js";
import { isPermanentStatus, jsonFormat, webhookPublisher, WebhookStatusError } from "../../src/outbox/publishers/webhook.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { endToEnd, until } from "./support.js";

interface Request {
  path: string;
  method: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A local endpoint; `respond` decides each answer (status, or "hang" to never answer). */
async function endpoint(respond: (request: Request, count: number) => number | "hang" | Promise<number>) {
  const requests: Request[] = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")));
    req.on("end", () => {
      const request = { path: req.url ?? "", method: req.method ?? "", headers: req.headers, body };
      requests.push(request);
      void Promise.resolve(respond(request, requests.length)).then((status) => {
        if (status === "hang") return;
        res.writeHead(status, { "content-type": "text/plain" }).end(status >= 300 ? `status ${status}` : "ok");
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    base,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const message = (over: Partial<OutboxMessage> = {}): OutboxMessage => ({
  id: "0197f000-0000-7000-8000-0000000000bb",
  seq: "1",
  topic: "orders.created",
  key: null,
  payload: { n: 1 },
  encodedPayload: '{"json":{"n":1}}',
  headers: {},
  createdAt: new Date(),
  attempts: 1,
  ...over,
});

describe("webhook publisher", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  test("POSTs the codec text with Idempotency-Key, Content-Type and the headers; 2xx is success", async () => {
    const server = await endpoint(() => 204);
    const t = txonce(db.prisma);
    const publisher = webhookPublisher({
      url: (m) => `${server.base}/hooks/${m.topic}`,
      headers: (m) => ({ authorization: "Bearer secret", "x-signed": `sig-${m.id}`, "idempotency-key": "ignored" }),
    });
    const published: string[] = [];
    const relay = t.outbox.relay({ publisher, pollInterval: 20, onPublished: (ms) => published.push(...ms.map((m) => m.id)) });
    await relay.start();
    try {
      const payload = { orderId: 42, at: new Date("2026-03-01T12:00:00Z"), big: 10n };
      const id = await db.prisma.$transaction((tx) =>
        t.outbox.enqueue(tx, { topic: "orders.created", key: "order-42", payload, headers: { "x-trace": "trace-1" } }),
      );
      await until(() => published.includes(id));
      expect(server.requests).toHaveLength(1);
      const [request] = server.requests;
      expect(request).toMatchObject({ method: "POST", path: "/hooks/orders.created" });
      expect(request!.headers).toMatchObject({
        "idempotency-key": id,
        "content-type": "application/vnd.txonce+json",
        authorization: "Bearer secret",
        "x-signed": `sig-${id}`,
        "x-trace": "trace-1",
        "txonce-message-id": id,
        "txonce-topic": "orders.created",
        "txonce-key": "order-42",
      });
      expect(t.codec.decode(request!.body)).toStrictEqual(payload);
    } finally {
      await relay.stop();
      await server.close();
    }
  });

  test("a failing endpoint (503, then 200): the relay reports the failure, retries with the same Idempotency-Key, then marks it", async () => {
    const server = await endpoint((_r, count) => (count === 1 ? 503 : 200));
    const t = txonce(db.prisma);
    const failures: { id: string; error: unknown }[] = [];
    const relay = t.outbox.relay({
      publisher: webhookPublisher({ url: `${server.base}/flaky`, format: jsonFormat }),
      pollInterval: 20,
      backoff: { initial: 50, max: 100 },
      onFailed: (m, error) => failures.push({ id: m.id, error }),
    });
    await relay.start();
    try {
      const id = await db.prisma.$transaction((tx) => t.outbox.enqueue(tx, { topic: "flaky", payload: { n: 1 } }));
      await until(async () => (await db.pool.query("SELECT published_at FROM txonce_outbox_messages WHERE id = $1", [id])).rows[0].published_at !== null);
      expect(failures).toHaveLength(1);
      expect(failures[0]!.id).toBe(id);
      expect(failures[0]!.error).toBeInstanceOf(WebhookStatusError);
      expect(failures[0]!.error).toMatchObject({ status: 503, permanent: false, code: "TXONCE_PUBLISH_REJECTED", messageId: id });
      expect(server.requests.map((r) => r.headers["idempotency-key"])).toEqual([id, id]);
      expect(server.requests.map((r) => JSON.parse(r.body))).toEqual([{ n: 1 }, { n: 1 }]);
      expect(server.requests[0]!.headers["content-type"]).toBe("application/json");
      const { rows } = await db.pool.query("SELECT attempts, last_error FROM txonce_outbox_messages WHERE id = $1", [id]);
      expect(rows[0].attempts).toBe(2);
      expect(rows[0].last_error).toMatch(/503/);
    } finally {
      await relay.stop();
      await server.close();
    }
  });

  test("4xx other than 408 and 429 is marked permanent (the relay dead-letters it at once), 408/429/5xx transient; redirects are not followed", async () => {
    const statuses = [400, 401, 404, 409, 422, 408, 429, 500, 502, 301];
    const server = await endpoint((r) => Number(r.path.slice(1)));
    try {
      for (const status of statuses) {
        const publisher = webhookPublisher({ url: `${server.base}/${status}` });
        const error = await publisher.publish(message()).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error, String(status)).toBeInstanceOf(WebhookStatusError);
        expect(error).toMatchObject({ status, permanent: isPermanentStatus(status) });
      }
      expect(statuses.filter(isPermanentStatus)).toEqual([400, 401, 404, 409, 422, 301]);
      expect(server.requests).toHaveLength(statuses.length); // the 301 was not followed
      await webhookPublisher({ url: `${server.base}/200` }).publish(message());
      await webhookPublisher({ url: new URL(`${server.base}/201`) }).publish(message());
    } finally {
      await server.close();
    }
  });

  test("an endpoint that does not answer in time, and one that is not listening, fail the publish", async () => {
    const server = await endpoint(() => "hang");
    try {
      const started = Date.now();
      await expect(webhookPublisher({ url: server.base, timeout: 200 }).publish(message())).rejects.toThrow(/within 200 ms/);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      await server.close();
    }
    const closed = await endpoint(() => 200);
    await closed.close();
    await expect(webhookPublisher({ url: closed.base }).publish(message())).rejects.toThrow(/fetch failed/);
  });

  test("end to end: every change has exactly one effect at the receiver, also when the relay is killed after publishing", async () => {
    let handler: ((body: string, id: string) => Promise<void>) | undefined;
    const server = await endpoint(async (request) => {
      if (!handler) return 503;
      await handler(request.body, request.headers["idempotency-key"] as string);
      return 200;
    });
    try {
      await endToEnd({
        db,
        topic: "charges.created",
        publisher: () => webhookPublisher({ url: `${server.base}/ledger` }),
        processEnv: { PUBLISHER: "webhook", PUBLISHER_OPTIONS: JSON.stringify({ url: `${server.base}/ledger` }) },
        deliveriesAfterCrash: 2,
        consume: async (handle) => {
          handler = (body, id) => handle({ id, body });
          return { stop: async () => void (handler = undefined) };
        },
      });
    } finally {
      await server.close();
    }
  });
});
