/**
 * Wakes the relay when a producer's transaction commits: a dedicated connection that LISTENs on
 * txonce's channel. Needs a session-mode connection (not a pooler in transaction mode: use the
 * relay's poll-only mode there). Reconnects by itself; the relay keeps polling meanwhile.
 */

/** The subset of a pg `Client` the listener uses. */
export interface ListenClientLike {
  connect(): Promise<unknown>;
  query(text: string): Promise<unknown>;
  on(event: "notification", listener: (message: { channel: string }) => void): unknown;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "end", listener: () => void): unknown;
  end(): Promise<void>;
}

export interface Listener {
  stop(): Promise<void>;
}

export async function listen(
  channel: string,
  connect: () => Promise<ListenClientLike>,
  onNotify: () => void,
  onError: (error: unknown) => void,
  reconnectDelayMs = 1000,
): Promise<Listener> {
  let stopped = false;
  let client: ListenClientLike | undefined;
  let timer: NodeJS.Timeout | undefined;

  const open = async () => {
    const c = await connect();
    let connected = false;
    let lost = false;
    const reconnect = (error?: Error) => {
      // Before the connection is up, failures reach us through connect()'s rejection instead.
      if (!connected || lost || stopped) return;
      lost = true;
      onError(error ?? new Error("the LISTEN connection ended"));
      c.end().catch(() => {});
      timer = setTimeout(() => void open().catch(retry), reconnectDelayMs);
      timer.unref();
      // Something may have committed while we were away.
      onNotify();
    };
    c.on("notification", (message) => {
      if (message.channel === channel) onNotify();
    });
    c.on("error", reconnect);
    c.on("end", () => reconnect());
    try {
      await c.connect();
      await c.query(`LISTEN "${channel.replaceAll('"', '""')}"`); // quoted: a schema's channel keeps its case and its ':'
    } catch (error) {
      await c.end().catch(() => {});
      throw error;
    }
    connected = true;
    client = c;
    if (stopped) await c.end().catch(() => {});
  };
  const retry = (error: unknown) => {
    if (stopped) return;
    onError(error);
    timer = setTimeout(() => void open().catch(retry), reconnectDelayMs);
    timer.unref();
  };

  await open();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await client?.end().catch(() => {});
    },
  };
}

/** A connection factory for `listen` over node-postgres, loaded only when the relay listens. */
export function pgListenConnection(connectionString: string): () => Promise<ListenClientLike> {
  return async () => {
    const { default: pg } = await import("pg");
    return new pg.Client({ connectionString }) as unknown as ListenClientLike;
  };
}
