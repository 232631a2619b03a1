/**
 * A TCP proxy between the code under test and PostgreSQL that breaks connections at chosen
 * moments: when the client sends a statement containing a marker (e.g. `COMMIT`), it can cut the
 * connection before the statement reaches the server, or let the server run it and cut before
 * the answer reaches the client, or run a hook (e.g. terminate the backend) before forwarding it.
 * It can also refuse new connections. Real sockets, real server: no mocks.
 */
import net from "node:net";

export type Fault =
  /** Cut both sides; the statement never reaches the server. */
  | "cut-before"
  /** Forward the statement, drop the server's answer and cut both sides. */
  | "cut-after-answer"
  /** Run `hook` while the statement is held, then forward it. */
  | { readonly hook: () => Promise<void> };

export interface FaultProxy {
  /** `url` with the host and port of the proxy. */
  readonly url: string;
  /**
   * The next statement that contains `marker`, on any connection, gets `fault`. Resolves when it
   * has been applied.
   */
  arm(marker: string, fault: Fault): Promise<void>;
  /** While on, new connections are accepted and closed at once. */
  refuseConnections(on: boolean): void;
  /**
   * While on, new connections are accepted and never answered (a hung network path); turning it
   * off closes the connections held so far, so their clients get an error instead of waiting.
   */
  stallConnections(on: boolean): void;
  close(): Promise<void>;
}

export async function startFaultProxy(url: string): Promise<FaultProxy> {
  const target = new URL(url);
  const upstream = { host: target.hostname, port: Number(target.port || 5432) };
  let armed: { marker: Buffer; fault: Fault; applied: () => void } | undefined;
  let refusing = false;
  let stalling = false;
  const stalled = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();

  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => {});
    if (refusing) {
      client.destroy();
      return;
    }
    if (stalling) {
      stalled.add(client); // held open, read and never answered
      return;
    }
    const backend = net.connect(upstream);
    sockets.add(backend);
    backend.on("close", () => sockets.delete(backend));
    backend.on("error", () => client.destroy());
    client.on("close", () => backend.destroy());
    backend.on("close", () => client.destroy());
    let dropAnswer: (() => void) | undefined;
    backend.on("data", (chunk: Buffer) => {
      if (dropAnswer) {
        dropAnswer();
        dropAnswer = undefined;
        client.destroy();
        backend.destroy();
        return;
      }
      client.write(chunk);
    });
    client.on("data", (chunk: Buffer) => {
      const match = armed && chunk.includes(armed.marker) ? armed : undefined;
      if (!match) {
        backend.write(chunk);
        return;
      }
      armed = undefined;
      const { fault, applied } = match;
      if (fault === "cut-before") {
        client.destroy();
        backend.destroy();
        applied();
      } else if (fault === "cut-after-answer") {
        dropAnswer = applied;
        backend.write(chunk);
      } else {
        client.pause();
        void fault.hook().finally(() => {
          backend.write(chunk);
          client.resume();
          applied();
        });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  const proxied = new URL(url);
  proxied.hostname = "127.0.0.1";
  proxied.port = String(port);

  return {
    url: proxied.toString(),
    arm: (marker, fault) =>
      new Promise<void>((resolve) => {
        armed = { marker: Buffer.from(marker), fault, applied: resolve };
      }),
    refuseConnections: (on) => {
      refusing = on;
    },
    stallConnections: (on) => {
      stalling = on;
      if (!on) {
        for (const socket of stalled) socket.destroy();
        stalled.clear();
      }
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
