/**
 * `txonce/publishers/webhook`: POSTs each outbox message to an HTTP endpoint with Node's own
 * `fetch`, with `Idempotency-Key: <message id>` so that a receiver that honours it (txonce's
 * own HTTP layer does) applies a redelivered message once. No dependency.
 *
 * Outcomes: a 2xx response is success. Anything else fails the publish, so the relay retries it
 * with its backoff and dead-letters it after `maxAttempts`: 5xx, 408 and 429 are transient;
 * other 4xx (and 3xx: redirects are not followed) are marked `permanent` on the
 * {@link PublishRejectedError}, and the relay dead-letters them at once: fix the receiver, then
 * `outbox.requeueDead()`.
 * A `Retry-After` header is not honoured: the relay's backoff decides.
 *
 * @example
 * const publisher = webhookPublisher({ url: (m) => `https://hooks.example.com/${m.topic}`, timeout: "5s" });
 * const relay = outbox.relay({ publisher });
 */
import { toMilliseconds, type Duration } from "../../duration.js";
import { InvalidArgumentError } from "../../errors.js";
import type { OutboxMessage, Publisher } from "../message.js";
import { headersOf, PublishRejectedError, txonceFormat, type WireFormat } from "./common.js";

export { jsonFormat, txonceFormat, TXONCE_CONTENT_TYPE, MetadataHeaders, PublishRejectedError, type WireFormat } from "./common.js";

/** Options of {@link webhookPublisher}. */
export interface WebhookPublisherOptions {
  /** Where to POST a message: a URL, or a function of the message. (Required) */
  url: string | URL | ((message: OutboxMessage) => string | URL);
  /**
   * Extra request headers, e.g. `Authorization`; a function of the message may sign it. They
   * override the message's own headers, and are overridden by `Idempotency-Key` and
   * `Content-Type`. (Default: none)
   */
  headers?: Record<string, string> | ((message: OutboxMessage, body: string | Uint8Array) => Record<string, string>);
  /**
   * Longest wait for the response, headers and body; keep it below the relay's `publishTimeout`
   * (default 10s). (Default: `"5s"`)
   */
  timeout?: Duration;
  /** How the payload is written (the request body and its `Content-Type`). (Default: {@link txonceFormat}) */
  format?: WireFormat;
  /** The `fetch` to use, e.g. one with a proxy agent. (Default: `globalThis.fetch`) */
  fetch?: typeof fetch;
}

/** The endpoint answered with a status other than 2xx. */
export class WebhookStatusError extends PublishRejectedError {
  constructor(
    message: string,
    messageId: string,
    /** The HTTP status of the response. */
    readonly status: number,
    permanent: boolean,
  ) {
    super(message, messageId, permanent);
  }
}

/** Whether a non-2xx status is not worth retrying: 4xx other than 408 and 429, and 3xx. */
export function isPermanentStatus(status: number): boolean {
  return status >= 300 && status < 500 && status !== 408 && status !== 429;
}

/**
 * A publisher that POSTs the message body with `Idempotency-Key`, `Content-Type`, the message's
 * headers plus `txonce-message-id`, `txonce-topic` and `txonce-key`; it resolves on 2xx and
 * rejects with a {@link WebhookStatusError} (a {@link PublishRejectedError}) otherwise, or with the
 * network error or timeout.
 */
export function webhookPublisher(options: WebhookPublisherOptions): Publisher & { close(): Promise<void> } {
  const { url } = options;
  if (typeof url !== "string" && typeof url !== "function" && !(url instanceof URL)) {
    throw new InvalidArgumentError("url", "expected a URL, a string or a function of the message");
  }
  const timeoutMs = toMilliseconds(options.timeout ?? "5s", "timeout");
  const format = options.format ?? txonceFormat;
  const doFetch = options.fetch ?? globalThis.fetch;
  const controllers = new Set<AbortController>();

  return {
    system: "webhook",
    async publish(message) {
      const target = typeof url === "function" ? url(message) : url;
      const body = format.encode(message);
      const extra = typeof options.headers === "function" ? options.headers(message, body) : (options.headers ?? {});
      const headers = {
        ...headersOf(message),
        ...extra,
        "content-type": format.contentType,
        "idempotency-key": message.id,
      };
      const controller = new AbortController();
      controllers.add(controller);
      const timer = setTimeout(() => controller.abort(new Error(`the webhook did not answer within ${timeoutMs} ms`)), timeoutMs);
      try {
        const response = await doFetch(target, { method: "POST", headers, body, redirect: "manual", signal: controller.signal });
        // Read the body (bounded by the same timeout) so the connection can be reused.
        const text = await response.text().catch(() => "");
        if (response.status < 200 || response.status > 299) {
          const permanent = isPermanentStatus(response.status);
          throw new WebhookStatusError(
            `the webhook answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}${text ? `: ${text.slice(0, 200)}` : ""}`,
            message.id,
            response.status,
            permanent,
          );
        }
      } finally {
        clearTimeout(timer);
        controllers.delete(controller);
      }
    },
    /** Aborts the requests in flight. */
    async close() {
      for (const controller of controllers) controller.abort(new Error("the webhook publisher was closed"));
    },
  };
}
