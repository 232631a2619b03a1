-- txonce_cleanup() for tables outside the search_path (the `schema` option): a fourth parameter,
-- `schema_name`, names the schema of the tables; NULL (the default) keeps unqualified names, found
-- on the calling session's search_path, as before. A pg_cron job runs with its own search_path,
-- and a procedure that commits cannot carry a SET search_path clause, hence the parameter:
--
--   SELECT cron.schedule('txonce-cleanup', '*/15 * * * *', $$CALL app.txonce_cleanup(schema_name => 'app')$$);
--
-- Written by hand (Prisma does not model procedures). The three-parameter procedure is replaced:
-- `CALL txonce_cleanup()` and `CALL txonce_cleanup(1000, ...)` keep working as they did.

-- DropProcedure
DROP PROCEDURE IF EXISTS "txonce_cleanup"(INTEGER, INTERVAL, INTERVAL);

-- CreateProcedure
CREATE OR REPLACE PROCEDURE "txonce_cleanup"(
    "batch_size" INTEGER DEFAULT 1000,
    "max_duration" INTERVAL DEFAULT INTERVAL '1 minute',
    "outbox_retention" INTERVAL DEFAULT INTERVAL '7 days',
    "schema_name" TEXT DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    started TIMESTAMPTZ := clock_timestamp();
    batch INTEGER;
    keys_deleted BIGINT := 0;
    messages_deleted BIGINT := 0;
    keys_table TEXT := CASE WHEN schema_name IS NULL THEN 'txonce_idempotency_keys'
        ELSE format('%I.txonce_idempotency_keys', schema_name) END;
    messages_table TEXT := CASE WHEN schema_name IS NULL THEN 'txonce_outbox_messages'
        ELSE format('%I.txonce_outbox_messages', schema_name) END;
BEGIN
    LOOP
        EXECUTE format($sql$
            WITH doomed AS (
                SELECT scope, key FROM %1$s
                WHERE expires_at <= now()
                ORDER BY expires_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            DELETE FROM %1$s k USING doomed
            WHERE k.scope = doomed.scope AND k.key = doomed.key AND k.expires_at <= now()$sql$, keys_table)
            USING batch_size;
        GET DIAGNOSTICS batch = ROW_COUNT;
        keys_deleted := keys_deleted + batch;
        COMMIT;
        EXIT WHEN batch < batch_size OR clock_timestamp() - started >= max_duration;
    END LOOP;
    LOOP
        EXIT WHEN clock_timestamp() - started >= max_duration;
        EXECUTE format($sql$
            WITH doomed AS (
                SELECT id FROM %1$s
                WHERE published_at <= now() - $2
                ORDER BY published_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            DELETE FROM %1$s m USING doomed WHERE m.id = doomed.id$sql$, messages_table)
            USING batch_size, outbox_retention;
        GET DIAGNOSTICS batch = ROW_COUNT;
        messages_deleted := messages_deleted + batch;
        COMMIT;
        EXIT WHEN batch < batch_size;
    END LOOP;
    RAISE NOTICE 'txonce_cleanup: deleted % expired idempotency keys and % published outbox messages in %',
        keys_deleted, messages_deleted, clock_timestamp() - started;
END;
$$;
