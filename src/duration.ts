import ms from "ms";
import { InvalidArgumentError } from "./errors.js";

/**
 * A length of time: milliseconds as a number, or a string with a unit such as `"500ms"`, `"2s"`,
 * `"15m"`, `"48h"` or `"7d"` (the format of the `ms` package). A string without a unit (`"48"`)
 * is refused: it is more likely hours or seconds read from a config file than milliseconds.
 */
export type Duration = number | string;

/** A string that `ms` would read as milliseconds because it has no unit. */
const BARE_NUMBER = /^\s*[-+]?(\d+\.?\d*|\.\d+)\s*$/;

/** Milliseconds in a duration, or an {@link InvalidArgumentError} naming `argument`. */
export function toMilliseconds(
  duration: Duration,
  argument: string,
  { min = 1, max = 10 * 365 * 24 * 3600 * 1000 }: { min?: number; max?: number } = {},
): number {
  let millis: number;
  if (typeof duration === "number") {
    millis = duration;
  } else if (typeof duration === "string") {
    if (BARE_NUMBER.test(duration)) {
      const n = duration.trim();
      throw new InvalidArgumentError(argument, `${JSON.stringify(duration)} has no unit: write "${n}ms", "${n}s", "${n}m" or "${n}h"`);
    }
    try {
      millis = ms(duration as ms.StringValue);
    } catch {
      millis = Number.NaN; // ms throws on an empty string
    }
  } else {
    throw new InvalidArgumentError(argument, `expected a number of milliseconds or a string like "48h", got ${typeof duration}`);
  }
  if (typeof millis !== "number" || !Number.isFinite(millis)) {
    throw new InvalidArgumentError(argument, `${JSON.stringify(duration)} is not a duration (examples: 500, "2s", "48h", "7d")`);
  }
  if (millis < min || millis > max) {
    throw new InvalidArgumentError(argument, `${JSON.stringify(duration)} is out of range (${ms(min)} to ${ms(max, { long: true })})`);
  }
  return Math.ceil(millis);
}
