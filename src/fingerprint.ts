import { createHash } from "node:crypto";
import { stringify } from "safe-stable-stringify";
import type { Codec } from "./codec.js";

/**
 * The SHA-256 hash (hex) of a request's canonical form: the codec's JSON form with object keys
 * sorted, so `{ a: 1, b: 2 }` and `{ b: 2, a: 1 }` hash alike while `1n` and `"1"` or a `Date` and
 * its ISO string do not.
 */
export function fingerprintOf(codec: Codec, request: unknown): string {
  const canonical = stringify(codec.serialize(request, "fingerprint"));
  return createHash("sha256").update(canonical ?? "undefined").digest("hex");
}
