/**
 * Runs a library's transaction so that when `work` fails, the caller gets work's error even if
 * the library's ROLLBACK then fails too. Knex, Drizzle, Kysely and postgres.js send ROLLBACK in
 * their own `catch` and let its failure replace the error that caused it: on a connection that
 * broke under one of txonce's statements, the caller would get "ROLLBACK: Client has encountered a
 * connection error" instead of txonce's classified `ConnectionLostError`. Either way the
 * transaction did not commit. When `work` succeeded and the library's COMMIT failed, the caller
 * gets the driver's error, not the library's wrapper of it (txonce classifies the driver's).
 */
export async function keepingWorkError<T>(
  run: (work: <R>(inner: () => Promise<R>) => Promise<R>) => Promise<T>,
  /** Takes the library's wrapper off an error of its own statements (BEGIN, COMMIT, ROLLBACK). */
  unwrap: (error: unknown) => unknown = (error) => error,
): Promise<T> {
  let failed: { error: unknown } | undefined;
  try {
    return await run(async (inner) => {
      try {
        return await inner();
      } catch (error) {
        failed = { error };
        throw error;
      }
    });
  } catch (error) {
    throw failed !== undefined ? failed.error : unwrap(error);
  }
}
