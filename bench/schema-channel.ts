/**
 * How many times a relay of one schema's outbox is woken by the commits of another schema's
 * outbox in the same database (NOTIFY is per database): a relay on the tables in `public` with
 * LISTEN and a long poll interval, while a producer commits N transactions that each enqueue one
 * message into the tables of schema `app`, once with the `schema` option (app's own channel,
 * `txonce_outbox:app`) and once without it, finding app's tables through its search_path (the
 * only way before the option; the channel is then the shared `txonce_outbox`). Counts the claims
 * the public relay runs (its pool's checkouts) and the notifications a plain LISTEN on the shared
 * channel hears. Run: `npx tsx bench/schema-channel.ts` with DATABASE_URL set (the role needs
 * CREATEDB). Prints the load average with the figures.
 */
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import pg from "pg";
import { txonce } from "../src/adapters/pg.js";
import { schemaSql } from "../src/sql/schema.js";

const N = Number(process.env.N ?? 500);
const server = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const name = `txonce_bench_channel_${randomBytes(4).toString("hex")}`;
const urlOf = (database: string, options?: string) => {
  const url = new URL(server);
  url.pathname = `/${database}`;
  if (options) url.searchParams.set("options", options);
  return url.toString();
};
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const admin = new pg.Client({ connectionString: server });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
try {
  const setup = new pg.Client({ connectionString: urlOf(name) });
  await setup.connect();
  await setup.query(schemaSql);
  await setup.query("CREATE SCHEMA app; SET search_path TO app");
  await setup.query(schemaSql);
  await setup.end();

  const relayPool = new pg.Pool({ connectionString: urlOf(name), max: 2 });
  let claims = 0;
  relayPool.on("acquire", () => claims++);
  const relay = txonce(relayPool).outbox.relay({
    publisher: async () => {},
    pollInterval: "10m",
    listen: { connectionString: urlOf(name) },
    logger: false,
  });
  const heard = new pg.Client({ connectionString: urlOf(name) });
  let shared = 0;
  heard.on("notification", () => shared++);
  await heard.connect();
  await heard.query("LISTEN txonce_outbox");
  await relay.start();
  await sleep(200);

  const produce = async (label: string, pool: pg.Pool, schema: string | undefined) => {
    const t = txonce(pool, { schema });
    const [claimsBefore, sharedBefore] = [claims, shared];
    const started = performance.now();
    for (let i = 0; i < N; i++) {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        await t.outbox.enqueue(client, { topic: "bench", payload: i });
        await client.query("COMMIT");
      } finally {
        client.release();
      }
    }
    const ms = performance.now() - started;
    await sleep(300);
    console.log(
      `${label}: ${N} commits in ${ms.toFixed(0)} ms; public relay claims ${claims - claimsBefore}, ` +
        `notifications on txonce_outbox ${shared - sharedBefore}`,
    );
  };
  console.log(`load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  const viaSearchPath = new pg.Pool({ connectionString: urlOf(name, "-c search_path=app"), max: 2 });
  const viaOption = new pg.Pool({ connectionString: urlOf(name), max: 2 });
  for (let round = 1; round <= 2; round++) {
    await produce(`round ${round}, app through the search_path (shared channel)`, viaSearchPath, undefined);
    await produce(`round ${round}, app with { schema: "app" } (its own channel)`, viaOption, "app");
  }
  console.log(`load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}`);
  await relay.stop();
  await heard.end();
  await Promise.all([relayPool.end(), viaSearchPath.end(), viaOption.end()]);
} finally {
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
