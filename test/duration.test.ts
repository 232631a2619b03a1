/**
 * Durations as every option takes them: a number is milliseconds, a string needs a unit.
 */
import { expect, test } from "vitest";
import { InvalidArgumentError } from "../src/index.js";
import { toMilliseconds } from "../src/duration.js";

test.each([
  [500, 500],
  ["500ms", 500],
  ["2s", 2_000],
  ["15m", 900_000],
  ["48h", 172_800_000],
  ["7d", 604_800_000],
  ["1.5h", 5_400_000],
])("%j is %i ms", (duration, millis) => {
  expect(toMilliseconds(duration, "retention")).toBe(millis);
});

test.each(["48", " 48 ", "0.5", "+3", "-1", ".5", "1e3"])("the string %j has no unit and is refused", (duration) => {
  let thrown: unknown;
  try {
    toMilliseconds(duration, "retention");
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(InvalidArgumentError);
  expect((thrown as InvalidArgumentError).argument).toBe("retention");
  if (duration !== "1e3") expect((thrown as InvalidArgumentError).reason).toMatch(/has no unit: write "[^"]+ms", "[^"]+s"/);
});

test.each([["two days"], [""], [Number.NaN], [Infinity], [null], [{}]])("%j is not a duration", (duration) => {
  expect(() => toMilliseconds(duration as never, "lockTimeout")).toThrow(InvalidArgumentError);
});
