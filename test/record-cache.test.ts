/**
 * The replay cache's one race with the operator: `keys.forget` deletes a record while a call of
 * this process that claimed the key before is still committing; that call's copy reaches the
 * cache after the forget (or before): it must not be kept. (The conformance suite's "operator
 * actions" case met it now and then on a loaded machine.)
 */
import { describe, expect, test } from "vitest";
import { RecordCache, recordId, type StoredRecord } from "../src/record-cache.js";

const record = (result: string): StoredRecord => ({
  fingerprint: null,
  result,
  firstSeenAt: new Date(),
  expiresAt: new Date(Date.now() + 3_600_000),
});

describe("RecordCache", () => {
  test("a copy of a record claimed before keys.forget is not kept, one claimed after is", () => {
    const cache = new RecordCache(1 << 20, 60_000);
    const id = recordId("tenant", "k");
    const claimedBefore = performance.now();
    cache.forget("tenant", "k");
    cache.set(id, record("stale"), new Date(), claimedBefore);
    expect(cache.get(id)).toBeUndefined();
    const claimedAfter = performance.now() + 1;
    cache.set(id, record("fresh"), new Date(), claimedAfter);
    expect(cache.get(id)?.result).toBe("fresh");
  });

  test("the same for keys.purge of the whole scope, and other scopes are not affected", () => {
    const cache = new RecordCache(1 << 20, 60_000);
    const claimedBefore = performance.now();
    cache.forgetScope("tenant");
    cache.set(recordId("tenant", "a"), record("stale"), new Date(), claimedBefore);
    cache.set(recordId("other", "a"), record("kept"), new Date(), claimedBefore);
    expect(cache.get(recordId("tenant", "a"))).toBeUndefined();
    expect(cache.get(recordId("other", "a"))?.result).toBe("kept");
  });
});
