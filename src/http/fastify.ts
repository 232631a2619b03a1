/**
 * txonce/fastify: the `Idempotency-Key` header for Fastify 5, per route.
 *
 * @example
 * import txonceFastify from "txonce/fastify";
 * await app.register(txonceFastify, { txonce: txonce(prisma), scope: (request) => request.headers["x-account-id"] as string });
 * app.post("/charges", app.idempotent(async (request, tx) => {
 *   const charge = await tx.charge.create({ data: request.body });
 *   return { status: 201, body: charge };
 * }));
 *
 * The plugin (made with fastify-plugin, so it is visible to the whole app) decorates the instance
 * with `idempotent(handler, routeOptions?)`; only the routes whose handler it wraps take an
 * `Idempotency-Key`. The handler runs inside the idempotent transaction with its client `tx` and
 * returns the response instead of sending it: `{ status, headers, body }` is stored with the key
 * and replayed to retries with `Idempotent-Replayed: true`.
 *
 * To type `tx` in `app.idempotent`, declare it once:
 * `declare module "txonce/fastify" { interface TxonceFastifyTypes { tx: Prisma.TransactionClient } }`,
 * or skip the decorator and use {@link fastifyIdempotency}, which infers it.
 */
import type {
  FastifyPluginAsync,
  FastifyReply,
  FastifyRequest,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
  RouteGenericInterface,
  RouteHandlerMethod,
} from "fastify";
import fp from "fastify-plugin";
import { InvalidArgumentError } from "../errors.js";
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

/** Options with `request` a `FastifyRequest`; per route, in `idempotent(handler, routeOptions)`. */
export type FastifyIdempotencyOptions<TxOptions = unknown> = HttpIdempotencyOptions<FastifyRequest, TxOptions>;

/** Options of the plugin: the txonce instance, and the defaults of every idempotent route. */
export interface TxonceFastifyOptions<Tx = unknown, TxOptions = unknown> extends FastifyIdempotencyOptions<TxOptions> {
  /** The object `txonce(prisma)` (txonce/prisma) or `txonce(pool)` (txonce/pg) returned. (Required) */
  txonce: IdempotencyRunner<Tx, TxOptions>;
}

/**
 * Augment this interface to type the transaction client of `fastify.idempotent` handlers:
 * `declare module "txonce/fastify" { interface TxonceFastifyTypes { tx: MyTransactionClient } }`.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface TxonceFastifyTypes {}

/** The `tx` of `fastify.idempotent` handlers: as declared in {@link TxonceFastifyTypes}, else `unknown`. */
export type FastifyTransaction = TxonceFastifyTypes extends { tx: infer Tx } ? Tx : unknown;

/** An idempotent route handler: gets the request and the transaction client, returns the response. */
export type IdempotentFastifyHandler<Tx, RouteGeneric extends RouteGenericInterface = RouteGenericInterface> = (
  request: FastifyRequest<RouteGeneric>,
  tx: Tx,
) => Promise<IdempotentResponse>;

/** Wraps a handler into a Fastify route handler; route options override the plugin's. */
export interface FastifyIdempotent<Tx, TxOptions = unknown> {
  <RouteGeneric extends RouteGenericInterface = RouteGenericInterface>(
    handler: IdempotentFastifyHandler<Tx, RouteGeneric>,
    routeOptions?: FastifyIdempotencyOptions<TxOptions>,
  ): RouteHandlerMethod<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, RouteGeneric>;
}

declare module "fastify" {
  interface FastifyInstance {
    /**
     * Wraps a handler so that its route takes an `Idempotency-Key` (txonce/fastify):
     * `app.post("/charges", app.idempotent(async (request, tx) => ({ status: 201, body })))`.
     */
    idempotent: FastifyIdempotent<FastifyTransaction>;
  }
}

/**
 * Makes `idempotent(handler, routeOptions?)` without registering the plugin, with `tx` typed
 * from the txonce instance. Handler errors and responses that cannot be stored are thrown to
 * Fastify's error handling after the rollback; missing, malformed, in-use and reused keys are
 * answered with `application/problem+json`.
 */
export function fastifyIdempotency<Tx, TxOptions>(
  runner: IdempotencyRunner<Tx, TxOptions>,
  options: FastifyIdempotencyOptions<TxOptions> = {},
): FastifyIdempotent<Tx, TxOptions> {
  if (runner === null || typeof runner !== "object" || typeof runner.withIdempotencyOutcome !== "function") {
    throw new InvalidArgumentError("txonce", "expected the object that txonce(prisma) or txonce(pool) returns");
  }
  checkHttpOptions(options);
  return <RouteGeneric extends RouteGenericInterface>(
    handler: IdempotentFastifyHandler<Tx, RouteGeneric>,
    routeOptions?: FastifyIdempotencyOptions<TxOptions>,
  ) => {
    if (typeof handler !== "function") throw new TypeError("idempotent(handler): handler must be a function");
    const merged: FastifyIdempotencyOptions<TxOptions> = { ...options, ...routeOptions };
    if (routeOptions) checkHttpOptions(merged);
    const route = async (request: FastifyRequest<RouteGeneric>, reply: FastifyReply): Promise<FastifyReply> => {
      const result = await handleIdempotentRequest(
        runner,
        merged,
        {
          request: request as FastifyRequest,
          method: request.method,
          route: request.routeOptions.url ?? request.url,
          url: request.url,
          body: request.body,
          header: (name) => request.headers[name],
        },
        (tx) => handler(request, tx),
      );
      return send(reply, result);
    };
    // The reply is sent here, so the handler returns it (Fastify's rule for async handlers that send).
    return route as unknown as RouteHandlerMethod<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, RouteGeneric>;
  };
}

function send(reply: FastifyReply, result: HttpReply): FastifyReply {
  reply.code(result.status);
  for (const [name, value] of Object.entries(result.headers)) reply.header(name, value);
  return reply.send(result.body);
}

const plugin: FastifyPluginAsync<TxonceFastifyOptions> = async (fastify, { txonce, ...options }) => {
  fastify.decorate("idempotent", fastifyIdempotency(txonce, options) as FastifyIdempotent<unknown> as FastifyIdempotent<FastifyTransaction>);
};

/**
 * The Fastify plugin: `await app.register(txonceFastify, { txonce: txonce(prisma), ...defaults })`
 * decorates the app with `idempotent`.
 */
export const txonceFastify = fp(plugin, { fastify: "5.x", name: "txonce" });
export default txonceFastify;
