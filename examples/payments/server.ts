/**
 * The payments API on a PostgreSQL server:
 *   DATABASE_URL=postgres://... PORT=3000 npx tsx examples/payments/server.ts
 * The database needs txonce's migration and the accounts and charges tables (prisma/app.prisma).
 */
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../../generated/prisma/client.js";
import { txonceAdapter } from "../../src/adapters/prisma.js";
import { createPaymentsApp } from "./app.js";

const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString: process.env.DATABASE_URL })) });
const port = Number(process.env.PORT ?? 3000);
createPaymentsApp({ prisma }).listen(port, () => console.log(`payments API on http://localhost:${port}`));
