/**
 * Relay drain, before and after in one run (issue 13's throughput): the relay of this checkout
 * and the relay of another source tree (RELAY_BEFORE_SRC, e.g. `git archive 498b9d7 src` unpacked
 * next to a node_modules link) drain the same backlogs, interleaved, over txonce/pg with a no-op
 * publisher, timed until onPublished has seen every message. Each case: the outbox table
 * truncated, DRAIN_MESSAGES (20,000) rows inserted with generate_series on DRAIN_KEYS keys
 * ("1000,200,0": 0 = unkeyed), VACUUM ANALYZE, CHECKPOINT, then one relay (DRAIN_BATCH x
 * DRAIN_WORKERS, default 100 x 1 and 500 x 2). DRAIN_ROUNDS (3) rounds; the median per case.
 * Statements per message: the executor counts the relay's queries. RELAY_OTHER_SRC="label=/path/src"
 * adds more source trees; DRAIN_VARIANTS='label={"claimLimit":100}' this tree's relay with other
 * options, in the same rounds; DRAIN_RELAYS relays side by side; DRAIN_PUBLISH_MS a publisher
 * that acknowledges that long after the hand-off; DRAIN_TIMES=1 statement wall times by kind.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres RELAY_BEFORE_SRC=/tmp/before/src \
 *     npx tsx bench/relay-drain.ts
 */
import { randomBytes } from "node:crypto";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { schemaSql } from "../src/sql/schema.js";
import { env, fmt, loadavg, log, median, num, table } from "./common.js";

const TABLE = "txonce_outbox_messages";
const MESSAGES = Math.round(env("DRAIN_MESSAGES", 20_000));
const KEYS = (process.env.DRAIN_KEYS ?? "1000,200,0").split(",").map(Number);
const SETTINGS = (process.env.DRAIN_SETTINGS ?? "100x1,500x2").split(",").map((s) => s.split("x").map(Number) as [number, number]);
const ROUNDS = Math.round(env("DRAIN_ROUNDS", 3));
const PUBLISH_MS = env("DRAIN_PUBLISH_MS", 0);
/** Relays side by side in this process (each its own createRelay, as separate processes would be). */
const RELAYS = Math.round(env("DRAIN_RELAYS", 1));
const before = process.env.RELAY_BEFORE_SRC;
/** Statement wall times by kind, over the whole run, when DRAIN_TIMES=1. */
const statementTimes = new Map<string, { n: number; ms: number }>();
const STATEMENT_KINDS: [string, RegExp][] = [["claim", /WITH RECURSIVE walk/], ["claim unkeyed", /^\s*WITH due AS/], ["progress", /json_to_recordset/], ["mark/release (before)", /UPDATE txonce_outbox_messages/]];

type TxonceOverPg = (pool: pg.Pool) => { outbox: { relay(o: Record<string, unknown>): { start(): Promise<void>; stop(): Promise<void> } } };

async function main() {
  const base = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  const name = `txonce_drain_${randomBytes(4).toString("hex")}`;
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 12 });
  pool.on("error", () => {});
  try {
    await pool.query(schemaSql);
    const relays: [string, TxonceOverPg][] = [["after", (await import("../src/adapters/pg.js")).txonce as unknown as TxonceOverPg]];
    if (before) relays.unshift(["before", (await import(pathToFileURL(`${before}/adapters/pg.ts`).href)).txonce as TxonceOverPg]);
    if (process.env.DRAIN_PREPARED === "1") {
      const { txonce } = await import("../src/adapters/pg.js");
      relays.push(["after, preparedStatements", ((pool: pg.Pool) => txonce(pool, { preparedStatements: true })) as unknown as TxonceOverPg]);
    }
    // DRAIN_VARIANTS='label={"claimLimit":100};label2={...}': this tree's relay again with those options.
    for (const variant of (process.env.DRAIN_VARIANTS ?? "").split(";").filter(Boolean)) {
      const at = variant.indexOf("=");
      const extra = JSON.parse(variant.slice(at + 1)) as Record<string, unknown>;
      const { txonce } = await import("../src/adapters/pg.js");
      relays.push([`after, ${variant.slice(0, at)}`, ((pool: pg.Pool) => {
        const t = txonce(pool);
        return { outbox: { relay: (o: Record<string, unknown>) => t.outbox.relay({ ...o, ...extra } as unknown as Parameters<typeof t.outbox.relay>[0]) } };
      }) as unknown as TxonceOverPg]);
    }
    // RELAY_OTHER_SRC="label=/path/src,...": more source trees, drained in the same rounds.
    for (const other of (process.env.RELAY_OTHER_SRC ?? "").split(",").filter(Boolean)) {
      const [label, path] = other.split("=") as [string, string];
      relays.push([label, (await import(pathToFileURL(`${path}/adapters/pg.ts`).href)).txonce as TxonceOverPg]);
    }
    log(`relay drain: ${num(MESSAGES)} messages, keys ${KEYS.join("/")}, settings ${SETTINGS.map((s) => s.join("x")).join("/")}, ${RELAYS} relay(s), ${ROUNDS} rounds, publish ${PUBLISH_MS} ms`);
    log(`load: ${loadavg()}`);
    const results = new Map<string, { rate: number; statements: number; cpu: number }[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const keys of KEYS) {
        for (const [batchSize, workers] of SETTINGS) {
          const order = round % 2 === 0 ? relays : [...relays].reverse();
          for (const [label, txonce] of order) {
            const r = await drain(pool, txonce, keys, batchSize, workers);
            const id = `${keys}|${batchSize}x${workers}|${label}`;
            results.set(id, [...(results.get(id) ?? []), r]);
          }
        }
      }
      log(`  round ${round + 1} done, load ${loadavg()}`);
    }
    const rows: string[][] = [];
    for (const keys of KEYS) {
      for (const [batchSize, workers] of SETTINGS) {
        const of = (label: string) => results.get(`${keys}|${batchSize}x${workers}|${label}`);
        const after = of("after")!;
        const b = of("before");
        const m = (rs: { rate: number }[]) => median(rs.map((r) => r.rate));
        rows.push([
          keys === 0 ? "unkeyed" : `${keys} keys`, `${batchSize} x ${workers}`,
          b ? `${num(m(b))} (${b.map((r) => num(r.rate)).join(", ")})` : "-",
          `${num(m(after))} (${after.map((r) => num(r.rate)).join(", ")})`,
          b ? `${fmt(m(after) / m(b), 2)}x` : "-",
          b ? fmt(median(b.map((r) => r.statements)), 3) : "-", fmt(median(after.map((r) => r.statements)), 3),
          b ? fmt(median(b.map((r) => r.cpu)), 1) : "-", fmt(median(after.map((r) => r.cpu)), 1),
        ]);
      }
    }
    table(["backlog", "batch x workers", "before msg/s (rounds)", "after msg/s (rounds)", "after/before", "stmts/msg before", "after", "CPU µs/msg before", "after"], rows);
    for (const [label] of relays.filter(([l]) => l !== "before" && l !== "after")) {
      table(["backlog", "batch x workers", `${label} msg/s (rounds)`, "stmts/msg", "CPU µs/msg"], KEYS.flatMap((keys) => SETTINGS.map(([batchSize, workers]) => {
        const rs = results.get(`${keys}|${batchSize}x${workers}|${label}`)!;
        return [keys === 0 ? "unkeyed" : `${keys} keys`, `${batchSize} x ${workers}`, `${num(median(rs.map((r) => r.rate)))} (${rs.map((r) => num(r.rate)).join(", ")})`, fmt(median(rs.map((r) => r.statements)), 3), fmt(median(rs.map((r) => r.cpu)), 1)];
      })));
    }
    log(`load: ${loadavg()}`);
    if (process.env.DRAIN_TIMES === "1") {
      table(["statement", "count", "mean ms"], [...statementTimes].map(([k, v]) => [k, num(v.n), fmt(v.ms / v.n, 2)]));
    }
  } finally {
    await pool.end();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

async function drain(pool: pg.Pool, txonce: TxonceOverPg, keys: number, batchSize: number, workers: number) {
  await pool.query(`TRUNCATE ${TABLE}`);
  await pool.query(
    `INSERT INTO ${TABLE} (id, topic, key, payload)
     SELECT gen_random_uuid(), 'bench', CASE WHEN $2::integer = 0 THEN NULL ELSE 'key-' || (i % $2::integer) END, '{"json":"' || repeat('x', 120) || '"}'
     FROM generate_series(1, $1::integer) AS i`,
    [MESSAGES, keys],
  );
  await pool.query(`VACUUM ANALYZE ${TABLE}`);
  await pool.query("CHECKPOINT");
  // Count the relay's statements: a pool whose query() counts.
  let statements = 0;
  const timed = (q: unknown, run: () => unknown) => {
    const text = typeof q === "string" ? q : String((q as { text?: string }).text);
    const kind = STATEMENT_KINDS.find(([, re]) => re.test(text))?.[0] ?? text.slice(0, 30).replace(/\s+/g, " ");
    const t0 = performance.now();
    const result = run() as Promise<unknown>;
    void Promise.resolve(result).finally(() => {
      const s = (statementTimes.get(kind) ?? { n: 0, ms: 0 });
      s.n++;
      s.ms += performance.now() - t0;
      statementTimes.set(kind, s);
    }).catch(() => {});
    return result;
  };
  const counted = new Proxy(pool, {
    get(target, prop, receiver) {
      if (prop === "query") return (...args: unknown[]) => { statements++; return timed(args[0], () => (target.query as (...a: unknown[]) => unknown)(...args)); };
      if (prop === "connect") {
        return async () => {
          const client = await target.connect();
          return new Proxy(client, {
            get(c, p) {
              if (p === "query") return (...args: unknown[]) => { statements++; return timed(args[0], () => (c.query as (...a: unknown[]) => unknown).apply(c, args)); };
              const v = Reflect.get(c, p);
              return typeof v === "function" ? v.bind(c) : v;
            },
          });
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  let done = 0;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const relays = Array.from({ length: RELAYS }, () => txonce(counted).outbox.relay({
    batchSize, workers, pollInterval: 50, logger: false,
    publisher: PUBLISH_MS > 0 ? () => new Promise((resolve) => setTimeout(resolve, PUBLISH_MS)) : async () => {},
    onPublished: (messages: unknown[]) => {
      done += messages.length;
      if (done >= MESSAGES) finish();
    },
    onError: (error: unknown) => log(`  relay error: ${String(error).split("\n")[0]}`),
  }));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(relays.map((relay) => relay.start()));
  await Promise.race([finished, new Promise((resolve) => setTimeout(resolve, 120_000).unref())]);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const n = statements;
  await Promise.all(relays.map((relay) => relay.stop()));
  return { rate: done / seconds, statements: n / Math.max(1, done), cpu: (cpu.user + cpu.system) / Math.max(1, done) };
}

await main();
