/**
 * The NestJS payments API on a PostgreSQL server:
 *   DATABASE_URL=postgres://... PORT=3000 npx tsx examples/nestjs-payments/main.ts
 * The database needs txonce's migration and the accounts and charges tables (prisma/app.prisma).
 */
import "reflect-metadata";
import { NestFactory } from "@nestjs/core";
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../../generated/prisma/client.js";
import { txonceAdapter } from "../../src/adapters/prisma.js";
import { PaymentsModule } from "./app.module.js";
import { ProblemFilter } from "./problem.filter.js";

const prisma = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString: process.env.DATABASE_URL })) });
const app = await NestFactory.create(PaymentsModule.forRoot(prisma));
app.useGlobalFilters(new ProblemFilter());
app.enableShutdownHooks();
await app.listen(Number(process.env.PORT ?? 3000));
console.log(`payments API on ${await app.getUrl()}`);
