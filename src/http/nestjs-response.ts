/**
 * Holds back the response Nest writes for an idempotent request, so that txonce can store exactly
 * what the client would get (after Nest's serialization, `@HttpCode`, `@Header` and exception
 * filters) before the transaction commits, and send it only after the commit.
 *
 * Nest renders a route's response after its interceptors are done, and exception filters after
 * that, so an interceptor cannot see the bytes any other way. Both Nest platforms end on Node's
 * `ServerResponse` (Fastify's `reply.raw`): its `writeHead`, `write` and `end` are replaced, for
 * this one response, by recorders, and put back before txonce writes the final response.
 */
import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import { headerRecord, type HttpReply } from "./core.js";

/** A response as Nest (or a filter) wrote it. Header names lower-case. */
export interface RenderedResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[]>>;
  readonly body: Buffer;
}

export interface HeldResponse {
  /** Resolves when the app ends the response; rejects if the connection closes first. */
  readonly rendered: Promise<RenderedResponse>;
  /** Whether the app has ended the response yet. */
  readonly isRendered: boolean;
  /** Puts the real methods back, so that what the app writes from now on goes to the client. */
  release(): void;
  /**
   * Puts the real methods back and sends `reply`, plus the headers that were on the response
   * before the route ran (set by middleware: CORS, request ids) unless `reply` sets them.
   */
  send(reply: HttpReply): void;
}

/** Header names that the connection, not the response, owns: not sent again with a reply. */
const CONNECTION_HEADERS = new Set(["content-length", "transfer-encoding", "connection", "keep-alive", "date"]);

/** The headers of a `writeHead()` call: an object, or a flat array of names and values. */
function writeHeadHeaders(headers: OutgoingHttpHeaders | readonly unknown[] | undefined): Record<string, string | string[]> {
  if (!Array.isArray(headers)) return headerRecord((headers ?? {}) as Record<string, unknown>);
  const result: Record<string, string | string[]> = {};
  for (let i = 0; i + 1 < headers.length; i += 2) result[String(headers[i]).toLowerCase()] = String(headers[i + 1]);
  return result;
}

function toBuffer(chunk: unknown, encoding: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), typeof encoding === "string" ? (encoding as BufferEncoding) : "utf8");
}

/**
 * Starts holding `res`. `before` are the headers on the response when the route started; they
 * are sent with every reply (they were set for this request, replay or not).
 */
export function holdResponse(res: ServerResponse, before: Readonly<Record<string, string | string[]>>): HeldResponse {
  const original = { writeHead: res.writeHead, write: res.write, end: res.end };
  let status: number | undefined;
  let headArgument: Record<string, string | string[]> = {};
  const chunks: Buffer[] = [];
  let rendered = false;
  let held = true;
  let resolve!: (response: RenderedResponse) => void;
  let reject!: (error: Error) => void;
  const renderedPromise = new Promise<RenderedResponse>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A caller that never awaits it (a replay) must not make an unhandled rejection of it.
  renderedPromise.catch(() => {});

  const onClose = () => {
    if (!rendered) reject(new Error("the connection closed before the response was written"));
  };
  res.once("close", onClose);

  res.writeHead = function writeHead(this: ServerResponse, statusCode: number, ...rest: unknown[]) {
    status = statusCode;
    const headers = rest.find((arg) => typeof arg === "object" && arg !== null) as OutgoingHttpHeaders | unknown[] | undefined;
    headArgument = { ...headArgument, ...writeHeadHeaders(headers) };
    return this;
  } as ServerResponse["writeHead"];
  res.write = function write(this: ServerResponse, chunk: unknown, encoding?: unknown, callback?: unknown) {
    if (chunk !== undefined && chunk !== null) chunks.push(toBuffer(chunk, encoding));
    const done = [encoding, callback].find((arg) => typeof arg === "function") as (() => void) | undefined;
    if (done) process.nextTick(done);
    return true;
  } as ServerResponse["write"];
  res.end = function end(this: ServerResponse, chunk?: unknown, encoding?: unknown, callback?: unknown) {
    if (chunk !== undefined && chunk !== null && typeof chunk !== "function") chunks.push(toBuffer(chunk, encoding));
    const done = [chunk, encoding, callback].find((arg) => typeof arg === "function") as (() => void) | undefined;
    if (!rendered) {
      rendered = true;
      resolve({
        status: status ?? this.statusCode,
        headers: { ...headerRecord(this.getHeaders()), ...headArgument },
        body: Buffer.concat(chunks),
      });
    }
    if (done) process.nextTick(done);
    return this;
  } as ServerResponse["end"];

  const release = () => {
    if (!held) return;
    held = false;
    res.off("close", onClose);
    res.writeHead = original.writeHead;
    res.write = original.write;
    res.end = original.end;
  };

  return {
    rendered: renderedPromise,
    get isRendered() {
      return rendered;
    },
    release,
    send(reply) {
      release();
      if (res.headersSent || res.writableEnded) return;
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      const headers: Record<string, string | readonly string[]> = {};
      for (const [name, value] of Object.entries(before)) if (!CONNECTION_HEADERS.has(name)) headers[name] = value;
      Object.assign(headers, reply.headers, { "content-length": String(reply.body.length) });
      for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
      res.statusCode = reply.status;
      res.end(reply.body);
    },
  };
}
