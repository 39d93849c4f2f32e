/**
 * A JetStream cluster of local `nats-server` processes on loopback, for tests that lose
 * nodes (in the spirit of nats.js's `jetstreamCluster`): each node has its own
 * `server_name`, store and client port; the route ports are picked before any node starts,
 * since every node's `routes` must name all of them.
 *
 * `kill` (SIGKILL), `pause`/`resume` (SIGSTOP/SIGCONT), `restart` (same store), `wipe`
 * (restart with an empty store: the node rejoins and catches up from its peers), and
 * `streamLeader` (which node leads a stream now).
 */
import { createServer } from "node:net";
import { mkdir, rm } from "node:fs/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager, type JetStreamManager, type StreamInfo } from "@nats-io/jetstream";
import { NatsServer } from "../dev/nats-server.js";

export interface NatsClusterOptions {
  /** How many nodes; 3 by default. */
  readonly size?: number;
  /** The cluster's name (also the prefix of each `server_name`); `troupe` by default. */
  readonly name?: string;
  /** Binary; `TROUPE_NATS_SERVER`, then `nats-server` on PATH. */
  readonly binary?: string;
  /** Extra config lines for every node, appended verbatim. */
  readonly config?: string;
  /** How long `start` waits for the cluster to elect a JetStream meta leader (ms); 30 s by default. */
  readonly readyTimeout?: number;
  /** Credentials of the helper's own connection, when `config` requires them (e.g. a role's file from `troupe auth init`). */
  readonly auth?: {
    readonly user?: string;
    readonly pass?: string;
    readonly token?: string;
    readonly inboxPrefix?: string;
    /** When `config` turns TLS on: the CA that signed the nodes' certificate. */
    readonly tls?: { readonly caFile?: string };
  };
}

/** A free loopback port: listen on 0, read it, close. */
const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });

/** `probe` until it gives a value, at most `timeoutMs`; `what` names the wait in its error. */
const until = async <A>(what: string, timeoutMs: number, probe: () => Promise<A | undefined>): Promise<A> => {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`cluster: ${what} not within ${timeoutMs} ms${last instanceof Error ? `: ${last.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
};

export class NatsCluster {
  private observer: { nc: NatsConnection; jsm: JetStreamManager } | undefined;

  private constructor(
    /** The nodes, in order; node `i` is `server_name` `<name>-<i>`. */
    readonly nodes: ReadonlyArray<NatsServer>,
    readonly names: ReadonlyArray<string>,
    private readonly auth: NatsClusterOptions["auth"] = {},
  ) {}

  static async start(options: NatsClusterOptions = {}): Promise<NatsCluster> {
    const size = options.size ?? 3;
    const name = options.name ?? "troupe";
    const routePorts: number[] = [];
    while (routePorts.length < size) {
      const port = await freePort();
      if (!routePorts.includes(port)) routePorts.push(port);
    }
    const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`).join(", ");
    const names = routePorts.map((_, i) => `${name}-${i}`);
    const started = await Promise.allSettled(
      routePorts.map((port, i) =>
        NatsServer.start({
          name: names[i]!,
          ...(options.binary === undefined ? {} : { binary: options.binary }),
          config: [`cluster { name: ${JSON.stringify(name)}, listen: "127.0.0.1:${port}", routes: [${routes}] }`, options.config ?? ""].join("\n"),
        }),
      ),
    );
    const nodes = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    const cluster = new NatsCluster(nodes, names, options.auth);
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed !== undefined) {
      await cluster.stop();
      throw failed.reason;
    }
    try {
      await cluster.ready(options.readyTimeout ?? 30_000);
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  /** Every node's client URL: what `servers` takes. */
  get urls(): string[] {
    return this.nodes.map((n) => n.url);
  }

  private node(i: number): NatsServer {
    const node = this.nodes[i];
    if (node === undefined) throw new Error(`cluster: no node ${i}`);
    return node;
  }

  /** A connection of the helper's own, to every node, for its JetStream questions. */
  private async manager(): Promise<JetStreamManager> {
    if (this.observer === undefined || this.observer.nc.isClosed()) {
      const nc = await connect({ servers: this.urls, maxReconnectAttempts: -1, reconnectTimeWait: 100, name: "troupe-cluster-helper", ...this.auth });
      this.observer = { nc, jsm: await jetstreamManager(nc) };
    }
    return this.observer.jsm;
  }

  /** Wait until JetStream answers across the cluster (a meta leader is elected). */
  async ready(timeoutMs = 30_000): Promise<void> {
    await until("JetStream ready", timeoutMs, async () => {
      const jsm = await this.manager();
      await jsm.getAccountInfo();
      return true;
    });
  }

  /**
   * Which node leads `stream` now (its index), waiting up to `timeout` ms (30 s) for one to
   * be elected; `not`: a node that is not the answer (the leader just killed, still named
   * by a stale answer).
   */
  async streamLeader(stream: string, options: { readonly timeout?: number; readonly not?: number } = {}): Promise<number> {
    return until(`a leader for ${stream}`, options.timeout ?? 30_000, async () => {
      const info = await (await this.manager()).streams.info(stream);
      const i = this.names.indexOf(info.cluster?.leader ?? "");
      return i < 0 || i === options.not ? undefined : i;
    });
  }

  /**
   * Wait until `stream` has a leader and every replica is current (a restarted or wiped node
   * has caught up): its info then.
   */
  async streamHealthy(stream: string, timeoutMs = 60_000): Promise<StreamInfo> {
    return until(`${stream} with every replica current`, timeoutMs, async () => {
      const info = await (await this.manager()).streams.info(stream);
      const replicas = info.cluster?.replicas ?? [];
      const healthy =
        this.names.includes(info.cluster?.leader ?? "") &&
        replicas.length === this.nodes.length - 1 &&
        replicas.every((r) => r.current && r.offline !== true);
      return healthy ? info : undefined;
    });
  }

  /**
   * Wait until JetStream answers on every node, and every stream (and so every bucket) and every
   * durable consumer has a leader and all its replicas current. With `consumers: "quorum"`, a
   * durable consumer needs its leader and a majority of its replicas current (what it needs to
   * go on): after two nodes of three come back, a consumer's last replica can take minutes on
   * a loaded machine to report itself current (nats-server 2.9).
   */
  async healthy(timeoutMs = 90_000, options: { readonly consumers?: "all" | "quorum" } = {}): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // A node back from a pause or a restart may still say "JetStream system temporarily unavailable".
    for (const url of this.urls) {
      await until(`JetStream answering on ${url}`, Math.max(1_000, deadline - Date.now()), async () => {
        const nc = await connect({ servers: url, name: "troupe-cluster-helper", timeout: 5_000, ...this.auth }).catch(() => undefined);
        if (nc === undefined) return undefined;
        try {
          await (await jetstreamManager(nc)).getAccountInfo();
          return true;
        } catch {
          return undefined;
        } finally {
          await nc.close();
        }
      });
    }
    const names = await until("the stream list", timeoutMs, async () => {
      const all: string[] = [];
      for await (const info of (await this.manager()).streams.list()) all.push(info.config.name);
      return all;
    });
    for (const name of names) {
      const info = await this.streamHealthy(name, Math.max(1_000, deadline - Date.now()));
      const replicas = info.config.num_replicas;
      await until(`the durable consumers of ${name} with every replica current`, Math.max(1_000, deadline - Date.now()), async () => {
        for await (const c of (await this.manager()).consumers.list(name)) {
          if (c.config.durable_name === undefined) continue;
          const others = c.cluster?.replicas ?? [];
          const size = c.config.num_replicas || replicas;
          const upToDate = others.filter((r) => r.current && r.offline !== true).length;
          const enough = options.consumers === "quorum" ? upToDate + 1 > size / 2 : others.length === Math.max(0, size - 1) && upToDate === others.length;
          const current = this.names.includes(c.cluster?.leader ?? "") && enough;
          if (!current) return undefined;
        }
        return true;
      });
    }
  }

  /** SIGKILL node `i`: it dies at once, as in a crash. */
  kill(i: number): Promise<void> {
    return this.node(i).kill();
  }

  /** SIGSTOP node `i`: it freezes, its connections stay open. */
  pause(i: number): void {
    this.node(i).pause();
  }

  /** SIGCONT node `i`. */
  resume(i: number): void {
    this.node(i).resume();
  }

  /** Start node `i` again on its ports with its store (stopping it first if it runs). */
  restart(i: number): Promise<void> {
    return this.node(i).restart();
  }

  /** Kill node `i`, empty its store, start it again: it rejoins with nothing and catches up. */
  async wipe(i: number): Promise<void> {
    const node = this.node(i);
    await node.kill();
    await rm(node.storeDir, { recursive: true, force: true });
    await mkdir(node.storeDir, { recursive: true });
    await node.restart();
  }

  /** Stop every node (resuming a paused one first) and remove their stores. */
  async stop(): Promise<void> {
    await this.observer?.nc.close().catch(() => undefined);
    this.observer = undefined;
    await Promise.all(this.nodes.map((n) => n.stop()));
  }
}
