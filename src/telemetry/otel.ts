/**
 * `@opentelemetry/api`, if the application has it: an optional peer dependency. It is loaded
 * synchronously on first use (so the first call of a process is traced like any other) through
 * `require`, and not at all when it is missing or telemetry is off. The API keeps its providers
 * in a process-wide registry, so the copy loaded here sees the SDK the application registered
 * with its own `import`.
 *
 * Nothing outside src/telemetry/ sees an OpenTelemetry type: the rest of txonce talks to the small
 * interfaces these files export, which also keeps `@opentelemetry/api` out of txonce's published
 * type declarations.
 */
import { createRequire } from "node:module";
import type * as Api from "@opentelemetry/api";

export type OtelApi = typeof Api;

let loaded: OtelApi | null | undefined;

/** The API, or `undefined` when it is not installed. */
export function otelApi(): OtelApi | undefined {
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)("@opentelemetry/api") as OtelApi;
    } catch {
      loaded = null;
    }
  }
  return loaded ?? undefined;
}

/** txonce's instrumentation scope: the tracer's and the meter's name. */
export const SCOPE_NAME = "txonce";
let version: string | undefined;

/** The package's version (from the package.json two folders up: dist/telemetry/ or src/telemetry/), the scope's version. */
export function scopeVersion(): string {
  version ??= (createRequire(import.meta.url)("../../package.json") as { version: string }).version;
  return version;
}
