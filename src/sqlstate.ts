import { SchemaNotInstalledError } from "./errors.js";

/** SQLSTATE codes that txonce reacts to (PostgreSQL Appendix A). */
export const SqlState = {
  uniqueViolation: "23505",
  lockNotAvailable: "55P03",
  serializationFailure: "40001",
  deadlockDetected: "40P01",
  queryCanceled: "57014",
  undefinedTable: "42P01",
  undefinedColumn: "42703",
  undefinedFunction: "42883",
} as const;

const SQLSTATE = /^[0-9A-Z]{5}$/;
/** Prisma's own codes (P1000-P6999) look like SQLSTATEs; PostgreSQL's class P0 is PL/pgSQL. */
const PRISMA_CODE = /^P[1-9]/;

/**
 * The SQLSTATE of a database error, however a driver wrapped it: node-postgres' `DatabaseError`
 * (`code`), Prisma's `PrismaClientKnownRequestError` (`meta.code`, or the driver adapter error's
 * `cause.originalCode`), PGlite's error (`code`), or any of these as a `cause`.
 */
export function sqlStateOf(error: unknown): string | undefined {
  const seen = new Set<unknown>();
  const stack: unknown[] = [error];
  while (stack.length > 0) {
    const e = stack.pop();
    if (typeof e !== "object" || e === null || seen.has(e)) continue;
    seen.add(e);
    const candidate = e as {
      code?: unknown; originalCode?: unknown; meta?: unknown; cause?: unknown; driverAdapterError?: unknown;
    };
    for (const code of [candidate.originalCode, candidate.code]) {
      if (typeof code === "string" && SQLSTATE.test(code) && !PRISMA_CODE.test(code)) return code;
    }
    stack.push(candidate.cause, candidate.meta, candidate.driverAdapterError);
  }
  return undefined;
}

/** Awaits a query of txonce's own, turning "no such table/column" into {@link SchemaNotInstalledError}. */
export async function withSchemaCheck<T>(query: Promise<T>): Promise<T> {
  try {
    return await query;
  } catch (error) {
    const state = sqlStateOf(error);
    if (state === SqlState.undefinedTable || state === SqlState.undefinedColumn) {
      throw new SchemaNotInstalledError({ cause: error });
    }
    throw error;
  }
}
