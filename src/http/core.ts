/**
 * The framework-free HTTP layer: reads the `Idempotency-Key`, derives scope and fingerprint from
 * the request, runs the route handler inside the idempotent transaction, decides what is stored,
 * and turns every outcome into a response to send. txonce/express and txonce/fastify are thin
 * wrappers around {@link handleIdempotentRequest}.
 */
import { randomUUID } from "node:crypto";
import type { Duration } from "../duration.js";
import {
  DatabaseUnavailableError,
  IdempotencyKeyInUseError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  OutcomeUnknownError,
} from "../errors.js";
import type { IdempotencyOptions, IdempotencyOutcome, Operation } from "../idempotency.js";
import { ResponseNotStorableError } from "./errors.js";
import { parseIdempotencyKey } from "./idempotency-key.js";
import { DEFAULT_PROBLEM_TYPE_BASE, problem, problemTypes, type ProblemDetails } from "./problem.js";

/**
 * What the HTTP layer needs from txonce: the object `txonce(prisma)` (txonce/prisma) or
 * `txonce(pool)` (txonce/pg) returns fits.
 */
export interface IdempotencyRunner<Tx, TxOptions = unknown> {
  withIdempotencyOutcome<T>(
    key: string,
    operation: Operation<Tx, T>,
    options?: IdempotencyOptions<TxOptions>,
  ): Promise<IdempotencyOutcome<T>>;
  transaction<T>(operation: Operation<Tx, T>, options?: { transaction?: TxOptions }): Promise<T>;
}

/** Header values a handler may return: several values (e.g. `Set-Cookie`) as an array. */
export type HeaderValue = string | number | readonly string[];

/** What an idempotent route handler returns; stored with the key and replayed byte for byte. */
export interface IdempotentResponse {
  /** The HTTP status, 200 to 599. (Default: `200`) */
  status?: number;
  /**
   * The response headers to send and store with it. Headers set on the response elsewhere (by
   * other middleware) are neither stored nor replayed by txonce; they are set again on a replay
   * if that middleware runs again. `Content-Length`, `Transfer-Encoding`, `Connection`,
   * `Keep-Alive` and `Idempotent-Replayed` are txonce's to set; `undefined` values are skipped.
   * (Default: none, plus a
   * `Content-Type` chosen from the body)
   */
  headers?: Readonly<Record<string, HeaderValue | undefined>>;
  /**
   * The body: a `string` (sent as UTF-8, `text/plain; charset=utf-8` unless `headers` set a
   * `Content-Type`), a `Buffer` or `Uint8Array` (`application/octet-stream`), `undefined` (no
   * body), or anything else, sent as JSON (`application/json; charset=utf-8`). Streams cannot be
   * stored and are refused with {@link ResponseNotStorableError}. (Default: no body)
   */
  body?: unknown;
}

/** The parts of a request the HTTP layer reads, as a framework adapter extracts them. */
export interface HttpRequestInfo<Req> {
  /** The framework's own request object, passed to the `scope` and `fingerprint` functions. */
  readonly request: Req;
  /** Upper-case method, e.g. `POST`. */
  readonly method: string;
  /** The route pattern that matched, e.g. `/accounts/:id/charges`. */
  readonly route: string;
  /** The path and query string the client requested, e.g. `/accounts/a1/charges?x=1`. */
  readonly url: string;
  /** The parsed body (by the framework's body parser), or `undefined`. */
  readonly body: unknown;
  /** The value of a request header, by lower-case name. */
  header(name: string): string | readonly string[] | undefined;
}

/** What the default fingerprint covers; also given to a custom `fingerprint` function. */
export interface FingerprintParts {
  readonly method: string;
  readonly route: string;
  readonly url: string;
  readonly body: unknown;
}

/** Options of the idempotency middleware; each can be overridden per route. */
export interface HttpIdempotencyOptions<Req, TxOptions = unknown> {
  /**
   * Answer 400 when a request has no `Idempotency-Key`. When `false`, such a request runs the
   * handler in a transaction of its own with a random key that expires at once: it is never
   * replayed. (Default: `true`)
   */
  required?: boolean;
  /**
   * Accept an unquoted key (`Idempotency-Key: abc-123`), as Stripe-style clients send it, besides
   * the IETF draft's quoted RFC 8941 string (`Idempotency-Key: "abc-123"`); both are the key
   * `abc-123`. (Default: `true`)
   */
  allowBareKey?: boolean;
  /**
   * Who the key belongs to, derived from the request: the authenticated account, tenant or API
   * client. Keys are unique per scope, and no scope ever sees another's stored responses, so two
   * clients that pick the same key stay apart. Return `undefined` for no owner. (Default: none:
   * the scope is the method and route only, shared by every client)
   */
  scope?: (request: Req) => string | undefined | Promise<string | undefined>;
  /**
   * Make the method and route pattern part of the scope (`POST /charges`, or
   * `POST /charges @acct_1` with an owner), so the same key on two endpoints names two records.
   * With `false` the scope is the owner alone, and reusing a key on another endpoint is a 422
   * (the fingerprint covers the method and URL). (Default: `true`)
   */
  scopeByRoute?: boolean;
  /**
   * What a key stands for: a later request with the same key and a different fingerprint gets
   * 422 instead of a replay. A function returns the value to hash (its canonical form: object key
   * order does not matter); `false` turns the check off. (Default: the method, route pattern, URL
   * with query string and parsed body: `({ method, route, url, body }) => ({ method, route, url, body })`)
   */
  fingerprint?: false | ((request: Req, parts: FingerprintParts) => unknown);
  /**
   * Store and replay 4xx responses that the handler returns (a declined charge stays declined).
   * When `false` they roll back like 5xx responses and a retry runs the handler again.
   * (Default: `true`)
   */
  storeClientErrors?: boolean;
  /**
   * The largest body, in bytes, that is stored and sent; a larger one is refused with
   * {@link ResponseNotStorableError} (nothing stored, the transaction rolls back). (Default:
   * `1048576`, 1 MiB)
   */
  maxResponseBytes?: number;
  /**
   * The start of the `type` URI of the problem responses (see docs/http.md): the type is this
   * plus `idempotency-key-missing`, `-malformed`, `-in-use` or `-reused`, `database-unavailable`
   * or `outcome-unknown`.
   * (Default: `"https://txonce.dev/problems/"`)
   */
  problemTypeBase?: string;
  /**
   * The `Retry-After` header, in seconds, of a 409 (key in use) and of a 503 (database unavailable,
   * outcome unknown). (Default: `1`)
   */
  retryAfterSeconds?: number;
  /** How long a response is stored and replayed for; the txonce instance's option. (Default: the instance's, `"48h"`) */
  retention?: Duration;
  /** How long a request waits for another one with the same key before its 409. (Default: the instance's, `"2s"`) */
  lockTimeout?: Duration;
  /** Options of the transaction the handler runs in. (Default: the instance's) */
  transaction?: TxOptions;
  /**
   * The operation's name for telemetry: the span is `withIdempotency {name}` and metrics carry it
   * as `txonce.operation.name`. Keep it low-cardinality. (Default: the method and route pattern,
   * e.g. `"POST /accounts/:id/charges"`)
   */
  name?: string;
}

/** A response ready to send: the framework adapters write exactly this. */
export interface HttpReply {
  readonly status: number;
  /** Lower-case header names. */
  readonly headers: Readonly<Record<string, string | readonly string[]>>;
  readonly body: Buffer;
  /** `true` when this is a stored response sent again (it carries `Idempotent-Replayed: true`). */
  readonly replayed: boolean;
}

/** The form a response is stored in, inside txonce's record. */
interface StoredResponse {
  readonly v: 1;
  readonly status: number;
  readonly headers: Record<string, string | string[]>;
  readonly body: Buffer;
}

/** The draft's request header, and the response header that marks a replay. */
export const IDEMPOTENCY_KEY_HEADER = "idempotency-key";
export const REPLAYED_HEADER = "idempotent-replayed";

const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;
const RESERVED_HEADERS = new Set(["content-length", "transfer-encoding", "connection", "keep-alive", REPLAYED_HEADER]);
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const INVALID_HEADER_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

/** Thrown inside the transaction to roll back a response that is sent but not stored (5xx). */
class SendWithoutStoring {
  constructor(readonly reply: HttpReply) {}
}

/** Checks options once, when the middleware is made, so mistakes surface at startup. */
export function checkHttpOptions<Req, TxOptions>(options: HttpIdempotencyOptions<Req, TxOptions>): void {
  const { maxResponseBytes, retryAfterSeconds, scope, fingerprint } = options;
  if (maxResponseBytes !== undefined && (!Number.isSafeInteger(maxResponseBytes) || maxResponseBytes < 0)) {
    throw new InvalidArgumentError("maxResponseBytes", `expected a non-negative integer, got ${String(maxResponseBytes)}`);
  }
  if (retryAfterSeconds !== undefined && (!Number.isSafeInteger(retryAfterSeconds) || retryAfterSeconds < 0)) {
    throw new InvalidArgumentError("retryAfterSeconds", `expected a non-negative integer, got ${String(retryAfterSeconds)}`);
  }
  if (scope !== undefined && typeof scope !== "function") {
    throw new InvalidArgumentError("scope", `expected a function of the request, got ${typeof scope}`);
  }
  if (fingerprint !== undefined && fingerprint !== false && typeof fingerprint !== "function") {
    throw new InvalidArgumentError("fingerprint", `expected false or a function of the request, got ${typeof fingerprint}`);
  }
}

/**
 * Handles one request on an idempotent route and returns the response to send:
 * the handler's response (stored unless it is a 5xx, or a 4xx with `storeClientErrors: false`),
 * the stored response of an earlier request with the same key (with `Idempotent-Replayed: true`),
 * or a problem response (400 missing or malformed key, 409 key in use, 422 key reused, 503 when
 * the database failed under txonce's own statements for this key: nothing committed, or the outcome
 * of the commit unknown; a retry with the same key is safe either way).
 *
 * Rejects with what the handler threw (after the rollback), with a
 * {@link ResponseNotStorableError}, or with a database error: the adapter hands those to the
 * framework's error handling.
 */
export async function handleIdempotentRequest<Req, Tx, TxOptions>(
  runner: IdempotencyRunner<Tx, TxOptions>,
  options: HttpIdempotencyOptions<Req, TxOptions>,
  info: HttpRequestInfo<Req>,
  handler: (tx: Tx) => Promise<IdempotentResponse>,
): Promise<HttpReply> {
  const base = options.problemTypeBase ?? DEFAULT_PROBLEM_TYPE_BASE;
  const parsed = parseIdempotencyKey(info.header(IDEMPOTENCY_KEY_HEADER), { allowBare: options.allowBareKey ?? true });
  if (parsed && !parsed.ok) {
    return problemReply(problem(base, problemTypes.keyMalformed, 400, `Invalid Idempotency-Key header: ${parsed.reason}.`));
  }
  if (!parsed && (options.required ?? true)) {
    return problemReply(
      problem(base, problemTypes.keyMissing, 400, `${info.method} ${info.route} requires an Idempotency-Key header, e.g. Idempotency-Key: "${randomUUID()}".`),
    );
  }

  const owner = options.scope ? await options.scope(info.request) : undefined;
  const routeScope = `${info.method} ${info.route}`;
  const scope = (options.scopeByRoute ?? true) ? (owner === undefined ? routeScope : `${routeScope} @${owner}`) : owner;
  const parts: FingerprintParts = { method: info.method, route: info.route, url: info.url, body: info.body };
  const fingerprint =
    options.fingerprint === false ? undefined : options.fingerprint ? options.fingerprint(info.request, parts) : parts;
  const maxBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  const storeClientErrors = options.storeClientErrors ?? true;

  const callOptions: IdempotencyOptions<TxOptions> = { scope, fingerprint, name: options.name ?? routeScope };
  if (options.retention !== undefined) callOptions.retention = options.retention;
  if (options.lockTimeout !== undefined) callOptions.lockTimeout = options.lockTimeout;
  if (options.transaction !== undefined) callOptions.transaction = options.transaction;
  // A request without a key (allowed by `required: false`) runs in a plain transaction: nothing
  // is stored, and a 5xx still rolls back.
  if (!parsed) {
    try {
      const stored = await runner.transaction(async (tx) => {
        const response = toStoredResponse(await handler(tx), maxBytes);
        if (response.status >= 500) throw new SendWithoutStoring(toReply(response, false));
        return response;
      }, options.transaction === undefined ? undefined : { transaction: options.transaction });
      return toReply(stored, false);
    } catch (error) {
      if (error instanceof SendWithoutStoring) return error.reply;
      throw error;
    }
  }
  const key = parsed.key;

  let handlerStarted = false;
  let outcome: IdempotencyOutcome<StoredResponse>;
  try {
    outcome = await runner.withIdempotencyOutcome<StoredResponse>(
      key,
      async (tx) => {
        handlerStarted = true;
        const stored = toStoredResponse(await handler(tx), maxBytes);
        const stores = stored.status < 400 || (stored.status < 500 && storeClientErrors);
        if (!stores) throw new SendWithoutStoring(toReply(stored, false));
        return stored;
      },
      callOptions,
    );
  } catch (error) {
    if (error instanceof SendWithoutStoring) return error.reply;
    if (error instanceof IdempotencyKeyInUseError && !handlerStarted) {
      return problemReply(
        problem(
          base,
          problemTypes.keyInUse,
          409,
          `A request with this Idempotency-Key is still being processed (waited ${error.waitedMs} ms). Retry later with the same key.`,
        ),
        { "retry-after": String(options.retryAfterSeconds ?? 1) },
      );
    }
    if (error instanceof IdempotencyKeyReusedError && !handlerStarted) {
      return problemReply(
        problem(
          base,
          problemTypes.keyReused,
          422,
          `This Idempotency-Key was first used at ${error.record.firstSeenAt.toISOString()} for a different request ` +
            "(method, URL or body). Use a new key for a new request.",
          { firstSeenAt: error.record.firstSeenAt.toISOString() },
        ),
      );
    }
    if (error instanceof InvalidArgumentError && error.argument === "key" && !handlerStarted) {
      return problemReply(problem(base, problemTypes.keyMalformed, 400, `Invalid Idempotency-Key header: the key ${error.reason}.`));
    }
    // The database failed under txonce's own statements for this request's key (not under a
    // call the handler made itself): either nothing was committed, or the commit's outcome is
    // unknown; in both cases the client's retry with the same key is safe.
    const ours = (e: { scope: string; key: string }) => e.key === key && e.scope === (scope ?? "");
    const retryAfter = { "retry-after": String(options.retryAfterSeconds ?? 1) };
    if (error instanceof OutcomeUnknownError && ours(error)) {
      return problemReply(
        problem(
          base,
          problemTypes.outcomeUnknown,
          503,
          "The connection to the database was lost while this request was being committed, and whether it committed " +
            "could not be checked. Retrying with the same Idempotency-Key is safe: if it committed, the retry returns " +
            "its response; if not, the retry processes it.",
        ),
        retryAfter,
      );
    }
    if (error instanceof DatabaseUnavailableError && ours(error)) {
      return problemReply(
        problem(
          base,
          problemTypes.databaseUnavailable,
          503,
          "The database was not available to process this request, and nothing of it was committed. " +
            "Retry with the same Idempotency-Key.",
        ),
        retryAfter,
      );
    }
    throw error;
  }
  return toReply(checkStored(outcome.value), outcome.replayed);
}

function problemReply(details: ProblemDetails, headers: Record<string, string> = {}): HttpReply {
  return {
    status: details.status,
    headers: { "content-type": "application/problem+json", ...headers },
    body: Buffer.from(JSON.stringify(details)),
    replayed: false,
  };
}

function toReply(stored: StoredResponse, replayed: boolean): HttpReply {
  return {
    status: stored.status,
    headers: replayed ? { ...stored.headers, [REPLAYED_HEADER]: "true" } : stored.headers,
    body: stored.body,
    replayed,
  };
}

/** A record written by this layer: anything else under an HTTP scope is a server-side mistake. */
function checkStored(value: StoredResponse): StoredResponse {
  if (value?.v !== 1 || !Buffer.isBuffer(value.body)) {
    throw new ResponseNotStorableError("the stored record under this key is not an HTTP response stored by txonce's HTTP layer");
  }
  return value;
}

function isStream(body: object): boolean {
  return (
    typeof (body as { pipe?: unknown }).pipe === "function" ||
    typeof (body as { getReader?: unknown }).getReader === "function" ||
    (Symbol.asyncIterator in body && !Array.isArray(body))
  );
}

/** Validates and encodes what a handler returned, exactly as it will be sent and stored. */
function toStoredResponse(response: IdempotentResponse, maxBytes: number): StoredResponse {
  if (response === null || typeof response !== "object") {
    throw new ResponseNotStorableError(
      `the handler must return { status, headers, body }, it returned ${response === null ? "null" : typeof response}`,
    );
  }
  const status = response.status ?? 200;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new ResponseNotStorableError(`status ${String(status)} is not a final HTTP status (200 to 599)`);
  }

  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(response.headers ?? {})) {
    if (value === undefined) continue;
    const lower = name.toLowerCase();
    if (!HEADER_NAME.test(name)) throw new ResponseNotStorableError(`${JSON.stringify(name)} is not a valid header name`);
    if (RESERVED_HEADERS.has(lower)) throw new ResponseNotStorableError(`the ${name} header is set by txonce or the server, not by the handler`);
    if (lower in headers) throw new ResponseNotStorableError(`the ${name} header is given twice (in different letter cases)`);
    const values = Array.isArray(value) ? value.map(String) : [String(value)];
    for (const text of values) {
      if (INVALID_HEADER_VALUE.test(text)) throw new ResponseNotStorableError(`the value of the ${name} header holds characters not allowed in HTTP`);
    }
    headers[lower] = Array.isArray(value) ? values : values[0]!;
  }

  const { body } = response;
  let bytes: Buffer;
  let contentType: string | undefined;
  if (body === undefined) {
    bytes = Buffer.alloc(0);
  } else if (typeof body === "string") {
    bytes = Buffer.from(body, "utf8");
    contentType = "text/plain; charset=utf-8";
  } else if (body instanceof Uint8Array) {
    bytes = Buffer.from(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
    contentType = "application/octet-stream";
  } else if (body !== null && typeof body === "object" && isStream(body)) {
    throw new ResponseNotStorableError(
      "the body is a stream; an idempotent response is stored and replayed, so return its content as a string, Buffer or JSON value",
    );
  } else {
    let json: string | undefined;
    try {
      json = JSON.stringify(body);
    } catch (error) {
      throw new ResponseNotStorableError(`the body cannot be sent as JSON: ${(error as Error).message}`);
    }
    if (json === undefined) throw new ResponseNotStorableError(`the body (a ${typeof body}) cannot be sent as JSON`);
    bytes = Buffer.from(json, "utf8");
    contentType = "application/json; charset=utf-8";
  }
  if (bytes.length > maxBytes) {
    throw new ResponseNotStorableError(`the body is ${bytes.length} bytes, more than maxResponseBytes (${maxBytes})`);
  }
  if ((status === 204 || status === 304) && bytes.length > 0) {
    throw new ResponseNotStorableError(`a ${status} response has no body, but the handler returned one`);
  }
  if (contentType !== undefined && !("content-type" in headers)) headers["content-type"] = contentType;
  return { v: 1, status, headers, body: bytes };
}

/**
 * Response headers as Node (`getHeaders()`), Koa (`ctx.response.headers`) or a `writeHead()`
 * argument hold them, with lower-case names and string values; `undefined` values are skipped.
 */
export function headerRecord(headers: Readonly<Record<string, unknown>>): Record<string, string | string[]> {
  const result: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) result[name.toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return result;
}

/** Header names that the connection, not the response, owns: never stored or replayed. */
const CONNECTION_HEADERS = new Set([...RESERVED_HEADERS, "date"]);

/**
 * The headers a route set, for adapters that read the response the framework rendered (Nest,
 * Hono, Koa) instead of a returned `{ headers }`: those of `after` that were not on the response
 * before the route ran (`before`, set by middleware such as CORS) or that it changed, without the
 * connection's own. `Content-Type` always goes with the body. Names lower-case.
 */
export function headersSetByRoute(
  after: Readonly<Record<string, string | readonly string[]>>,
  before: Readonly<Record<string, string | readonly string[]>>,
): Record<string, string | readonly string[]> {
  const result: Record<string, string | readonly string[]> = {};
  for (const [name, value] of Object.entries(after)) {
    if (CONNECTION_HEADERS.has(name)) continue;
    if (name !== "content-type" && name in before && String(before[name]) === String(value)) continue;
    result[name] = value;
  }
  return result;
}
