/**
 * The `Idempotency-Key` request header, as the IETF HTTPAPI draft "The Idempotency-Key HTTP
 * Header Field" defines it: an Item Structured Header Field (RFC 8941) whose value is a String,
 * e.g. `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`.
 *
 * Many clients written for Stripe-style APIs send the key unquoted
 * (`Idempotency-Key: 8e03978e-...`). {@link parseIdempotencyKey} accepts that form too unless told
 * not to (`allowBare: false`): a bare key is one run of visible ASCII characters without `"`, `\`,
 * `,` or `;`, so nothing that could be the start of a structured field is read as a bare key.
 */

/** Why a header value is not an idempotency key, for the 400 response's `detail`. */
export type KeyParseResult =
  | { readonly ok: true; readonly key: string; readonly form: "sf-string" | "bare" }
  | { readonly ok: false; readonly reason: string };

/** Options of {@link parseIdempotencyKey}. */
export interface ParseIdempotencyKeyOptions {
  /**
   * Accept an unquoted key (`Idempotency-Key: abc-123`), as Stripe-style clients send it, besides
   * the draft's quoted sf-string (`Idempotency-Key: "abc-123"`). Both name the same key `abc-123`.
   * (Default: `true`)
   */
  allowBare?: boolean;
}

const BARE_KEY = /^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$/;
const PARAM_KEY_START = /[a-z*]/;
const PARAM_KEY_CHAR = /[a-z0-9_\-.*]/;
const TOKEN_START = /[A-Za-z*]/;
const TOKEN_CHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z:/]/;
const BASE64_CHAR = /[A-Za-z0-9+/=]/;

/**
 * Parses an `Idempotency-Key` header value. `undefined` or an array (the header sent more than
 * once) are reported as such; the caller decides whether a missing key is an error.
 *
 * The quoted form is parsed as an RFC 8941 Item: an sf-string (printable ASCII, with `\"` and `\\`
 * the only escapes) followed by optional parameters, which are checked for syntax and ignored
 * (the draft defines none). An empty string is refused: it cannot name a request.
 */
export function parseIdempotencyKey(
  value: string | readonly string[] | undefined,
  { allowBare = true }: ParseIdempotencyKeyOptions = {},
): KeyParseResult | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") {
    if (value.length === 1) return parseIdempotencyKey(value[0], { allowBare });
    return { ok: false, reason: "the Idempotency-Key header was sent more than once" };
  }
  // RFC 8941 4.2: discard leading and trailing spaces (HTTP already strips other whitespace).
  const input = value.replace(/^ +| +$/g, "");
  if (input.startsWith('"')) {
    const parser = new ItemParser(input);
    const result = parser.parseStringItem();
    if (!result.ok) return result;
    if (result.key.length === 0) return { ok: false, reason: "the key is an empty string" };
    return result;
  }
  if (input.length === 0) return { ok: false, reason: "the Idempotency-Key header is empty" };
  if (allowBare && BARE_KEY.test(input)) return { ok: true, key: input, form: "bare" };
  return {
    ok: false,
    reason: allowBare
      ? 'expected a quoted string like "8e03978e-40d5" (RFC 8941 sf-string) or an unquoted key of visible ASCII characters without spaces, quotes, backslashes, commas or semicolons'
      : 'expected a quoted string like "8e03978e-40d5" (RFC 8941 sf-string)',
  };
}

/** Thrown inside the parser; turned into `{ ok: false }` at its edge. */
class Malformed {
  constructor(readonly reason: string) {}
}

/** The part of an RFC 8941 parser that an Item whose bare item is a String needs. */
class ItemParser {
  private pos = 0;
  constructor(private readonly input: string) {}

  parseStringItem(): KeyParseResult {
    try {
      const key = this.parseString();
      this.parseParameters();
      if (this.pos !== this.input.length) {
        throw new Malformed(`unexpected ${JSON.stringify(this.input[this.pos])} after the quoted key at position ${this.pos}`);
      }
      return { ok: true, key, form: "sf-string" };
    } catch (error) {
      if (error instanceof Malformed) return { ok: false, reason: error.reason };
      throw error;
    }
  }

  private peek(): string | undefined {
    return this.input[this.pos];
  }

  /** RFC 8941 4.2.5. */
  private parseString(): string {
    if (this.input[this.pos] !== '"') throw new Malformed(`expected '"' at position ${this.pos}`);
    this.pos++;
    let out = "";
    while (this.pos < this.input.length) {
      const char = this.input[this.pos++]!;
      if (char === "\\") {
        const next = this.input[this.pos++];
        if (next === undefined) throw new Malformed("the quoted key ends with a backslash");
        if (next !== '"' && next !== "\\") {
          throw new Malformed(`only \\" and \\\\ are escapes in a quoted key, found \\${next}`);
        }
        out += next;
      } else if (char === '"') {
        return out;
      } else {
        const code = char.charCodeAt(0);
        if (code < 0x20 || code > 0x7e) {
          throw new Malformed(`a quoted key may hold printable ASCII only, found U+${code.toString(16).toUpperCase().padStart(4, "0")}`);
        }
        out += char;
      }
    }
    throw new Malformed("the quoted key has no closing quote");
  }

  /** RFC 8941 4.2.3.2: `;key[=bare-item]` repeated; the values are validated and discarded. */
  private parseParameters(): void {
    while (this.peek() === ";") {
      this.pos++;
      while (this.peek() === " ") this.pos++;
      const start = this.peek();
      if (start === undefined || !PARAM_KEY_START.test(start)) throw new Malformed(`malformed parameter at position ${this.pos}`);
      while (this.pos < this.input.length && PARAM_KEY_CHAR.test(this.peek()!)) this.pos++;
      if (this.peek() === "=") {
        this.pos++;
        this.parseBareItem();
      }
    }
  }

  /** RFC 8941 4.2.3.1, for parameter values: integer, decimal, string, token, byte sequence, boolean. */
  private parseBareItem(): void {
    const char = this.peek();
    if (char === undefined) throw new Malformed("a parameter has no value after '='");
    if (char === '"') {
      this.parseString();
    } else if (char === "-" || /[0-9]/.test(char)) {
      // RFC 8941 4.2.4: an integer has at most 15 digits; a decimal at most 12, a dot, and 1 to 3.
      const match = /^-?([0-9]+)(\.([0-9]*))?/.exec(this.input.slice(this.pos));
      const [whole = "", integer = "", dot, fraction = ""] = match ?? [];
      const valid = dot === undefined ? integer.length <= 15 : integer.length <= 12 && fraction.length >= 1 && fraction.length <= 3;
      if (!match || !valid) throw new Malformed("malformed number in a parameter");
      this.pos += whole.length;
    } else if (char === ":") {
      this.pos++;
      while (this.pos < this.input.length && BASE64_CHAR.test(this.peek()!)) this.pos++;
      if (this.peek() !== ":") throw new Malformed("malformed byte sequence in a parameter");
      this.pos++;
    } else if (char === "?") {
      const value = this.input[this.pos + 1];
      if (value !== "0" && value !== "1") throw new Malformed("malformed boolean in a parameter");
      this.pos += 2;
    } else if (TOKEN_START.test(char)) {
      this.pos++;
      while (this.pos < this.input.length && TOKEN_CHAR.test(this.peek()!)) this.pos++;
    } else {
      throw new Malformed(`malformed parameter value at position ${this.pos}`);
    }
  }
}
