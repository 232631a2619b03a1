import { randomUUID } from 'node:crypto'
import { defineConfig } from 'prisma6/config'
import { PrismaPg } from '@prisma/adapter-pg6'

// Pass discrete fields, NOT { connectionString }: pg lets a connectionString override
// `database`, so a shadow pool built as { ...config, database } would hit the real DB.
function pgConfigFromUrl(raw: string) {
  const u = new URL(raw)
  return {
    host: u.hostname,
    port: Number(u.port || 5432),
    user: decodeURIComponent(u.username),
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    // Let the CLI exit as soon as it is done (pg's default keeps idle connections for 10 s).
    idleTimeoutMillis: 50,
  }
}

// Workaround 1 (prisma/prisma#27403): adapter-pg rejects catalog type `name` (OID 19)
// returned by the schema engine's introspection queries -> report it as text (OID 25).
const TEXTLIKE_OIDS = new Set([18 /* "char" */, 19 /* name */])
function patchAdapter<T>(adapter: T): T {
  const client = (adapter as any).client
  const origQuery = client.query.bind(client)
  client.query = async (...args: any[]) => {
    const res = await origQuery(...args)
    for (const r of Array.isArray(res) ? res : [res])
      for (const f of r?.fields ?? []) if (TEXTLIKE_OIDS.has(f.dataTypeID)) f.dataTypeID = 25
    return res
  }
  // Workaround 3: stock executeScript() splits migration SQL on every ';' (breaks $$ bodies,
  // string literals). Send the whole script as one simple-protocol query instead, like the
  // native engine does.
  ;(adapter as any).executeScript = async (script: string) => {
    try { await origQuery(script) } catch (e) { (adapter as any).onError(e) }
  }
  return adapter
}

class PatchedPrismaPg extends PrismaPg {
  constructor(private cfg: ReturnType<typeof pgConfigFromUrl>) { super(cfg) }
  override async connect() { return patchAdapter(await super.connect()) }
  // Workaround 2: stock connectToShadowDb() drops the shadow DB *before* closing its pool
  // ("database ... is being accessed by other users"). Close first, then drop.
  override async connectToShadowDb() {
    const admin = await super.connect()
    const database = `prisma_migrate_shadow_db_${randomUUID()}`
    await admin.executeScript(`CREATE DATABASE "${database}"`)
    const shadow = patchAdapter(await new PrismaPg({ ...this.cfg, database }).connect())
    const dispose = shadow.dispose.bind(shadow)
    shadow.dispose = async () => {
      await dispose()
      await admin.executeScript(`DROP DATABASE IF EXISTS "${database}"`)
      await admin.dispose()
    }
    return shadow
  }
}

export default defineConfig({
  experimental: { adapter: true },
  engine: 'js',
  schema: process.env.TXONCE_PRISMA6_SCHEMA!,
  async adapter() {
    return new PatchedPrismaPg(pgConfigFromUrl(process.env.DATABASE_URL!))
  },
})
