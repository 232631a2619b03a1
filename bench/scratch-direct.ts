import { randomBytes } from "node:crypto";
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client.js";
import { txonce, txonceAdapter } from "../src/adapters/prisma.js";
import { loadavg } from "./common.js";
const url = process.env.DATABASE_URL!;
const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: 10 }) });
const prismaW = new PrismaClient({ adapter: txonceAdapter(new PrismaPg({ connectionString: url, max: 10 })) });
await prisma.account.upsert({ where: { id: "p8" }, create: { id: "p8", balance: 0 }, update: {} });
const t = txonce(prisma), tw = txonce(prismaW);
const tc = txonce(prisma, { replayCache: false }), twc = txonce(prismaW, { replayCache: false });
const done: string[] = [];
for (let i = 0; i < 3000; i++) { const k = randomBytes(8).toString("hex"); await tw.withIdempotency(k, (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })); done.push(k); }
let ri = 0;
const cases: Record<string, () => Promise<unknown>> = {
  bare: () => prisma.$transaction((tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
  "first txonceAdapter ": () => tw.withIdempotency(randomBytes(8).toString("hex"), (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
  first: () => t.withIdempotency(randomBytes(8).toString("hex"), (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
  "first txonceAdapter": () => tw.withIdempotency(randomBytes(8).toString("hex"), (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
  "first txonceAdapter simple": async () => { process.env.TXONCE_SIMPLE = "1"; try { return await tw.withIdempotency(randomBytes(8).toString("hex"), (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })); } finally { delete process.env.TXONCE_SIMPLE; } },
  "cold replay": () => tc.withIdempotency(done[ri++ % done.length]!, (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
  "cold replay txonceAdapter": () => twc.withIdempotency(done[ri++ % done.length]!, (tx) => tx.charge.create({ data: { accountId: "p8", amount: 1 } })),
};
async function loop(c: number, secs: number, op: () => Promise<unknown>) {
  let n = 0; const end = performance.now() + secs * 1000; const cpu0 = process.cpuUsage();
  await Promise.all(Array.from({ length: c }, async () => { while (performance.now() < end) { await op(); n++; } }));
  const cpu = process.cpuUsage(cpu0); return { rate: n / secs, cpuUs: (cpu.user + cpu.system) / n };
}
console.log("load", loadavg());
for (const c of [1, 8]) {
  const res: Record<string, { r: number[]; cpu: number[] }> = {};
  for (const k of Object.keys(cases)) { res[k] = { r: [], cpu: [] }; await loop(c, 0.3, cases[k]); }
  for (let round = 0; round < 5; round++) for (const k of Object.keys(cases)) { const x = await loop(c, 1.5, cases[k]); res[k].r.push(x.rate); res[k].cpu.push(x.cpuUs); }
  const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  const bareR = res.bare.r;
  for (const k of Object.keys(cases)) console.log(`c=${c} ${k.padEnd(28)} ${med(res[k].r).toFixed(0)}/s ratio ${med(res[k].r.map((v, i) => v / bareR[i])).toFixed(2)} cpu ${med(res[k].cpu).toFixed(0)}us`);
}
console.log("load", loadavg());
await prisma.$disconnect(); await prismaW.$disconnect();
