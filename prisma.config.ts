// Prisma 7 CLI configuration for this repository (`prisma generate`). The schema is the whole
// prisma/ folder: txonce.prisma (shipped) plus schema.prisma (the repository's own models).
import { defineConfig } from "prisma/config";

export default defineConfig({
  schema: "prisma",
});
