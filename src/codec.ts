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

/**
 * The standard error classes, stored as their class, `name` and `message`. Not the stack (it
 * describes where the error was made, not the result), and nothing else: an error with a `cause`
 * or properties of its own is refused, since those would be lost. Subclasses of your own are
 * classes like any other: register them with the `types` option.
 */
const errorClasses: readonly ErrorConstructor[] = [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError];
const errorTypes: CustomType[] = errorClasses.map((ErrorClass) => ({
  name: ErrorClass.name,
  isApplicable: (v): v is Error => v instanceof ErrorClass && Object.getPrototypeOf(v) === ErrorClass.prototype,
  serialize: (v: Error) => (v.name === ErrorClass.name ? { message: v.message } : { message: v.message, name: v.name }),
  deserialize: ({ message, name }: { message: string; name?: string }) => {
    const error = new ErrorClass(message);
    if (name !== undefined) error.name = name;
    error.stack = `${error.name}: ${message}`; // not where it was decoded
    return error;
  },
}));

/** What is kept of an error (`name` is often set by assignment, which makes it an own property). */
const STORED_ERROR_PROPERTIES = new Set(["name", "message", "stack"]);

const typedArrays = new Set<unknown>([
  Int8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
  Float32Array, Float64Array, BigInt64Array, BigUint64Array,
]);

/**
 * Turns values into text and back, so that what comes back deep-equals what went in: `Date`,
 * `BigInt`, `Map`, `Set`, `RegExp`, `URL`, `undefined`, `NaN`, typed arrays, `Buffer`, nested
 * objects and arrays (plain data, whatever prototype a parser gave it: see {@link isPlainData}),
 * the standard error classes (class, name and message), plus the {@link CustomType}s it was
 * given. An object that appears twice is restored as one object shared by both places. Built on
 * superjson.
 *
 * A value it cannot restore faithfully (a function, a symbol, an instance of an unknown class, an
 * error with a `cause` or properties of its own) is refused with an {@link UnencodableValueError}
 * instead of being silently trimmed, and so is a value that contains itself (a circular
 * reference), on every path: results, fingerprints, outbox payloads (and HTTP bodies, which JSON
 * cannot hold circular either).
 */
export class Codec {
  readonly #superjson = new SuperJSON();

  constructor(types: readonly CustomType[] = []) {
    for (const type of [...types, ...builtInTypes, ...errorTypes]) {
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
    // The objects on the path from the root to the value being visited: meeting one again is a cycle.
    const ancestors = new Map<object, string>();
    const registry = this.#superjson.customTransformerRegistry;
    const visit = (value: unknown, path: string): void => {
      if (typeof value === "function") throw new UnencodableValueError(argument, path, "a function");
      if (typeof value === "symbol") throw new UnencodableValueError(argument, path, "a symbol");
      if (typeof value !== "object" || value === null) return;
      const cycleTo = ancestors.get(value);
      if (cycleTo !== undefined) throw new UnencodableValueError(argument, path, `a circular reference (to ${cycleTo})`);
      if (seen.has(value)) return; // the same object again, not inside itself: stored once, restored shared
      seen.add(value);
      ancestors.set(value, path);
      visitObject(value, path);
      ancestors.delete(value);
    };
    const visitObject = (value: object, path: string): void => {
      if (value instanceof Error) {
        const lost = Object.hasOwn(value, "cause") ? "cause" : Object.keys(value).find((name) => !STORED_ERROR_PROPERTIES.has(name));
        if (lost !== undefined && errorTypes.some((type) => type.isApplicable(value))) {
          throw new UnencodableValueError(
            argument,
            path,
            `an error (${value.name}) with a \`${lost}\` property, which would be lost: an error is stored as its class, name and message only (return a plain object to keep more)`,
          );
        }
      }
      if (registry.findApplicable(value)) return;
      if (Array.isArray(value)) {
        value.forEach((item, i) => visit(item, `${path}[${i}]`));
        return;
      }
      if (isPlainData(value)) {
        const symbolKey = Object.getOwnPropertySymbols(value)[0];
        if (symbolKey) throw new UnencodableValueError(argument, `${path}[${String(symbolKey)}]`, "a symbol key");
        for (const [name, item] of Object.entries(value)) visit(item, `${path}.${name}`);
        return;
      }
      if (value instanceof Date || value instanceof RegExp || value instanceof URL) return;
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
      throw new UnencodableValueError(argument, path, describeUnknown(value));
    };
    visit(root, "$");
  }
}

/**
 * Plain data: an object whose prototypes add nothing to it (no methods, getters or constructor),
 * so its own properties are all there is. Object literals, `Object.create(null)`, and the objects
 * of query-string parsers (`node:querystring`, `qs` with `plainObjects`, `fast-querystring`
 * behind `@fastify/formbody`, whose prototype is an empty object without a prototype) all are.
 * They are replayed as object literals.
 */
function isPlainData(value: object): boolean {
  for (let proto = Object.getPrototypeOf(value); proto !== null; proto = Object.getPrototypeOf(proto)) {
    if (proto === Object.prototype) return true;
    if (Reflect.ownKeys(proto).length > 0) return false;
  }
  return true;
}

/** What an object of an unknown class is, and what to do about it. */
function describeUnknown(value: object): string {
  const className = (value.constructor as { name?: string } | undefined)?.name || "anonymous";
  const { rows, command } = value as { rows?: unknown; command?: unknown };
  if (Array.isArray(rows) && typeof command === "string") {
    return `a query result (an instance of class ${className}); return its \`rows\`, or the values you need from them, instead`;
  }
  if (value instanceof Error) {
    return `an instance of class ${className}, an error class of your own (register it with the \`types\` option, or return a plain object)`;
  }
  return `an instance of class ${className} (register it with the \`types\` option)`;
}
