-- DropIndex
DROP INDEX "txonce_outbox_messages_key_published_at_dead_at_seq_idx";

-- DropIndex
DROP INDEX "txonce_outbox_messages_published_at_dead_at_seq_idx";

-- CreateIndex
CREATE INDEX "txonce_outbox_messages_state_key_seq_idx" ON "txonce_outbox_messages"("published_at", "dead_at", "key", "seq");

-- CreateIndex
CREATE INDEX "txonce_outbox_messages_state_key_available_at_idx" ON "txonce_outbox_messages"("published_at", "dead_at", "key", "available_at");

