// docs/outbox.md's Kafka publisher, to copy into your project; compiled by `npm run typecheck`.
// kafkajs plugs into the relay through the same `Publisher` contract as txonce's own publishers.
// It is written against the few kafkajs members it uses, so txonce needs no kafkajs types; in
// your code, pass a real `kafka.producer()` (it matches `KafkaProducerLike`).
import type { OutboxMessage, Publisher } from "txonce";

/** The subset of a kafkajs `Producer` this publisher uses. */
export interface KafkaProducerLike {
  send(record: {
    topic: string;
    acks?: number;
    timeout?: number;
    messages: { key?: string | null; value: string | Buffer | null; headers?: Record<string, string> }[];
  }): Promise<unknown>;
}

/**
 * A publisher for Kafka: `send` with `acks: -1` resolves once all in-sync replicas have the record,
 * which is the broker "having" the message. The ordering key becomes the Kafka key, so a key's
 * messages land in one partition in the outbox's order (keyless messages use their id, spreading
 * them over partitions). Kafka does not dedupe across producer sessions, so a message republished
 * after a relay crash is a second record: consumers dedupe with the inbox, on `txonce-message-id`.
 */
export function kafkaPublisher(producer: KafkaProducerLike, options: { topic?: (message: OutboxMessage) => string } = {}): Publisher {
  const topicOf = options.topic ?? ((message: OutboxMessage) => message.topic);
  return {
    async publish(message) {
      await producer.send({
        topic: topicOf(message),
        acks: -1,
        messages: [
          {
            key: message.key ?? message.id,
            value: message.encodedPayload, // txonce's codec text: consumers decode it with codec.decode
            headers: {
              ...message.headers,
              "txonce-message-id": message.id,
              "txonce-topic": message.topic,
              "content-type": "application/vnd.txonce+json",
            },
          },
        ],
      });
    },
  };
}

// Wiring it up, with kafkajs:
//
//   import { Kafka } from "kafkajs";
//   const producer = new Kafka({ clientId: "orders", brokers: ["kafka:9092"] }).producer({ idempotent: true });
//   await producer.connect();
//   const relay = outbox.relay({ publisher: kafkaPublisher(producer) });
//   await relay.start();
//   // on shutdown: await relay.stop(); await producer.disconnect();
