/**
 * Parsing of the `Idempotency-Key` header: RFC 8941 sf-strings (with parameters), the bare form
 * for Stripe-style clients, and what is refused.
 */
import { describe, expect, test } from "vitest";
import { parseIdempotencyKey } from "../src/http/idempotency-key.js";

const key = (value: string | readonly string[] | undefined, allowBare = true) => {
  const result = parseIdempotencyKey(value, { allowBare });
  return result?.ok ? result.key : result;
};

describe("the quoted form (RFC 8941 sf-string)", () => {
  test.each([
    ['"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ['"abc"', "abc"],
    ['  "abc"  ', "abc"],
    ['"with space and !#$%&\'()*+,-./:;<=>?@[]^_`{|}~"', "with space and !#$%&'()*+,-./:;<=>?@[]^_`{|}~"],
    ['"esc\\"aped\\\\"', 'esc"aped\\'],
    ['"a";p', "a"],
    ['"a";p=1;q="x;y";r=?0;s=tok/en:1;t=:aGk=:;u=-1.5', "a"],
    ['"a"; p=1', "a"],
  ])("%s is the key %j", (header, expected) => {
    expect(parseIdempotencyKey(header)).toEqual({ ok: true, key: expected, form: "sf-string" });
  });

  test.each([
    ['"', "no closing quote"],
    ['"abc', "no closing quote"],
    ['"abc\\"', "no closing quote"],
    ['"a\\nb"', "only \\\" and \\\\ are escapes"],
    ['"a\\', "ends with a backslash"],
    ['"tab\there"', "printable ASCII only"],
    ['"ключ"', "printable ASCII only, found U+043A"],
    ['""', "empty string"],
    ['"a" "b"', "unexpected"],
    ['"a", "b"', "unexpected \",\""],
    ['"a";', "malformed parameter"],
    ['"a";P=1', "malformed parameter"],
    ['"a";p=', "no value"],
    ['"a";p=?2', "malformed boolean"],
    ['"a";p=:abc', "malformed byte sequence"],
    ['"a";p=@', "malformed parameter value"],
    ['"a";p=1234567890123456', "malformed number"],
    ['"a";p=1.', "malformed number"],
    ['"a";p=1.2345', "malformed number"],
  ])("%s is refused (%s)", (header, reason) => {
    const result = parseIdempotencyKey(header);
    expect(result?.ok).toBe(false);
    expect(result && !result.ok && result.reason).toContain(reason);
  });
});

describe("the bare form (Stripe-style clients)", () => {
  test("a bare key is accepted by default and names the same key as its quoted form", () => {
    expect(parseIdempotencyKey("8e03978e-40d5")).toEqual({ ok: true, key: "8e03978e-40d5", form: "bare" });
    expect(key("8e03978e-40d5")).toBe(key('"8e03978e-40d5"'));
    expect(key("a:b/c=d+e_f.g~h!")).toBe("a:b/c=d+e_f.g~h!");
  });

  test.each(["two words", "a,b", "a;b", 'a"b', "a\\b", "ключ", "tab\there", "a\u0000"])("%j is refused", (header) => {
    expect(parseIdempotencyKey(header)?.ok).toBe(false);
  });

  test("allowBare: false accepts only the quoted form", () => {
    expect(key("abc", false)).toMatchObject({ ok: false, reason: expect.stringContaining("quoted string") });
    expect(key('"abc"', false)).toBe("abc");
  });
});

describe("missing, empty and repeated headers", () => {
  test("no header is undefined: the caller decides whether that is an error", () => {
    expect(parseIdempotencyKey(undefined)).toBeUndefined();
  });

  test("an empty header is malformed", () => {
    expect(parseIdempotencyKey("")).toMatchObject({ ok: false, reason: expect.stringContaining("empty") });
    expect(parseIdempotencyKey("   ")).toMatchObject({ ok: false });
  });

  test("the header sent twice is malformed; a one-element array is the value", () => {
    expect(parseIdempotencyKey(['"a"', '"b"'])).toMatchObject({ ok: false, reason: expect.stringContaining("more than once") });
    expect(key(['"a"'])).toBe("a");
  });
});
