-- AlterTable
ALTER TABLE "txonce_outbox_messages" ADD COLUMN     "trace_context" JSONB;

