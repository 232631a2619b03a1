import { toMilliseconds, type Duration } from "../duration.js";

/** How long a failed message waits before its next attempt. */
export interface BackoffOptions {
  /** Wait after the first failure. (Default: `"1s"`) */
  initial?: Duration;
  /** Longest wait. (Default: `"5m"`) */
  max?: Duration;
  /** Growth per attempt. (Default: `2`) */
  factor?: number;
}

/**
 * Exponential backoff with jitter: after attempt n the wait is drawn uniformly from
 * [d/2, d], d = min(max, initial * factor^(n-1)), so retries of many messages spread out.
 */
export function backoffPolicy(options: BackoffOptions = {}): (attempts: number) => number {
  const initial = toMilliseconds(options.initial ?? "1s", "backoff.initial");
  const max = toMilliseconds(options.max ?? "5m", "backoff.max");
  const factor = options.factor ?? 2;
  return (attempts) => {
    const ceiling = Math.min(max, initial * factor ** Math.max(0, attempts - 1));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  };
}
