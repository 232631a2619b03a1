/** The advisory lock of an idempotency key: what a claim takes, and what `keys.forget` waits for. */
import { createHash } from "node:crypto";

/**
 * The id of the transaction-level advisory lock that a claim of (scope, key) takes: the first 64
 * bits of a SHA-256 of the pair, the scope's length first so that no two pairs encode alike,
 * under a prefix of txonce's keys (the outbox's locks hash `txonce.outbox:` keys), and with the
 * `schema` option when there is one, so that the same key in two schemas' tables takes two locks.
 * Computed in JavaScript rather than in SQL to keep the claim statement cheap to parse. A
 * collision with another lock only makes a call wait for a call it did not need to wait for.
 */
export function keyLockId(scope: string, key: string, schema: string | undefined): string {
  const prefix = schema === undefined ? "txonce.key:" : `txonce.key:${schema.length}:${schema}:`;
  const digest = createHash("sha256").update(`${prefix}${scope.length}:${scope}${key}`).digest();
  return digest.readBigInt64BE(0).toString();
}
