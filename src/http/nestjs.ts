/**
 * txonce/nestjs: the `Idempotency-Key` header for NestJS 11, on both platforms
 * (`@nestjs/platform-express` and `@nestjs/platform-fastify`), per route.
 *
 * @example
 * // app.module.ts
 * @Module({ imports: [TxonceModule.forRoot({ txonce: txonce(prisma), scope: (req) => req.headers["x-account-id"] })] })
 * export class AppModule {}
 *
 * // charges.controller.ts
 * @Post("charges")
 * @Idempotent()
 * async create(@Body() body: ChargeDto, @Tx() tx: Prisma.TransactionClient) {
 *   return tx.charge.create({ data: body }); // or a service that injects TxonceTransaction
 * }
 *
 * `@Idempotent()` adds {@link TxonceInterceptor} to the route: it claims the key and runs the
 * handler inside the idempotent transaction, which the handler and every service it calls reach
 * through `TxonceTransaction` (injectable), `currentTransaction()` or `@Tx()` (an
 * AsyncLocalStorage). Nest renders the response as usual (serialization, `@HttpCode`,
 * `@Header`, exception filters); txonce stores what Nest wrote, commits, and then sends it. A
 * retry gets the stored response byte for byte, with `Idempotent-Replayed: true`.
 *
 * txonce's own classes are decorated by plain calls, so neither this package nor your build
 * needs `emitDecoratorMetadata` for them.
 */
import type { IncomingHttpHeaders, ServerResponse } from "node:http";
import {
  applyDecorators,
  createParamDecorator,
  HttpException,
  Inject,
  Injectable,
  Logger,
  Module,
  SetMetadata,
  StreamableFile,
  UseInterceptors,
  type CallHandler,
  type DynamicModule,
  type ExecutionContext,
  type FactoryProvider,
  type ModuleMetadata,
  type NestInterceptor,
  type Provider,
} from "@nestjs/common";
import { Reflector } from "@nestjs/core";
import { Observable } from "rxjs";
import { InvalidArgumentError } from "../errors.js";
import {
  checkHttpOptions,
  handleIdempotentRequest,
  headerRecord,
  headersSetByRoute,
  type HttpIdempotencyOptions,
  type HttpReply,
  type HttpRequestInfo,
  type IdempotencyRunner,
  type IdempotentResponse,
} from "./core.js";
import { holdResponse, type HeldResponse } from "./nestjs-response.js";
import { currentTransaction, idempotentContext, TxonceTransaction, type IdempotentContext } from "./nestjs-transaction.js";

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
export { currentTransaction, NoIdempotentTransactionError, TxonceTransaction } from "./nestjs-transaction.js";
export { joinIdempotentTransaction, type TransactionalAdapterLike } from "./nestjs-cls.js";

/**
 * The request as the platform gives it: an Express `Request` (platform-express) or a
 * `FastifyRequest` (platform-fastify). Typed loosely, as Nest's `@Req()` is.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type NestRequest = any;

/** Options of `@Idempotent(options)`, overriding the module's; `req` is the platform's request. */
export type NestIdempotencyOptions<TxOptions = unknown> = HttpIdempotencyOptions<NestRequest, TxOptions>;

/** Options of `TxonceModule.forRoot`: the txonce instance, and the defaults of every `@Idempotent()` route. */
export interface TxonceModuleOptions<Tx = unknown, TxOptions = unknown> extends NestIdempotencyOptions<TxOptions> {
  /** The object `txonce(prisma)` (txonce/prisma) or `txonce(pool)` (txonce/pg) returned. (Required) */
  txonce: IdempotencyRunner<Tx, TxOptions>;
}

/** Options of `TxonceModule.forRootAsync`: a factory of {@link TxonceModuleOptions}, with its injections. */
export interface TxonceModuleAsyncOptions extends Pick<ModuleMetadata, "imports"> {
  /** Makes the module's options, e.g. `(prisma: PrismaService) => ({ txonce: txonce(prisma) })`. (Required) */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  useFactory: (...args: any[]) => TxonceModuleOptions<any, any> | Promise<TxonceModuleOptions<any, any>>;
  /** The providers whose instances `useFactory` gets, in order. (Default: none) */
  inject?: FactoryProvider["inject"];
}

/** The injection token of the module's options. */
export const TXONCE_MODULE_OPTIONS = Symbol.for("txonce:nestjs:module-options");
/** The metadata key under which `@Idempotent(options)` keeps the route's options. */
export const IDEMPOTENT_ROUTE_OPTIONS = "txonce:idempotent-route-options";

/** Nest's metadata keys (from `@nestjs/common/constants`) that tell how a route responds. */
const ROUTE_ARGS_METADATA = "__routeArguments__";
const RESPONSE_PASSTHROUGH_METADATA = "__responsePassthrough__";
const SSE_METADATA = "__sse__";
/** `RouteParamtypes.RESPONSE` and `RouteParamtypes.NEXT`: a handler with `@Res()` or `@Next()` responds itself. */
const RESPONSE_PARAM_TYPES = new Set(["1", "2"]);

/** Nest's default body for an error it does not know, also sent when txonce fails after Nest wrote the response. */
const INTERNAL_SERVER_ERROR: HttpReply = {
  status: 500,
  headers: { "content-type": "application/json; charset=utf-8" },
  body: Buffer.from(JSON.stringify({ statusCode: 500, message: "Internal server error" })),
  replayed: false,
};

function checkRunner(runner: unknown): void {
  const candidate = runner as Partial<IdempotencyRunner<unknown>> | null;
  if (candidate === null || typeof candidate !== "object" || typeof candidate.withIdempotencyOutcome !== "function") {
    throw new InvalidArgumentError("txonce", "expected the object that txonce(prisma) or txonce(pool) returns");
  }
}

/** The parts of an Express or Fastify request that the core reads. */
function requestInfo(request: NestRequest): HttpRequestInfo<NestRequest> {
  const headers = request.headers as IncomingHttpHeaders;
  const fastifyRoute: unknown = request.routeOptions?.url;
  const expressRoute: unknown = request.route?.path;
  const route =
    typeof fastifyRoute === "string"
      ? fastifyRoute
      : typeof expressRoute === "string"
        ? `${request.baseUrl ?? ""}${expressRoute}`
        : String(request.url).split("?")[0]!;
  return {
    request,
    method: String(request.method).toUpperCase(),
    route,
    url: String(request.originalUrl ?? request.url),
    body: request.body,
    header: (name) => headers[name],
  };
}

/** Whether the route writes its response itself (`@Res()` or `@Next()` without `passthrough`). */
function respondsItself(context: ExecutionContext): boolean {
  const controller = context.getClass();
  const method = context.getHandler().name;
  const args = (Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, method) ?? {}) as Record<string, unknown>;
  const usesResponse = Object.keys(args).some((key) => RESPONSE_PARAM_TYPES.has(key.split(":")[0]!));
  return usesResponse && !Reflect.getMetadata(RESPONSE_PASSTHROUGH_METADATA, controller, method);
}

/** Whether Nest can serialize the handler's value (`JSON.stringify` throws on a circular value or a `BigInt`). */
function sendableAsJson(value: unknown): boolean {
  if (value === null || typeof value !== "object" || Buffer.isBuffer(value)) return typeof value !== "bigint";
  try {
    JSON.stringify(value);
    return true;
  } catch {
    return false;
  }
}

function isStreamBody(value: unknown): boolean {
  if (value instanceof StreamableFile) return true;
  if (value === null || typeof value !== "object") return false;
  return (
    typeof (value as { pipe?: unknown }).pipe === "function" ||
    typeof (value as { getReader?: unknown }).getReader === "function" ||
    (Symbol.asyncIterator in value && !Array.isArray(value))
  );
}

/** A 4xx `HttpException` thrown by the route's own method: a client error, stored like a returned 4xx. */
function isClientError(error: unknown, context: IdempotentContext): boolean {
  if (!context.handlerStarted || !(error instanceof HttpException)) return false;
  const status = error.getStatus();
  return status >= 400 && status < 500;
}

type HandlerOutcome = { readonly failed: false; readonly value: unknown } | { readonly failed: true; readonly error: unknown };

/** Runs the rest of Nest's chain (pipes, then the route's method) inside the idempotent transaction. */
function runHandler(next: CallHandler, context: IdempotentContext): Promise<HandlerOutcome> {
  return new Promise((resolve) => {
    let value: unknown;
    idempotentContext.run(context, () =>
      next.handle().subscribe({
        next: (emitted) => (value = emitted),
        error: (error: unknown) => resolve({ failed: true, error }),
        complete: () => resolve({ failed: false, value }),
      }),
    );
  });
}

/**
 * The interceptor behind `@Idempotent()`. Nest makes one per module that uses it; it gets the
 * module's options from {@link TxonceModule}.
 */
export class TxonceInterceptor implements NestInterceptor {
  private readonly logger = new Logger("TxonceInterceptor");

  constructor(
    private readonly options: TxonceModuleOptions,
    private readonly reflector: Reflector,
  ) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== "http") return next.handle();
    if (this.reflector.get(SSE_METADATA, context.getHandler())) {
      throw new InvalidArgumentError("@Idempotent()", "an @Sse() route streams its response, which cannot be stored and replayed");
    }
    const { txonce, ...defaults } = this.options;
    const routeOptions = this.reflector.get<NestIdempotencyOptions | undefined>(IDEMPOTENT_ROUTE_OPTIONS, context.getHandler());
    const options: NestIdempotencyOptions = { ...defaults, ...routeOptions };
    const http = context.switchToHttp();
    const request: NestRequest = http.getRequest();
    const response = http.getResponse<{ raw?: ServerResponse; getHeaders(): Record<string, unknown> }>();
    const raw = (response.raw ?? response) as ServerResponse;
    const info = requestInfo(request);
    const selfResponding = respondsItself(context);

    return new Observable<unknown>((subscriber) => {
      const before = headerRecord(response.getHeaders());
      const held: HeldResponse = holdResponse(raw, before);
      /** Set once Nest has been handed the handler's outcome, and so writes (or wrote) the response. */
      let forwarded = false;

      const operation = async (tx: unknown): Promise<IdempotentResponse> => {
        const handlerContext: IdempotentContext = { tx, handlerStarted: false };
        const outcome = await runHandler(next, handlerContext);
        if (outcome.failed) {
          // Anything but a client error rolls back; Nest's filters answer it once the rollback is done.
          if (!isClientError(outcome.error, handlerContext)) throw outcome.error;
          forwarded = true;
          subscriber.error(outcome.error);
        } else {
          // Refused before Nest writes anything: rolls back, and Nest's filters answer the error.
          if (isStreamBody(outcome.value)) {
            const stream = outcome.value instanceof StreamableFile ? outcome.value.getStream() : outcome.value;
            (stream as { destroy?: () => void }).destroy?.(); // nobody reads it: release what it holds (a file)
            return { body: stream };
          }
          // Refused before Nest renders it, like a stream: the core names what cannot be sent as JSON.
          if (!sendableAsJson(outcome.value)) return { body: outcome.value };
          forwarded = true;
          subscriber.next(outcome.value);
          subscriber.complete();
        }
        const rendered = await held.rendered;
        return {
          status: rendered.status,
          headers: headersSetByRoute(rendered.headers, before),
          body: rendered.body.length > 0 ? rendered.body : undefined,
        };
      };

      handleIdempotentRequest(txonce, options, info, operation).then(
        (reply) => {
          if (forwarded) {
            held.send(reply);
            return;
          }
          // A replay or txonce's own answer: Nest renders an empty result, which is dropped for the reply.
          subscriber.next(undefined);
          subscriber.complete();
          if (selfResponding) held.send(reply);
          else void held.rendered.then(() => held.send(reply), () => held.release());
        },
        (error: unknown) => {
          if (!forwarded) {
            held.release();
            subscriber.error(error);
            return;
          }
          // Nest already wrote the response (held, not sent): its exception filters cannot run again.
          this.logger.error(
            `The response of ${info.method} ${info.url} was not stored, and a 500 was sent instead: ${String(error)}`,
            error instanceof Error ? error.stack : undefined,
          );
          held.send(INTERNAL_SERVER_ERROR);
        },
      );
    });
  }
}
Injectable()(TxonceInterceptor);
Inject(TXONCE_MODULE_OPTIONS)(TxonceInterceptor, undefined, 0);
Inject(Reflector)(TxonceInterceptor, undefined, 1);
Injectable()(TxonceTransaction);

/**
 * Makes the route take an `Idempotency-Key` and run in the idempotent transaction; `options`
 * override the module's for this route. Put it on a route handler method.
 */
export function Idempotent(options: NestIdempotencyOptions = {}): MethodDecorator {
  checkHttpOptions(options);
  const apply = applyDecorators(SetMetadata(IDEMPOTENT_ROUTE_OPTIONS, options), UseInterceptors(TxonceInterceptor));
  return (target, propertyKey, descriptor) => {
    const method = descriptor.value as unknown;
    if (typeof method !== "function") throw new TypeError("@Idempotent() goes on a route handler method");
    // Marks the moment the route's own method starts, after Nest's pipes: a 4xx HttpException
    // thrown by a pipe (e.g. ValidationPipe's 400) rolls back, one thrown by the method is stored.
    const marked = function (this: unknown, ...args: unknown[]) {
      const context = idempotentContext.getStore();
      if (context) context.handlerStarted = true;
      return (method as (...args: unknown[]) => unknown).apply(this, args);
    };
    Object.defineProperty(marked, "name", { value: method.name });
    for (const key of Reflect.getOwnMetadataKeys(method)) {
      Reflect.defineMetadata(key, Reflect.getOwnMetadata(key, method), marked);
    }
    (descriptor as TypedPropertyDescriptor<unknown>).value = marked;
    apply(target, propertyKey, descriptor);
    return descriptor;
  };
}

/** The transaction client of the running `@Idempotent()` request, as a handler parameter: `@Tx() tx: Prisma.TransactionClient`. */
export const Tx: () => ParameterDecorator = createParamDecorator(() => currentTransaction());

/**
 * The module: import it once, in the root module, with `forRoot` or `forRootAsync`. It is global:
 * `@Idempotent()` routes and `TxonceTransaction` work in every module.
 */
export class TxonceModule {
  /** With the txonce instance at hand: `TxonceModule.forRoot({ txonce: txonce(prisma), scope })`. */
  static forRoot<Tx, TxOptions>(options: TxonceModuleOptions<Tx, TxOptions>): DynamicModule {
    checkRunner(options?.txonce);
    checkHttpOptions(options);
    return TxonceModule.withOptionsProvider({ provide: TXONCE_MODULE_OPTIONS, useValue: options });
  }

  /** With the txonce instance made from other providers, e.g. `useFactory: (prisma: PrismaService) => ({ txonce: txonce(prisma) })`. */
  static forRootAsync(options: TxonceModuleAsyncOptions): DynamicModule {
    if (typeof options?.useFactory !== "function") {
      throw new InvalidArgumentError("useFactory", "expected a function that returns { txonce, ...options }");
    }
    const module = TxonceModule.withOptionsProvider({
      provide: TXONCE_MODULE_OPTIONS,
      inject: options.inject ?? [],
      useFactory: async (...args: unknown[]) => {
        const resolved = await options.useFactory(...args);
        checkRunner(resolved?.txonce);
        checkHttpOptions(resolved);
        return resolved;
      },
    });
    return { ...module, imports: options.imports ?? [] };
  }

  private static withOptionsProvider(provider: Provider): DynamicModule {
    return {
      module: TxonceModule,
      global: true,
      providers: [provider, TxonceInterceptor, TxonceTransaction],
      exports: [TXONCE_MODULE_OPTIONS, TxonceInterceptor, TxonceTransaction],
    };
  }
}
Module({})(TxonceModule);
