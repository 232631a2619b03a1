import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { join } from "node:path";
import { PrismaClient } from "./generated/prisma/client.js";
import { migrationSqlFor } from "./scripts/prisma6/migration-sql.js";
import { txonce } from "./src/adapters/prisma.js";
import { schemaSql } from "./src/sql/schema.js";
const server = "postgres://postgres@127.0.0.1:5432/postgres";
const name = "txonce_i8_quick";
const admin = new pg.Client({ connectionString: server }); await admin.connect();
await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`); await admin.query(`CREATE DATABASE ${name}`);
const url = server.replace(/\/postgres$/, "/" + name);
const s = new pg.Client({ connectionString: url }); await s.connect();
await s.query(schemaSql); await s.query(await migrationSqlFor([join(process.cwd(), "prisma/app.prisma")], server));
await s.query("INSERT INTO accounts (id, balance) VALUES ('b', 0)"); await s.end();
const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 20 }) });
const t = txonce(prisma); const cold = txonce(prisma, { replayCache: false });
let n = 0; const done: string[] = [];
const ins = (tx: any) => tx.charge.create({ data: { accountId: "b", amount: 1 } });
const cases: [string, () => Promise<unknown>][] = [
  ["bare", () => prisma.$transaction((tx) => ins(tx))],
  ["first", async () => { const k = `k${++n}`; await t.withIdempotency(k, ins); done.push(k); }],
  ["replay-hot", () => t.withIdempotency(done[done.length - 1 - (n++ % Math.min(500, done.length))]!, ins)],
  ["replay-cold", () => cold.withIdempotency(done[(n++) % done.length]!, ins)],
];
async function loop(c: number, secs: number, op: () => Promise<unknown>) {
  let calls = 0; const end = performance.now() + secs * 1000; const cpu = process.cpuUsage();
  await Promise.all(Array.from({ length: c }, async () => { while (performance.now() < end) { await op(); calls++; } }));
  const u = process.cpuUsage(cpu); return { rate: calls / secs, cpu: (u.user + u.system) / calls };
}
for (const [, op] of cases) await loop(8, 0.5, op);
for (const c of [1, 8]) for (let r = 0; r < 3; r++) {
  const res: Record<string, { rate: number; cpu: number }> = {};
  for (const [nm, op] of cases) res[nm] = await loop(c, 1.5, op);
  console.log(`c=${c}`, Object.entries(res).map(([k, v]) => `${k} ${v.rate.toFixed(0)}/s ${(v.rate / res.bare!.rate).toFixed(2)}x cpu ${v.cpu.toFixed(0)}us`).join(" | "));
}
await prisma.$disconnect(); await admin.query(`DROP DATABASE ${name} WITH (FORCE)`); await admin.end();
