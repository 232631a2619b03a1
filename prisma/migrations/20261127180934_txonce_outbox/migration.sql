-- CreateTable
CREATE TABLE "txonce_outbox_messages" (
    "id" UUID NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "topic" TEXT NOT NULL,
    "key" TEXT,
    "payload" TEXT NOT NULL,
    "headers" JSONB,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "available_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "lease_until" TIMESTAMPTZ(3),
    "lease_token" UUID,
    "last_error" TEXT,
    "published_at" TIMESTAMPTZ(3),
    "dead_at" TIMESTAMPTZ(3),

    CONSTRAINT "txonce_outbox_messages_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "txonce_outbox_messages_published_at_dead_at_seq_idx" ON "txonce_outbox_messages"("published_at", "dead_at", "seq");

-- CreateIndex
CREATE INDEX "txonce_outbox_messages_key_published_at_dead_at_seq_idx" ON "txonce_outbox_messages"("key", "published_at", "dead_at", "seq");

