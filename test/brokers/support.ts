/**
 * What the broker suites share: finding the broker (an environment variable or the default
 * address), the skip-or-fail switch, and the scenarios each broker runs (unreachable broker, end to end).
 *
 * A suite that cannot reach its broker warns loudly (with the URL) and is skipped, so `npm test`
 * stays green on a machine without brokers; with TXONCE_REQUIRE_BROKERS=1 (as in .ci/run) it
 * fails instead.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { expect, test } from "vitest";
import type { Publisher } from "../../src/index.js";
import { txonce } from "../../src/adapters/prisma.js";
import type { TestDatabase } from "../support/database.js";

import { sleep, until } from "../support/wait.js";

export { sleep, until };

export const requireBrokers = process.env.TXONCE_REQUIRE_BROKERS === "1";

/**
 * Whether the broker answers `probe` within `timeoutMs`. If not: a loud warning and `false`, or,
 * with TXONCE_REQUIRE_BROKERS=1, a failing test in the calling file (and `false`).
 */
export async function brokerAvailable(name: string, variable: string, url: string, probe: () => Promise<void>, timeoutMs = 5_000): Promise<boolean> {
  let failure: unknown;
  try {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      probe(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    return true;
  } catch (error) {
    failure = error;
  }
  const reason = failure instanceof Error ? failure.message : String(failure);
  const text = `${name} is not reachable at ${url} (${variable}): ${reason}`;
  if (requireBrokers) {
    test(`${name} is reachable at ${url} (TXONCE_REQUIRE_BROKERS=1)`, () => {
      throw new Error(`${text}. TXONCE_REQUIRE_BROKERS=1 is set, so this fails instead of skipping.`);
    });
  } else {
    console.warn(
      `\n${"!".repeat(100)}\n!! SKIPPING the ${name} suite: ${text}.\n!! Start ${name} or set ${variable}; set TXONCE_REQUIRE_BROKERS=1 to fail instead.\n${"!".repeat(100)}\n`,
    );
  }
  return false;
}

/** A unique name for queues, subjects and streams, so suites and runs never share one. */
export const uniqueName = (prefix: string) => `${prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;

/** A relay in a child process (test/fixtures/broker-relay-process.ts) with a real publisher. */
export function startRelayProcess(env: Record<string, string>) {
  const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "..", "fixtures", "broker-relay-process.ts")], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => d.toString().includes("started") && resolve());
    child.on("exit", (code, signal) => reject(new Error(`the relay process exited (${code ?? signal}) before it started`)));
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  return { child, ready, exited };
}

export function stopProcess(child: ChildProcess) {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.on("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

/** One delivery as the broker's own client received it. */
export interface Delivery {
  /** The outbox message id, as the broker carried it (message id, Nats-Msg-Id, stream field). */
  id: string;
  /** The body: txonce's codec text. */
  body: string;
}

export interface EndToEndOptions {
  db: TestDatabase;
  /** The topic the producer enqueues to (routed to the consumer's queue, subject or stream). */
  topic: string;
  /** A fresh publisher for the in-process relays. */
  publisher: () => Publisher & { close?(): Promise<void> };
  /** Environment for the crashing relay process: PUBLISHER and PUBLISHER_OPTIONS. */
  processEnv: Record<string, string>;
  /** Starts consuming with the broker's own client; `handle` returns once the delivery may be acked. */
  consume: (handle: (delivery: Delivery) => Promise<void>) => Promise<{ stop(): Promise<void> }>;
  /**
   * How many times the broker delivers the message whose relay was killed after publishing:
   * 2 for RabbitMQ and Redis; 1 for JetStream, which drops the second publish as a duplicate.
   */
  deliveriesAfterCrash: number;
}

/**
 * The end-to-end proof on a real PostgreSQL and a real broker: a producer commits charges, each
 * with its event, through withIdempotency and outbox.enqueue (and a retried producer call
 * enqueues nothing twice); relays publish; a consumer with the inbox (withIdempotency keyed by
 * the message id, scope "consumer:ledger") applies them. Every charge has exactly one effect,
 * also for a message published twice because its relay was killed after publishing and before
 * marking.
 */
export async function endToEnd(options: EndToEndOptions) {
  const { db, topic } = options;
  await db.pool.query("CREATE TABLE IF NOT EXISTS consumer_effects (message_id uuid NOT NULL, charge_id int NOT NULL, amount numeric NOT NULL)");
  await db.pool.query("TRUNCATE consumer_effects, charges, txonce_outbox_messages, txonce_idempotency_keys");
  await db.pool.query("INSERT INTO accounts (id, balance) VALUES ('e2e', 0) ON CONFLICT (id) DO NOTHING");
  const producer = txonce(db.prisma);
  const consumerSide = txonce(db.prisma);

  const deliveries: string[] = [];
  let applied = 0;
  const consumer = await options.consume(async (delivery) => {
    deliveries.push(delivery.id);
    const event = consumerSide.codec.decode<{ chargeId: number; amount: string }>(delivery.body);
    await consumerSide.withIdempotency(
      delivery.id,
      async (tx) => {
        applied++;
        await tx.$executeRaw`INSERT INTO consumer_effects (message_id, charge_id, amount) VALUES (${delivery.id}::uuid, ${event.chargeId}, ${event.amount}::numeric)`;
      },
      { scope: "consumer:ledger" },
    );
  });

  const charge = (orderKey: string, amount: string) =>
    producer.withIdempotency(orderKey, async (tx) => {
      const created = await tx.charge.create({ data: { accountId: "e2e", amount } });
      await tx.account.update({ where: { id: "e2e" }, data: { balance: { increment: amount } } });
      await producer.outbox.enqueue(tx, { topic, key: "e2e", payload: { chargeId: created.id, amount }, headers: { order: orderKey } });
      return created.id;
    });
  const effects = async () =>
    (await db.pool.query<{ charge_id: number; n: number }>("SELECT charge_id, count(*)::int AS n FROM consumer_effects GROUP BY charge_id")).rows;

  try {
    // 1. Normal flow, with a client retrying some of its calls: one charge, one event, one effect.
    const publisher = options.publisher();
    const relay = producer.outbox.relay({ publisher, pollInterval: 20, listen: { connectionString: db.url } });
    await relay.start();
    const chargeIds: number[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const id = await charge(`order-${i}`, `${i + 1}.50`);
        if (i % 5 === 0) expect(await charge(`order-${i}`, `${i + 1}.50`)).toBe(id); // a retried request
        chargeIds.push(id);
      }
      await until(async () => (await effects()).length === 20, 20_000, "20 effects at the consumer");
    } finally {
      await relay.stop();
      await publisher.close?.();
    }

    // 2. A relay killed after publishing and before marking: the message is published again.
    const lastId = await charge("order-crash", "100.00");
    chargeIds.push(lastId);
    const [{ id: messageId }] = (await db.pool.query<{ id: string }>("SELECT id FROM txonce_outbox_messages WHERE published_at IS NULL")).rows as [{ id: string }];
    const crashing = startRelayProcess({
      ...options.processEnv,
      DATABASE_URL: db.url,
      RELAY_CRASH_AFTER_PUBLISH: "1",
      RELAY_LEASE_MS: "1000",
    });
    await crashing.ready;
    await crashing.exited;
    expect(crashing.child.signalCode).toBe("SIGKILL");
    const { rows: unmarked } = await db.pool.query("SELECT published_at, attempts FROM txonce_outbox_messages WHERE id = $1", [messageId]);
    // Published to the broker, never marked. The attempt is charged when the message is handed to
    // the publisher, written just after: the kill may come before that write (never two charges).
    expect(unmarked[0].published_at).toBeNull();
    const chargedBeforeKill: number = unmarked[0].attempts;
    expect([0, 1]).toContain(chargedBeforeKill);
    await until(() => deliveries.includes(messageId), 10_000, "the crashed relay's publish reaching the consumer");

    const survivorPublisher = options.publisher();
    const republished: string[] = [];
    const survivor = producer.outbox.relay({ publisher: survivorPublisher, pollInterval: 50, onPublished: (ms) => republished.push(...ms.map((m) => m.id)) });
    await survivor.start();
    try {
      await until(() => republished.includes(messageId), 10_000, "the survivor republishing after the lease");
      await until(() => deliveries.filter((d) => d === messageId).length === options.deliveriesAfterCrash, 10_000, "the duplicate delivery");
      await sleep(300); // anything else the broker might still deliver
    } finally {
      await survivor.stop();
      await survivorPublisher.close?.();
    }
    const { rows: marked } = await db.pool.query("SELECT published_at, attempts FROM txonce_outbox_messages WHERE id = $1", [messageId]);
    expect(marked[0].published_at).toBeInstanceOf(Date);
    expect(marked[0].attempts).toBe(chargedBeforeKill + 1);
    expect(deliveries.filter((d) => d === messageId)).toHaveLength(options.deliveriesAfterCrash);

    // Exactly one effect per charge, and the inbox ran each operation once.
    const rows = await effects();
    expect(rows.map((r) => r.charge_id).sort((a, b) => a - b)).toEqual([...chargeIds].sort((a, b) => a - b));
    expect(rows.every((r) => r.n === 1)).toBe(true);
    expect(applied).toBe(21);
    const { rows: sums } = await db.pool.query(
      "SELECT (SELECT sum(amount) FROM consumer_effects)::text AS consumed, (SELECT balance FROM accounts WHERE id = 'e2e')::text AS produced",
    );
    expect(sums[0].consumed).toBe(sums[0].produced);
  } finally {
    await consumer.stop();
  }
}

/**
 * The unreachable-broker scenario every publisher runs: three messages whose publishes all fail
 * (each attempted at least twice, with the failure reported per message), none marked published,
 * each keeping an error matching `lastErrorLike` (a SQL LIKE pattern).
 */
export async function expectRetriedWhileUnreachable(db: TestDatabase, publisher: Publisher & { close(): Promise<void> }, lastErrorLike = "%") {
  const t = txonce(db.prisma);
  await db.pool.query("TRUNCATE txonce_outbox_messages");
  const failed = new Map<string, number>();
  const relay = t.outbox.relay({
    publisher,
    pollInterval: 20,
    backoff: { initial: 30, max: 60 },
    onFailed: (m) => failed.set(m.id, (failed.get(m.id) ?? 0) + 1),
  });
  await relay.start();
  try {
    const ids = await db.prisma.$transaction((tx) => t.outbox.enqueueMany(tx, [1, 2, 3].map((n) => ({ topic: "down", payload: n }))));
    await until(() => ids.every((id) => (failed.get(id) ?? 0) >= 2));
    const { rows } = await db.pool.query(
      "SELECT count(*)::int AS n FROM txonce_outbox_messages WHERE published_at IS NULL AND last_error LIKE $1",
      [lastErrorLike],
    );
    expect(rows[0].n).toBe(3);
    expect((await t.outbox.backlog()).pending).toBe(3);
  } finally {
    await relay.stop();
    await publisher.close();
    await db.pool.query("TRUNCATE txonce_outbox_messages");
  }
}
