/**
 * txonce/express: the `Idempotency-Key` header for Express 5, per route.
 *
 * @example
 * import { idempotency } from "txonce/express";
 * const idempotent = idempotency(txonce(prisma), { scope: (req) => req.get("X-Account-Id") });
 * app.post("/charges", express.json(), idempotent(async (req, tx) => {
 *   const charge = await tx.charge.create({ data: req.body });
 *   return { status: 201, body: charge };
 * }));
 *
 * The handler runs inside the idempotent transaction with its client `tx`, and returns the
 * response instead of writing it: `{ status, headers, body }` is stored with the key and replayed
 * to retries with `Idempotent-Replayed: true`. See docs/http.md for the status codes.
 */
import type { NextFunction, Request, RequestHandler, Response } from "express";
import {
  checkHttpOptions,
  handleIdempotentRequest,
  type HttpIdempotencyOptions,
  type HttpReply,
  type IdempotencyRunner,
  type IdempotentResponse,
} from "./core.js";

export {
  IDEMPOTENCY_KEY_HEADER,
  REPLAYED_HEADER,
  type FingerprintParts,
  type HeaderValue,
  type HttpIdempotencyOptions,
  type IdempotencyRunner,
  type IdempotentResponse,
} from "./core.js";
export { ResponseNotStorableError } from "./errors.js";
export { parseIdempotencyKey, type KeyParseResult, type ParseIdempotencyKeyOptions } from "./idempotency-key.js";
export { DEFAULT_PROBLEM_TYPE_BASE, problemTypes, type ProblemDetails, type ProblemType } from "./problem.js";

/** A request body, as Express types it by default (its `express.json()` output is untyped). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyBody = any;
/** Route parameters, as Express types them by default. */
type ParamsDictionary = Record<string, string>;
/** The parsed query string, as Express types it by default. */
type ParsedQs = Request["query"];

/** Options of {@link idempotency}, with `req` an Express `Request`. */
export type ExpressIdempotencyOptions<TxOptions = unknown> = HttpIdempotencyOptions<Request, TxOptions>;

/** An idempotent route handler: gets the request and the transaction client, returns the response. */
export type IdempotentExpressHandler<Tx, P = ParamsDictionary, ReqBody = AnyBody, ReqQuery = ParsedQs> = (
  req: Request<P, unknown, ReqBody, ReqQuery>,
  tx: Tx,
) => Promise<IdempotentResponse>;

/** Wraps a handler into an Express route handler; route options override the middleware's. */
export type Idempotent<Tx, TxOptions = unknown> = <P = ParamsDictionary, ReqBody = AnyBody, ReqQuery = ParsedQs>(
  handler: IdempotentExpressHandler<Tx, P, ReqBody, ReqQuery>,
  routeOptions?: ExpressIdempotencyOptions<TxOptions>,
) => RequestHandler<P, unknown, ReqBody, ReqQuery>;

/**
 * Makes `idempotent(handler, routeOptions?)` for the routes that take an `Idempotency-Key`, from
 * the object `txonce(prisma)` or `txonce(pool)` returned. Parse the body before it (e.g.
 * `express.json()`): the default fingerprint covers `req.body`.
 *
 * Handler errors and responses that cannot be stored go to `next(error)` after the rollback;
 * missing, malformed, in-use and reused keys are answered with `application/problem+json`.
 */
export function idempotency<Tx, TxOptions>(
  runner: IdempotencyRunner<Tx, TxOptions>,
  options: ExpressIdempotencyOptions<TxOptions> = {},
): Idempotent<Tx, TxOptions> {
  checkHttpOptions(options);
  return (handler, routeOptions) => {
    if (typeof handler !== "function") throw new TypeError("idempotent(handler): handler must be a function");
    const merged: ExpressIdempotencyOptions<TxOptions> = { ...options, ...routeOptions };
    if (routeOptions) checkHttpOptions(merged);
    const route = async (req: Request, res: Response, next: NextFunction): Promise<void> => {
      try {
        const reply = await handleIdempotentRequest(
          runner,
          merged,
          {
            request: req,
            method: req.method,
            route: routePattern(req),
            url: req.originalUrl,
            body: req.body,
            header: (name) => req.headers[name],
          },
          (tx) => handler(req as unknown as Parameters<typeof handler>[0], tx),
        );
        send(res, reply);
      } catch (error) {
        next(error);
      }
    };
    // Express hands `req` to route handlers untyped; the generics are the route author's claim.
    return route as unknown as ReturnType<Idempotent<Tx, TxOptions>>;
  };
}

/** The matched route's pattern, including the router's mount path: `/v1/accounts/:id/charges`. */
function routePattern(req: Request): string {
  const path: unknown = req.route?.path;
  return typeof path === "string" ? `${req.baseUrl}${path}` : `${req.baseUrl}${req.path}`;
}

function send(res: Response, reply: HttpReply): void {
  res.status(reply.status);
  for (const [name, value] of Object.entries(reply.headers)) res.setHeader(name, value);
  res.setHeader("content-length", reply.body.length);
  res.end(reply.body);
}
