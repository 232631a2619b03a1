/**
 * What a reader of README.md and docs/ is assumed to have when a TypeScript sample uses it
 * without showing where it comes from: their Prisma client, their logger, the broker clients of
 * the consumers. `npm run typecheck` compiles every ```ts block of those pages with these
 * globals (scripts/check-samples.ts); a sample's own imports and declarations shadow them.
 * Compiled from .samples/, so relative paths start there.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
import type { Channel } from "amqplib";
import type { createClient } from "redis";
import type { Txonce } from "txonce/prisma";
import type { kafkaPublisher as kafkaPublisherOfTheExample } from "../docs/examples/kafka-publisher.js";
import type { PrismaClient as RepositoryPrismaClient } from "./generated/prisma/client.js";

declare global {
  /** The reader's Prisma client: this repository's own, whose models include Account and Charge. */
  const prisma: RepositoryPrismaClient;
  /** txonce on that client, as the outbox page makes it: `const t = txonce(prisma)`. */
  const t: Txonce<RepositoryPrismaClient>;
  /** The reader's authentication: whose request this is (an account id). */
  function accountOf(request: { headers: Record<string, string | string[] | undefined> }): string;
  /** A logger (pino-style) and a metrics client. */
  const logger: { warn(fields: object, message: string): void; error(fields: object, message: string): void };
  const metrics: { gauge(name: string, value: number): void };
  /** A consumer's amqplib channel, JetStream client and node-redis client. */
  const channel: Channel;
  const js: JetStreamClient;
  const redis: ReturnType<typeof createClient>;
  /** The inbox handler of docs/outbox.md, used by each broker's consumer loop. */
  function handle(messageId: string, body: string): Promise<void>;
  /** The reader's span exporter (an OTLP exporter to their collector). */
  const spanExporter: SpanExporter;
  /** docs/examples/kafka-publisher.ts, copied into the reader's project. */
  const kafkaPublisher: typeof kafkaPublisherOfTheExample;
}
