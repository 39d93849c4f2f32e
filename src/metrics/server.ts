/**
 * The Prometheus endpoint of a worker or coordinator (`metrics: { port }`): `GET /metrics`
 * over plain HTTP, from a registry of its own. prom-client's global default registry is
 * never used, so a user's own metrics are neither mixed in nor registered twice.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Registry } from "prom-client";
import { InvalidOption } from "../errors.js";

export interface MetricsOptions {
  /** The port to serve `GET /metrics` on; 0 picks a free one (the worker's or coordinator's `metricsPort` tells which). */
  readonly port: number;
  /** The address to listen on (default: every interface). */
  readonly host?: string;
}

/** `metrics` as given, checked: `fail` builds the typed error naming the option. */
export const metricsOption = <E>(value: unknown, fail: (message: string) => E): MetricsOptions => {
  const port = (value as { port?: unknown } | null | undefined)?.port;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65_535) {
    throw fail(`metrics.port must be an integer from 0 to 65535, got ${JSON.stringify(port)}`);
  }
  const host = (value as { host?: unknown }).host;
  if (host !== undefined && (typeof host !== "string" || host === "")) throw fail(`metrics.host must be an address, got ${JSON.stringify(host)}`);
  return host === undefined ? { port } : { port, host };
};

/**
 * Node's process metrics (CPU, memory, event loop lag, GC), made once per process: their
 * collectors (a GC observer, an event loop monitor) cannot be removed, so every endpoint
 * shares them rather than adding its own.
 */
let processMetrics: Registry | undefined;
const processRegistry = (): Registry => {
  if (processMetrics === undefined) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics });
  }
  return processMetrics;
};

/** An HTTP server answering `GET /metrics` until `stop()`. */
export class MetricsServer {
  private constructor(
    private readonly server: Server,
    /** The port it listens on. */
    readonly port: number,
  ) {}

  /** Listen on `options.port` and serve `own`'s metrics with the process's. */
  static async start(own: Registry, options: MetricsOptions): Promise<MetricsServer> {
    const registry = Registry.merge([processRegistry(), own]);
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (path !== "/metrics") {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found: the metrics are at /metrics\n");
        return;
      }
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("GET only\n");
        return;
      }
      registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": registry.contentType }).end(req.method === "HEAD" ? undefined : text),
        (e: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`metrics not collected: ${(e as Error).message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port, options.host, () => {
        server.off("error", reject);
        resolve();
      });
    }).catch((e: unknown) => {
      throw new InvalidOption({ message: `metrics: cannot listen on ${options.host ?? "*"}:${options.port}: ${(e as Error).message}` });
    });
    return new MetricsServer(server, (server.address() as AddressInfo).port);
  }

  /** Stop listening and close open connections (a scraper's keep-alive included). */
  stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    return closed;
  }
}
