/** Each test file gets its own nats-server (free port, temp store), stopped after the file. */
import { afterAll, beforeAll } from "vitest";
import { NatsServer, type NatsServerOptions } from "../../src/testing/index.js";
import { Troupe } from "../../src/index.js";

export const useNatsServer = (options: NatsServerOptions = {}) => {
  let server: NatsServer | undefined;
  beforeAll(async () => {
    server = await NatsServer.start(options);
  });
  afterAll(async () => {
    await server?.stop();
  });
  return (): NatsServer => {
    if (server === undefined) throw new Error("nats-server not started");
    return server;
  };
};

/** Clients opened in a test, closed by `closeAll` (in afterEach). */
export const clients = () => {
  const open: Troupe[] = [];
  return {
    /** A client of `server` (or of another URL to it: a proxy's). */
    connect: async (server: NatsServer | { readonly url: string }) => {
      const t = await Troupe.connect({ servers: server.url });
      open.push(t);
      return t;
    },
    closeAll: async () => {
      await Promise.all(open.splice(0).map((t) => t.close()));
    },
  };
};
