import { SuperJSON } from "superjson";
import { UnencodableValueError } from "./errors.js";

/**
 * A type the codec should store and restore, beyond the built-in ones. Register one for every
 * class that your results or payloads hold.
 *
 * @example
 * const money: CustomType<Money, string> = {
 *   name: "Money",
 *   isApplicable: (v): v is Money => v instanceof Money,
 *   serialize: (m) => m.toString(),
 *   deserialize: (s) => Money.parse(s),
 * };
 */
export interface CustomType<T = any, S extends JSONValue = any> {
  /** A unique, stable name: it is written next to every stored value of this type. */
  readonly name: string;
  /** Whether `value` is of this type. */
  isApplicable(value: unknown): value is T;
  /** Turns a value into JSON. */
  serialize(value: T): S;
  /** Turns what {@link serialize} produced back into an equal value. */
  deserialize(serialized: S): T;
}

/** A value that `JSON.stringify` writes and `JSON.parse` restores as it was. */
export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };

const builtInTypes: CustomType[] = [
  {
    name: "Buffer",
    isApplicable: (v): v is Buffer => Buffer.isBuffer(v),
    serialize: (v: Buffer) => v.toString("base64"),
    deserialize: (s: string) => Buffer.from(s, "base64"),
  },
  {
    name: "Uint8Array",
    isApplicable: (v): v is Uint8Array => v instanceof Uint8Array && v.constructor === Uint8Array,
    serialize: (v: Uint8Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64"),
    deserialize: (s: string) => new Uint8Array(Buffer.from(s, "base64")),
  },
];

const typedArrays = new Set<unknown>([
  Int8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
  Float32Array, Float64Array, BigInt64Array, BigUint64Array,
]);

/**
 * Turns values into text and back, so that what comes back deep-equals what went in: `Date`,
 * `BigInt`, `Map`, `Set`, `RegExp`, `URL`, `undefined`, `NaN`, typed arrays, `Buffer`, nested
 * objects and arrays, plus the {@link CustomType}s it was given. Built on superjson.
 *
 * A value it cannot restore faithfully (a function, a symbol, an instance of an unknown class) is
 * refused with an {@link UnencodableValueError} instead of being silently trimmed.
 */
export class Codec {
  readonly #superjson = new SuperJSON();

  constructor(types: readonly CustomType[] = []) {
    for (const type of [...types, ...builtInTypes]) {
      this.#superjson.registerCustom(type, type.name);
    }
  }

  /** The JSON form of a value, after checking that it can be restored. */
  serialize(value: unknown, argument = "value") {
    this.#assertEncodable(value, argument);
    return this.#superjson.serialize(value as never);
  }

  /** Text that {@link decode} turns back into an equal value. */
  encode(value: unknown, argument = "value"): string {
    return JSON.stringify(this.serialize(value, argument));
  }

  decode<T = unknown>(text: string): T {
    return this.#superjson.parse<T>(text);
  }

  #assertEncodable(root: unknown, argument: string): void {
    const seen = new Set<object>();
    const registry = this.#superjson.customTransformerRegistry;
    const visit = (value: unknown, path: string): void => {
      if (typeof value === "function") throw new UnencodableValueError(argument, path, "a function");
      if (typeof value === "symbol") throw new UnencodableValueError(argument, path, "a symbol");
      if (typeof value !== "object" || value === null) return;
      if (seen.has(value)) return;
      seen.add(value);
      if (registry.findApplicable(value)) return;
      if (Array.isArray(value)) {
        value.forEach((item, i) => visit(item, `${path}[${i}]`));
        return;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto === null || proto === Object.prototype) {
        const symbolKey = Object.getOwnPropertySymbols(value)[0];
        if (symbolKey) throw new UnencodableValueError(argument, `${path}[${String(symbolKey)}]`, "a symbol key");
        for (const [name, item] of Object.entries(value)) visit(item, `${path}.${name}`);
        return;
      }
      if (value instanceof Date || value instanceof RegExp || value instanceof URL) return;
      if (value.constructor === Error) return;
      if (typedArrays.has(value.constructor)) return;
      if (value instanceof Map) {
        for (const [k, v] of value) {
          visit(k, `${path}.<map key>`);
          visit(v, `${path}.get(${typeof k === "string" ? JSON.stringify(k) : "…"})`);
        }
        return;
      }
      if (value instanceof Set) {
        for (const item of value) visit(item, `${path}.<set item>`);
        return;
      }
      const className = (value.constructor as { name?: string } | undefined)?.name || "anonymous";
      throw new UnencodableValueError(
        argument,
        path,
        `an instance of class ${className} (register it with the \`types\` option)`,
      );
    };
    visit(root, "$");
  }
}
