/**
 * txonce/koa: the `Idempotency-Key` header for Koa (2 and 3) with `@koa/router`, as middleware
 * per route.
 *
 * @example
 * import { idempotency } from "txonce/koa";
 * const idempotent = idempotency(txonce(prisma), { scope: (ctx) => ctx.get("x-account-id") });
 * router.post("/charges", idempotent(), async (ctx) => {
 *   ctx.status = 201;
 *   ctx.body = await ctx.state.tx.charge.create({ data: ctx.request.body });
 * });
 *
 * The middleware claims the key and runs the rest of the route (later middleware and the
 * handler) inside the idempotent transaction, whose client is `ctx.state.tx`. The handler answers
 * as usual (`ctx.status`, `ctx.set()`, `ctx.body` as a string, Buffer or JSON value); txonce
 * stores that response with the key, commits, and Koa sends it. A retry gets it byte for byte,
 * with `Idempotent-Replayed: true`. Parse the body before it (e.g. `@koa/bodyparser`): the
 * fingerprint covers `ctx.request.body`.
 */
import type { Context, Middleware, ParameterizedContext } from "koa";
import { InvalidArgumentError } from "../errors.js";
import {
  checkHttpOptions,
  handleIdempotentRequest,
  headerRecord,
  headersSetByRoute,
  type HttpIdempotencyOptions,
  type HttpReply,
  type IdempotencyRunner,
  type IdempotentResponse,
} from "./core.js";

export {
  IDEMPOTENCY_KEY_HEADER,
  REPLAYED_HEADER,
  type FingerprintParts,
  type HttpIdempotencyOptions,
  type IdempotencyRunner,
} from "./core.js";
export { ResponseNotStorableError } from "./errors.js";
export { parseIdempotencyKey, type KeyParseResult, type ParseIdempotencyKeyOptions } from "./idempotency-key.js";
export { DEFAULT_PROBLEM_TYPE_BASE, problemTypes, type ProblemDetails, type ProblemType } from "./problem.js";

/** Options of {@link idempotency}, with `request` the route's Koa `Context`. */
export type KoaIdempotencyOptions<TxOptions = unknown> = HttpIdempotencyOptions<Context, TxOptions>;

/** What the middleware puts in `ctx.state` while the route runs: `tx`, the transaction client. */
export interface TxonceState<Tx> {
  tx: Tx;
}

/** Makes the middleware of one route; route options override the defaults given to {@link idempotency}. */
export type Idempotent<Tx, TxOptions = unknown> = (routeOptions?: KoaIdempotencyOptions<TxOptions>) => Middleware<TxonceState<Tx>>;

/** Statuses that Koa sends without a body. */
const EMPTY_STATUSES = new Set([204, 205, 304]);

/** The response the route made, as Koa would send it: `ctx.body` as a string, Buffer, JSON value or stream. */
async function renderedResponse(ctx: ParameterizedContext, before: Record<string, string | string[]>): Promise<IdempotentResponse> {
  const status = ctx.status;
  const headers = headersSetByRoute(headerRecord(ctx.response.headers), before);
  let body: unknown = ctx.body;
  if (body === null || body === undefined) {
    // Koa sends the status message for a body-less response that is not a 204, 205 or 304.
    if (EMPTY_STATUSES.has(status)) body = undefined;
    else {
      body = ctx.message || String(status);
      headers["content-type"] = "text/plain; charset=utf-8";
    }
  } else if (body instanceof Blob) {
    body = Buffer.from(await body.arrayBuffer());
  } else if (body instanceof Response) {
    body = body.body; // a Fetch Response's body is a stream: refused
  }
  return { status, headers, body };
}

function send(ctx: ParameterizedContext, reply: HttpReply): void {
  ctx.status = reply.status;
  for (const [name, value] of Object.entries(reply.headers)) ctx.set(name, typeof value === "string" ? value : [...value]);
  if (EMPTY_STATUSES.has(reply.status)) ctx.body = null;
  else ctx.body = reply.body;
}

/** The route's pattern as @koa/router matched it (its prefix included), else the path. */
function routeOf(ctx: ParameterizedContext): string {
  const matched = (ctx as { _matchedRoute?: string | RegExp })._matchedRoute;
  return matched === undefined ? ctx.path : String(matched);
}

/**
 * Makes `idempotent(routeOptions?)`, the middleware for the routes that take an
 * `Idempotency-Key`, from the object `txonce(prisma)` or `txonce(pool)` returned. Put it first
 * on the route: `router.post("/charges", idempotent(), handler)`.
 *
 * An error thrown by the handler (`ctx.throw()` included) rolls back and goes on to the app's
 * error handling, not stored: Koa renders it after this middleware, where txonce cannot see it.
 * Missing, malformed, in-use and reused keys are answered with `application/problem+json`.
 */
export function idempotency<Tx, TxOptions>(
  runner: IdempotencyRunner<Tx, TxOptions>,
  options: KoaIdempotencyOptions<TxOptions> = {},
): Idempotent<Tx, TxOptions> {
  if (runner === null || typeof runner !== "object" || typeof runner.withIdempotencyOutcome !== "function") {
    throw new InvalidArgumentError("txonce", "expected the object that txonce(prisma) or txonce(pool) returns");
  }
  checkHttpOptions(options);
  return (routeOptions) => {
    const merged: KoaIdempotencyOptions<TxOptions> = { ...options, ...routeOptions };
    if (routeOptions) checkHttpOptions(merged);
    return async (ctx, next) => {
      const before = headerRecord(ctx.response.headers);
      const reply = await handleIdempotentRequest(
        runner,
        merged,
        {
          request: ctx as unknown as Context,
          method: ctx.method,
          route: routeOf(ctx),
          url: ctx.originalUrl,
          body: (ctx.request as { body?: unknown }).body,
          header: (name) => ctx.req.headers[name],
        },
        async (tx) => {
          ctx.state.tx = tx;
          try {
            await next();
          } finally {
            // Past the commit the client is no longer usable: later middleware must not reach it.
            delete (ctx.state as Partial<TxonceState<Tx>>).tx;
          }
          return renderedResponse(ctx, before);
        },
      );
      send(ctx, reply);
    };
  };
}
