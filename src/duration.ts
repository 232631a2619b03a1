import ms from "ms";
import { InvalidArgumentError } from "./errors.js";

/**
 * A length of time: milliseconds as a number, or a string such as `"500ms"`, `"2s"`, `"15m"`,
 * `"48h"` or `"7d"` (the format of the `ms` package).
 */
export type Duration = number | string;

/** Milliseconds in a duration, or an {@link InvalidArgumentError} naming `argument`. */
export function toMilliseconds(
  duration: Duration,
  argument: string,
  { min = 1, max = 10 * 365 * 24 * 3600 * 1000 }: { min?: number; max?: number } = {},
): number {
  let millis: number;
  if (typeof duration === "number") millis = duration;
  else if (typeof duration === "string") millis = ms(duration as ms.StringValue);
  else throw new InvalidArgumentError(argument, `expected a number of milliseconds or a string like "48h", got ${typeof duration}`);
  if (typeof millis !== "number" || !Number.isFinite(millis)) {
    throw new InvalidArgumentError(argument, `${JSON.stringify(duration)} is not a duration (examples: 500, "2s", "48h", "7d")`);
  }
  if (millis < min || millis > max) {
    throw new InvalidArgumentError(argument, `${JSON.stringify(duration)} is out of range (${ms(min)} to ${ms(max, { long: true })})`);
  }
  return Math.ceil(millis);
}
