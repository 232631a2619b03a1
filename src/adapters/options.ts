import { InvalidArgumentError } from "../errors.js";

/**
 * Checks one transaction option against the values the client knows, so that a misspelt level
 * is refused with {@link InvalidArgumentError} before anything is written (a library's own check
 * throws a plain `Error`, which would read as a connection failure at BEGIN).
 */
export function checkOption<T extends string>(value: T | undefined, allowed: readonly T[], argument: string): T | undefined {
  if (value !== undefined && !allowed.includes(value)) {
    throw new InvalidArgumentError(argument, `expected one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${JSON.stringify(value)}`);
  }
  return value;
}
