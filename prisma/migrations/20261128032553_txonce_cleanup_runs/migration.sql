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

-- The pg_cron procedure records its runs here too: migration 20261128033500 replaces it.
