-- CreateTable
CREATE TABLE "txonce_idempotency_keys" (
    "scope" TEXT NOT NULL DEFAULT '',
    "key" TEXT NOT NULL,
    "fingerprint" TEXT,
    "result" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "expires_at" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "txonce_idempotency_keys_pkey" PRIMARY KEY ("scope","key")
);

-- CreateIndex
CREATE INDEX "txonce_idempotency_keys_expires_at_idx" ON "txonce_idempotency_keys"("expires_at");

