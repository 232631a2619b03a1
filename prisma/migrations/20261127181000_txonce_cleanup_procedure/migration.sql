-- txonce's cleanup job as a procedure, for pg_cron (Prisma does not model procedures; this
-- migration was written by hand, as Prisma's docs describe for custom SQL):
--
--   SELECT cron.schedule('txonce-cleanup', '*/15 * * * *', $$CALL txonce_cleanup()$$);
--
-- It does what `txonce cleanup` does: deletes expired idempotency keys, then outbox messages
-- published more than `outbox_retention` ago, in batches of `batch_size` rows, committing after
-- each batch and skipping rows that live traffic has locked, until none are left or
-- `max_duration` has passed. Call it outside an explicit transaction block.

-- CreateProcedure
CREATE OR REPLACE PROCEDURE "txonce_cleanup"(
    "batch_size" INTEGER DEFAULT 1000,
    "max_duration" INTERVAL DEFAULT INTERVAL '1 minute',
    "outbox_retention" INTERVAL DEFAULT INTERVAL '7 days'
)
LANGUAGE plpgsql
AS $$
DECLARE
    started TIMESTAMPTZ := clock_timestamp();
    batch INTEGER;
    keys_deleted BIGINT := 0;
    messages_deleted BIGINT := 0;
BEGIN
    LOOP
        WITH doomed AS (
            SELECT scope, key FROM txonce_idempotency_keys
            WHERE expires_at <= now()
            ORDER BY expires_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM txonce_idempotency_keys k USING doomed
        WHERE k.scope = doomed.scope AND k.key = doomed.key AND k.expires_at <= now();
        GET DIAGNOSTICS batch = ROW_COUNT;
        keys_deleted := keys_deleted + batch;
        COMMIT;
        EXIT WHEN batch < batch_size OR clock_timestamp() - started >= max_duration;
    END LOOP;
    LOOP
        EXIT WHEN clock_timestamp() - started >= max_duration;
        WITH doomed AS (
            SELECT id FROM txonce_outbox_messages
            WHERE published_at <= now() - outbox_retention
            ORDER BY published_at
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED
        )
        DELETE FROM txonce_outbox_messages m USING doomed WHERE m.id = doomed.id;
        GET DIAGNOSTICS batch = ROW_COUNT;
        messages_deleted := messages_deleted + batch;
        COMMIT;
        EXIT WHEN batch < batch_size;
    END LOOP;
    RAISE NOTICE 'txonce_cleanup: deleted % expired idempotency keys and % published outbox messages in %',
        keys_deleted, messages_deleted, clock_timestamp() - started;
END;
$$;
