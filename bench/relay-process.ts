// A relay in a process of its own for bench/outbox-kills.ts: txonce/pg, a publisher that does
// nothing but append the message id to a file (synchronously, so the line survives a SIGKILL),
// so the bench can count hand-offs to the publisher.
//   DATABASE_URL, RELAY_LEASE_MS, RELAY_BATCH_SIZE, RELAY_WORKERS, RELAY_PUBLISH_LOG,
//   RELAY_PUBLISH_MS (each publish waits this long after the hand-off, like a broker's confirm)
import { appendFileSync } from "node:fs";
import pg from "pg";
import { txonce } from "../src/adapters/pg.js";

const number = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: number("RELAY_WORKERS", 1) + 2 });
const log = process.env.RELAY_PUBLISH_LOG!;
const leaseMs = number("RELAY_LEASE_MS", 30_000);
const publishMs = number("RELAY_PUBLISH_MS", 0);

const relay = txonce(pool).outbox.relay({
  batchSize: number("RELAY_BATCH_SIZE", 100),
  workers: number("RELAY_WORKERS", 1),
  lease: leaseMs,
  // Half the lease: a key's run may go on publishing for the other half.
  publishTimeout: Math.min(10_000, leaseMs / 2),
  pollInterval: 50,
  publisher: async (message) => {
    appendFileSync(log, `${message.id}\n`);
    if (publishMs > 0) await new Promise((resolve) => setTimeout(resolve, publishMs));
  },
});
await relay.start();
process.stdout.write("started\n");
process.on("SIGTERM", () => {
  void relay.stop().then(() => pool.end()).then(() => process.exit(0));
});
