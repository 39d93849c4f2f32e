/** A TCP proxy in front of a nats-server: cutting it takes a client's server away while the server runs on. */
import { createServer, connect, type Socket } from "node:net";

export interface Proxy {
  readonly url: string;
  /** Drop every connection and refuse new ones. */
  cut(): Promise<void>;
}

export const startProxy = async (target: { host: string; port: number }): Promise<Proxy> => {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => s.destroy());
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  return {
    url: `nats://127.0.0.1:${port}`,
    cut: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
};
