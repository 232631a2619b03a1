/** The injection token of the app's PrismaClient (made by main.ts or demo.ts). */
export const PRISMA = Symbol("PRISMA");
