/**
 * RFC 9457 problem details (`application/problem+json`) for the answers the idempotency layer
 * gives by itself: a missing or malformed key (400), a key in use (409), a reused key (422), the
 * database unavailable or the outcome of a commit unknown (503).
 * Each has a `type` URI documented in docs/http.md.
 */

/** The problems the HTTP layer answers by itself, named by the last segment of their `type` URI. */
export const problemTypes = {
  /** 400: the route requires an `Idempotency-Key` and the request has none. */
  keyMissing: "idempotency-key-missing",
  /** 400: the `Idempotency-Key` header is not a valid key. */
  keyMalformed: "idempotency-key-malformed",
  /** 409: a request with the same key is still being processed. */
  keyInUse: "idempotency-key-in-use",
  /** 422: the key was already used for a different request. */
  keyReused: "idempotency-key-reused",
  /** 503: the database could not serve txonce's own statements; nothing was committed. */
  databaseUnavailable: "database-unavailable",
  /** 503: COMMIT got no answer and whether it committed could not be looked up. */
  outcomeUnknown: "outcome-unknown",
} as const;

export type ProblemType = (typeof problemTypes)[keyof typeof problemTypes];

/**
 * Where the `type` URIs of txonce's problems start; each is this plus a {@link ProblemType}, e.g.
 * `https://txonce.dev/problems/idempotency-key-reused`. Override it with the `problemTypeBase`
 * option to point at your own API documentation.
 */
export const DEFAULT_PROBLEM_TYPE_BASE = "https://txonce.dev/problems/";

const titles: Record<ProblemType, string> = {
  "idempotency-key-missing": "Idempotency-Key header missing",
  "idempotency-key-malformed": "Idempotency-Key header malformed",
  "idempotency-key-in-use": "Idempotency key in use",
  "idempotency-key-reused": "Idempotency key reused with a different request",
  "database-unavailable": "Database unavailable",
  "outcome-unknown": "Outcome of the request unknown",
};

/** An RFC 9457 problem details object. */
export interface ProblemDetails {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly [extension: string]: unknown;
}

export function problem(
  base: string,
  type: ProblemType,
  status: number,
  detail: string,
  extensions: Record<string, unknown> = {},
): ProblemDetails {
  return { type: base + type, title: titles[type], status, detail, ...extensions };
}
