/** Small helpers shared by the benchmark sections (bench/cleanup.ts, bench/outbox.ts). */
import { readFileSync } from "node:fs";
import os from "node:os";
import type pg from "pg";
import type { PrismaClient } from "../generated/prisma/client.js";
import type { Relay, RelayOptions } from "../src/outbox/relay.js";

/** What every section gets from bench/main.ts: one fresh database, one Prisma client, one pg pool. */
export interface BenchContext {
  url: string;
  prisma: PrismaClient;
  pool: pg.Pool;
}

export const log = (line = "") => process.stdout.write(`${line}\n`);
export const loadavg = () => os.loadavg().map((l) => l.toFixed(2)).join(" / ");
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export const env = (name: string, fallback: number) => {
  const raw = process.env[name];
  const value = raw === undefined || raw === "" ? fallback : Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number, got ${raw}`);
  return value;
};

export const percentile = (sorted: number[], p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
export const median = (values: number[]) => {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
export const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
/**
 * A distribution-free 95% confidence interval of the median of `values` (order statistics: the
 * ranks n/2 ± 1.96·√n/2); with 7 values or fewer, their whole range.
 */
export const medianInterval = (values: number[]): [number, number] => {
  const s = sorted(values);
  const k = Math.max(0, Math.floor(s.length / 2 - (1.96 * Math.sqrt(s.length)) / 2));
  return [s[k]!, s[s.length - 1 - k]!];
};
/** The median of ratios and its 95% interval: "0.944x [0.909-0.963]". */
export const ratioCell = (ratios: number[]) => {
  const [lo, hi] = medianInterval(ratios);
  return `${fmt(median(ratios), 3)}x [${fmt(lo, 3)}-${fmt(hi, 3)}]`;
};

/** A bench mode as part of a file name ("SDK, txonce off" -> "SDK_txonce_off"): the profiles' and the trees' names. */
export const fileNameOf = (mode: string) => mode.replace(/[^a-zA-Z]+/g, "_");

export const pad = (s: string, n: number) => s.padEnd(n);
export const lpad = (s: string, n: number) => s.padStart(n);
export const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : "-");
/** 12345.6 -> "12,346" */
export const num = (n: number) => (!Number.isFinite(n) ? "-" : Math.abs(n) < 10 && n !== Math.round(n) ? n.toFixed(1) : Math.round(n).toLocaleString("en-US"));

/** Busy fraction of the whole machine between two reads of /proc/stat (Linux only). */
export function hostCpu(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}
/** Host busy share since `from` (a hostCpu() reading). */
export function hostBusySince(from: ReturnType<typeof hostCpu>): number | undefined {
  const to = hostCpu();
  return from && to ? (to.busy - from.busy) / Math.max(1, to.total - from.total) : undefined;
}
export const pct = (share: number | undefined) => (share === undefined ? "-" : `${Math.round(share * 100)}%`);

/** Prints rows as an aligned table: the first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: string[][], indent = "  ") {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => indent + r.map((c, i) => (i === 0 ? pad(c, widths[i]!) : lpad(c, widths[i]!))).join("  ");
  log(line(header));
  for (const r of rows) log(line(r));
}

/**
 * A relay of `outbox` (not started, no logger) to `publisher`, and a promise that resolves once
 * it has published `count` messages: a drain to time.
 */
export function relayFor(outbox: { relay(options: RelayOptions): Relay }, publisher: RelayOptions["publisher"], count: number) {
  let done = 0;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const relay = outbox.relay({
    publisher,
    logger: false,
    onPublished: (messages) => {
      done += messages.length;
      if (done >= count) finish();
    },
  });
  return { relay, finished };
}
