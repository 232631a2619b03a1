-- CreateTable
CREATE TABLE "txonce_cleanup_runs" (
    "id" BIGSERIAL NOT NULL,
    "started_at" TIMESTAMPTZ(3) NOT NULL,
    "finished_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "deleted" BIGINT NOT NULL,
    "finished" BOOLEAN NOT NULL,
    "runner" TEXT NOT NULL,

    CONSTRAINT "txonce_cleanup_runs_pkey" PRIMARY KEY ("id")
);

-- The pg_cron procedure of migration 20261127181000, now also recording each run in
-- txonce_cleanup_runs (as txonce's cleanup job in Node does), keeping the latest 100 runs
-- (written by hand: Prisma does not model procedures).

-- ReplaceProcedure
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
    keys_done BOOLEAN := false;
    messages_done BOOLEAN := false;
    run_id BIGINT;
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
        keys_done := batch < batch_size;
        EXIT WHEN keys_done OR clock_timestamp() - started >= max_duration;
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
        messages_done := batch < batch_size;
        EXIT WHEN messages_done;
    END LOOP;
    INSERT INTO txonce_cleanup_runs (started_at, deleted, finished, runner)
    VALUES (started, keys_deleted + messages_deleted, keys_done AND messages_done, 'procedure')
    RETURNING id INTO run_id;
    DELETE FROM txonce_cleanup_runs WHERE id <= run_id - 100;
    COMMIT;
    RAISE NOTICE 'txonce_cleanup: deleted % expired idempotency keys and % published outbox messages in %',
        keys_deleted, messages_deleted, clock_timestamp() - started;
END;
$$;
