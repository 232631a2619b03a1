/**
 * Statements with their parameters written in, for the simple query protocol, which takes
 * several statements in one query: what an adapter sends when it puts a statement in the same
 * round trip as COMMIT (`SqlExecutor.sendWithCommit`).
 */

/**
 * `sql` with its parameters written in as literals, for the simple query protocol: `$n` is
 * replaced where a cast follows it (`$2::text`), which is how every txonce statement writes its
 * parameters. Strings become escape-string literals (`E'...'`, backslashes and quotes doubled),
 * so their text arrives as it is whatever `standard_conforming_strings` says.
 */
export function withLiterals(sql: string, params: readonly unknown[]): string {
  return sql.replace(/\$(\d+)(?=::)/g, (_, n: string) => {
    const index = Number(n) - 1;
    if (index < 0 || index >= params.length) throw new RangeError(`no parameter $${n} for this statement`);
    return literal(params[index]);
  });
}

function literal(value: unknown): string {
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new RangeError(`cannot write ${value} as a literal`);
    return String(value);
  }
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "boolean") return value ? "TRUE" : "FALSE";
  const text = value instanceof Date ? value.toISOString() : String(value);
  return `E'${text.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}
