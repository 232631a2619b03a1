import type pg from "pg";

/**
 * Inserts `count` idempotency records in one statement: expired ones (expires_at in the past) or
 * live ones, under the given scope, with keys `${prefix}-1` ... `${prefix}-${count}`.
 */
export async function seedKeys(pool: pg.Pool, { count, expired, scope = "seed", prefix = "k" }: {
  count: number;
  expired: boolean;
  scope?: string;
  prefix?: string;
}): Promise<void> {
  await pool.query(
    `INSERT INTO txonce_idempotency_keys (scope, key, result, created_at, expires_at)
     SELECT $1, $2 || '-' || i, '{"json":null}', now() - interval '3 days',
            CASE WHEN $4 THEN now() - interval '1 day' - i * interval '1 millisecond' ELSE now() + interval '1 day' END
     FROM generate_series(1, $3::integer) AS i`,
    [scope, prefix, count, expired],
  );
}

export async function countKeys(pool: pg.Pool, where = "true"): Promise<number> {
  const { rows } = await pool.query(`SELECT count(*)::integer AS n FROM txonce_idempotency_keys WHERE ${where}`);
  return rows[0].n;
}
