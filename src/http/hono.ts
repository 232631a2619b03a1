/**
 * txonce/hono: the `Idempotency-Key` header for Hono 4 (on Node with `@hono/node-server`, or any
 * runtime whose Request and Response are the Web standard ones), as middleware per route.
 *
 * @example
 * import { idempotency } from "txonce/hono";
 * const idempotent = idempotency(txonce(prisma), { scope: (c) => c.req.header("x-account-id") });
 * app.post("/charges", idempotent(), async (c) => {
 *   const charge = await c.var.tx.charge.create({ data: await c.req.json() });
 *   return c.json(charge, 201);
 * });
 *
 * The middleware claims the key and runs the rest of the route (later middleware and the
 * handler) inside the idempotent transaction, whose client is `c.var.tx`. The handler answers as
 * usual (`c.json()`, `c.text()`, `c.body()`); txonce reads that response, stores it with the key,
 * commits, and sends it. A retry gets it byte for byte, with `Idempotent-Replayed: true`.
 */
import type { Context, Env, MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { routePath } from "hono/route";
import {
  checkHttpOptions,
  handleIdempotentRequest,
  headersSetByRoute,
  type HttpIdempotencyOptions,
  type HttpReply,
  type IdempotencyRunner,
  type IdempotentResponse,
} from "./core.js";
import { InvalidArgumentError } from "../errors.js";

export {
  IDEMPOTENCY_KEY_HEADER,
  REPLAYED_HEADER,
  type FingerprintParts,
  type HttpIdempotencyOptions,
  type IdempotencyRunner,
} from "./core.js";
import { ResponseNotStorableError } from "./errors.js";
export { ResponseNotStorableError };
export { parseIdempotencyKey, type KeyParseResult, type ParseIdempotencyKeyOptions } from "./idempotency-key.js";
export { DEFAULT_PROBLEM_TYPE_BASE, problemTypes, type ProblemDetails, type ProblemType } from "./problem.js";

/** Options of {@link idempotency}, with `request` the route's Hono `Context`. */
export type HonoIdempotencyOptions<TxOptions = unknown> = HttpIdempotencyOptions<Context, TxOptions>;

/** The variables the middleware sets: `c.var.tx`, the transaction client, while the route runs. */
export interface TxonceVariables<Tx> {
  tx: Tx;
}

/** Makes the middleware of one route; route options override the defaults given to {@link idempotency}. */
export type Idempotent<Tx, TxOptions = unknown> = (
  routeOptions?: HonoIdempotencyOptions<TxOptions>,
) => MiddlewareHandler<Env & { Variables: TxonceVariables<Tx> }>;

/**
 * Notes whether the route answers with a `ReadableStream` through `c.body()` or `c.newResponse()`
 * (which Hono's `stream()`, `streamText()` and `streamSSE()` use): a Web `Response` does not tell
 * whether its body was a stream or a string.
 */
function watchForStreams(c: Context): () => boolean {
  let streamed = false;
  const watch = <F extends (...args: never[]) => Response>(respond: F): F =>
    ((data: unknown, ...rest: never[]) => {
      if (data instanceof ReadableStream) streamed = true;
      return respond(...([data, ...rest] as never[]));
    }) as unknown as F;
  c.body = watch(c.body);
  c.newResponse = watch(c.newResponse);
  return () => streamed;
}

/**
 * Makes `c.json()` refuse a value it cannot serialize (a circular value, a `BigInt`) with
 * {@link ResponseNotStorableError}, as the other frameworks' routes do, instead of the
 * `TypeError` that `JSON.stringify` throws; the handler's writes roll back with it.
 */
function refuseUnsendableJson(c: Context): void {
  const json = c.json;
  c.json = ((...args: Parameters<typeof json>) => {
    try {
      return json.apply(c, args);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      throw new ResponseNotStorableError(`the body cannot be sent as JSON: ${error.message}`);
    }
  }) as typeof json;
}

/** Response headers that mark a streamed response (`streamText()`, `streamSSE()`), also from a `new Response(stream)`. */
function isStreamed(response: Response): boolean {
  return (
    response.headers.get("transfer-encoding")?.toLowerCase().includes("chunked") === true ||
    response.headers.get("content-type")?.toLowerCase().startsWith("text/event-stream") === true
  );
}

/** The body as bytes; stops reading once it is longer than `maxBytes` (the core then refuses it). */
async function readBody(response: Response, maxBytes: number): Promise<Buffer> {
  if (!response.body) return Buffer.alloc(0);
  const chunks: Uint8Array[] = [];
  let length = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    length += value.byteLength;
    if (length > maxBytes) {
      await reader.cancel();
      break;
    }
  }
  return Buffer.concat(chunks);
}

function headersOf(headers: Headers): Record<string, string | string[]> {
  const result: Record<string, string | string[]> = {};
  headers.forEach((value, name) => {
    if (name !== "set-cookie") result[name] = value;
  });
  const cookies = headers.getSetCookie();
  if (cookies.length > 0) result["set-cookie"] = cookies;
  return result;
}

/** The request body for the fingerprint, read through Hono's body cache so the handler can still read it. */
async function requestBody(c: Context): Promise<unknown> {
  if (c.req.method === "GET" || c.req.method === "HEAD") return undefined;
  const bytes = Buffer.from(await c.req.arrayBuffer());
  if (bytes.length === 0) return undefined;
  const type = (c.req.header("content-type") ?? "").toLowerCase();
  if (/^application\/([\w.+-]*\+)?json\b/.test(type)) {
    try {
      return JSON.parse(bytes.toString("utf8")) as unknown;
    } catch {
      return bytes.toString("utf8"); // the handler answers the malformed JSON its own way
    }
  }
  if (type.startsWith("application/x-www-form-urlencoded")) {
    const fields: Record<string, string | string[]> = {};
    for (const [name, value] of new URLSearchParams(bytes.toString("utf8"))) {
      const seen = fields[name];
      fields[name] = seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
    }
    return fields;
  }
  return type.startsWith("text/") ? bytes.toString("utf8") : bytes;
}

/** A thrown 4xx `HTTPException`: its response (made by the app's `onError`) is a client error, stored like a returned 4xx. */
function isClientError(error: unknown): boolean {
  return error instanceof HTTPException && error.status >= 400 && error.status < 500;
}

function toResponse(reply: HttpReply): Response {
  const headers = new Headers();
  for (const [name, value] of Object.entries(reply.headers)) {
    for (const one of typeof value === "string" ? [value] : value) headers.append(name, one);
  }
  const empty = reply.status === 204 || reply.status === 304 || reply.body.length === 0;
  return new Response(empty ? null : new Uint8Array(reply.body), { status: reply.status, headers });
}

/**
 * Makes `idempotent(routeOptions?)`, the middleware for the routes that take an
 * `Idempotency-Key`, from the object `txonce(prisma)` or `txonce(pool)` returned. Put it first
 * on the route: `app.post("/charges", idempotent(), handler)`.
 *
 * A handler that throws rolls back, and the response Hono's `onError` made for it is sent (not
 * stored); a thrown 4xx `HTTPException` is stored like a returned 4xx. Missing, malformed,
 * in-use and reused keys are answered with `application/problem+json`.
 */
export function idempotency<Tx, TxOptions>(
  runner: IdempotencyRunner<Tx, TxOptions>,
  options: HonoIdempotencyOptions<TxOptions> = {},
): Idempotent<Tx, TxOptions> {
  if (runner === null || typeof runner !== "object" || typeof runner.withIdempotencyOutcome !== "function") {
    throw new InvalidArgumentError("txonce", "expected the object that txonce(prisma) or txonce(pool) returns");
  }
  checkHttpOptions(options);
  return (routeOptions) => {
    const merged: HonoIdempotencyOptions<TxOptions> = { ...options, ...routeOptions };
    if (routeOptions) checkHttpOptions(merged);
    const maxBytes = merged.maxResponseBytes ?? 1024 * 1024;
    return async (c, next) => {
      const url = new URL(c.req.url);
      const before = headersOf(c.res.headers);
      const reply = await handleIdempotentRequest(
        runner,
        merged,
        {
          request: c as Context,
          method: c.req.method,
          route: routePath(c),
          url: url.pathname + url.search,
          body: await requestBody(c),
          header: (name) => c.req.header(name),
        },
        async (tx): Promise<IdempotentResponse> => {
          c.set("tx", tx);
          const streamed = watchForStreams(c);
          refuseUnsendableJson(c);
          try {
            await next();
          } finally {
            // Past the commit the client is no longer usable: middleware around this one must not reach it.
            c.set("tx", undefined as never);
          }
          // Hono hands a thrown error to `onError` before control comes back here: `c.res` is its answer.
          if (c.error !== undefined && !isClientError(c.error)) throw new HandlerFailed(c.error);
          const response = c.res;
          if (streamed() || isStreamed(response)) {
            // Refused by the core (nothing stored); stop the producer first.
            await response.body?.cancel().catch(() => {});
            return { body: response.body };
          }
          const body = await readBody(response, maxBytes);
          return {
            status: response.status,
            headers: headersSetByRoute(headersOf(response.headers), before),
            body: body.length > 0 ? body : undefined,
          };
        },
      ).catch((error: unknown) => {
        // The handler's own failure: rolled back, and `c.res` is already the app's answer to it.
        if (error instanceof HandlerFailed) return undefined;
        throw error;
      });
      if (reply) c.res = toResponse(reply);
    };
  };
}

/** Carries the error of a handler out of the transaction, which rolls back. */
class HandlerFailed {
  constructor(readonly error: unknown) {}
}
