import { TxonceError } from "../errors.js";

/**
 * What an idempotent route handler returned cannot be stored and replayed byte for byte: a
 * stream, a body over `maxResponseBytes`, a body that is not JSON-serializable, a header that
 * txonce sets itself or that is not a valid HTTP header. Raised inside the transaction, so the
 * handler's writes and the key roll back and nothing is stored; the framework's error handling
 * then answers 500 (`statusCode` is 500), and a retry runs the handler again.
 */
export class ResponseNotStorableError extends TxonceError {
  readonly code = "TXONCE_RESPONSE_NOT_STORABLE";
  /** The HTTP status the framework's error handler should answer with (Express and Fastify read it). */
  readonly statusCode = 500;
  constructor(
    /** Why the response was refused. */
    readonly reason: string,
  ) {
    super(`The idempotent route's response cannot be stored: ${reason}`);
  }
}
