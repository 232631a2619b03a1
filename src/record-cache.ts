/**
 * The completed records one txonce instance keeps in memory, so that a replay in the same process
 * costs no query. A committed record never changes until it expires (a later call can only
 * replace it once `expires_at` has passed), so a copy is exact for as long as it is kept; what the
 * cache must get right is when to stop trusting it:
 *
 * - expiry comes from the database clock: an entry is dropped once as much time has passed on
 *   this process's monotonic clock, since the database answered, as the record had left then
 *   (`expires_at - now()` read in the same statement), minus a margin for rounding. The database
 *   clock cannot have advanced less than that, so the copy never outlives the record;
 * - `maxAge` bounds how long a record deleted or changed behind txonce's back (an operator
 *   forgetting a key by hand, a truncated table) can still be replayed from memory; the operator
 *   actions of this instance (`keys.forget`, `keys.purge`) evict what they delete at once;
 * - `maxBytes` bounds the memory: least recently used entries go first.
 */

/** Names a (scope, key) pair unambiguously: neither may contain NUL (see checkIdentifier in idempotency.ts). */
export const recordId = (scope: string, key: string) => `${scope}\u0000${key}`;

/** A completed key as stored: what a replay needs. */
export interface StoredRecord {
  readonly fingerprint: string | null;
  /** The encoded result (the codec's text). */
  readonly result: string;
  readonly firstSeenAt: Date;
  readonly expiresAt: Date;
}

interface Entry {
  readonly record: StoredRecord;
  /** `performance.now()` after which the entry is no longer used. */
  readonly validUntil: number;
  readonly bytes: number;
}

/** Rounding of timestamps (`timestamptz(3)` rounds, `Date` truncates to the millisecond). */
const EXPIRY_MARGIN_MS = 5;
/** Map entry, dates and bookkeeping, roughly. */
const ENTRY_OVERHEAD_BYTES = 200;

export class RecordCache {
  readonly #entries = new Map<string, Entry>();
  #bytes = 0;
  /**
   * When a key (by id) or a scope (by `recordId(scope, "")`) was forgotten: a record whose claim
   * was answered before that is not kept. A call that committed while `keys.forget` waited for
   * it reaches `set` after the forget, or before: either way its copy must not outlive the delete.
   */
  readonly #forgotten = new Map<string, number>();

  constructor(
    private readonly maxBytes: number,
    private readonly maxAgeMs: number,
  ) {}

  /** The record of (scope, key), if a copy is held and still valid. */
  get(id: string): StoredRecord | undefined {
    const entry = this.#entries.get(id);
    if (!entry) return undefined;
    this.#entries.delete(id);
    if (performance.now() >= entry.validUntil) {
      this.#bytes -= entry.bytes;
      return undefined;
    }
    this.#entries.set(id, entry); // most recently used last
    return entry.record;
  }

  /**
   * Keeps a record that the database returned, `databaseNow` being the database's `now()` in the
   * same statement and `answeredAt` the `performance.now()` at which the answer arrived.
   */
  set(id: string, record: StoredRecord, databaseNow: Date, answeredAt: number): void {
    const leftMs = record.expiresAt.getTime() - databaseNow.getTime() - EXPIRY_MARGIN_MS;
    const validUntil = answeredAt + Math.min(leftMs, this.maxAgeMs);
    const bytes = 2 * (id.length + record.result.length + (record.fingerprint?.length ?? 0)) + ENTRY_OVERHEAD_BYTES;
    this.delete(id);
    if (validUntil <= performance.now() || bytes > this.maxBytes || this.#forgottenSince(id) >= answeredAt) return;
    this.#entries.set(id, { record, validUntil, bytes });
    this.#bytes += bytes;
    for (const [oldest, entry] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= entry.bytes;
    }
  }

  /**
   * Forgets the copy of (scope, key), if any, and any copy of a record claimed before now that
   * arrives later: `keys.forget` deleted its record.
   */
  forget(scope: string, key: string): void {
    const id = recordId(scope, key);
    this.delete(id);
    this.#remember(id);
  }

  /** Forgets every copy of the scope's keys (and later copies of records claimed before now): `keys.purge` deleted its records. */
  forgetScope(scope: string): void {
    const prefix = recordId(scope, "");
    this.#remember(prefix);
    for (const [id, entry] of this.#entries) {
      if (!id.startsWith(prefix)) continue;
      this.#entries.delete(id);
      this.#bytes -= entry.bytes;
    }
  }

  #remember(id: string): void {
    const now = performance.now();
    // A copy arriving later than maxAge after its claim was answered is dropped anyway.
    for (const [forgotten, at] of this.#forgotten) if (now - at > this.maxAgeMs) this.#forgotten.delete(forgotten);
    this.#forgotten.set(id, now);
  }

  #forgottenSince(id: string): number {
    if (this.#forgotten.size === 0) return -Infinity;
    const scope = id.slice(0, id.indexOf("\u0000") + 1);
    return Math.max(this.#forgotten.get(id) ?? -Infinity, this.#forgotten.get(scope) ?? -Infinity);
  }

  /** Forgets the copy of (scope, key), if any. */
  delete(id: string): void {
    const entry = this.#entries.get(id);
    if (!entry) return;
    this.#entries.delete(id);
    this.#bytes -= entry.bytes;
  }
}
