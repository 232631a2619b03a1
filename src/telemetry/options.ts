/** The options of txonce's telemetry: a file of its own, with no OpenTelemetry type in it. */
/** Options of txonce's OpenTelemetry spans and metrics, on `txonce(client, { telemetry })`. */
export interface TelemetryOptions {
  /**
   * Emit spans and metrics through `@opentelemetry/api`. They cost nothing measurable until an
   * OpenTelemetry SDK is registered, and nothing at all when the package is not installed; `false`
   * turns them off even when an SDK is registered. (Default: `true`)
   */
  enabled?: boolean;
  /**
   * Put the idempotency key and scope on the `withIdempotency` spans (`txonce.idempotency.key`,
   * `txonce.idempotency.scope`). Keys and scopes may be personal data (an e-mail address, a
   * customer id): turn this on only when yours are not. They never go on metrics. (Default: `false`)
   */
  recordKeys?: boolean;
}
