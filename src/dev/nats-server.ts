/**
 * A local `nats-server -js` as a child process: the embedded default of `troupe dev`,
 * the throwaway server of `troupe/testing`, and the server every test spawns.
 *
 * Free ports come from the server itself (`-1`), read back from its ports file; the
 * first port is then pinned so a restart comes back where clients look for it.
 *
 * The server dies with the process that started it, however that process ends (a throw, a
 * signal, SIGKILL): a watchdog (`sh`, a few hundred bytes of memory) holds a pipe from this
 * process and stops the server when the pipe closes. Its store folder is locked while it runs
 * (./store-lock.ts): a second start on the same store throws `StoreLocked`, naming the server.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { NatsServerNotFound } from "../errors.js";
import { LOCK_FILE, StoreLock } from "./store-lock.js";

export interface NatsServerOptions {
  /** Store directory; a fresh temp dir (removed on stop) when unset. */
  readonly storeDir?: string;
  /** Binary; `TROUPE_NATS_SERVER`, then `nats-server` on PATH. */
  readonly binary?: string;
  /** Listen port; a free one when unset. */
  readonly port?: number;
  /** Extra config lines, appended verbatim. */
  readonly config?: string;
  /** Server name (also the JetStream node name). */
  readonly name?: string;
  /** Ask JetStream to fsync every write, when the server supports it (2.10+). */
  readonly syncAlways?: boolean;
  /** Serve the HTTP monitoring endpoints (`/varz`, `/jsz`) on a free loopback port. */
  readonly monitoring?: boolean;
}

const INSTALL_HINT =
  "Install it (Debian/Ubuntu: `apt-get install nats-server`; macOS: `brew install nats-server`; " +
  "or a release from the NATS project) or set TROUPE_NATS_SERVER to its path.";

export const findNatsServer = (binary?: string): string => {
  const candidate = binary ?? process.env.TROUPE_NATS_SERVER ?? "nats-server";
  const probe = spawnSync(candidate, ["--version"], { encoding: "utf8" });
  if (probe.error !== undefined || probe.status !== 0) {
    throw new NatsServerNotFound({ message: `nats-server not found (tried "${candidate}"). ${INSTALL_HINT}` });
  }
  return candidate;
};

/** `[major, minor, patch]` of the binary, e.g. `[2, 9, 10]`. */
export const natsServerVersion = (binary: string): [number, number, number] => {
  const out = spawnSync(binary, ["--version"], { encoding: "utf8" }).stdout ?? "";
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
};

/**
 * The watchdog of server `$1`: it waits for the end of its stdin (a pipe from the process that
 * started the server, closed by the kernel when that process dies), then stops the server
 * (SIGTERM, SIGKILL after 5 s), gives up the store's lock `$3` if it is still this server's (it
 * names the temp folder `$2`), and removes that folder. A terminal's SIGHUP or Ctrl-C does not
 * stop the watchdog itself.
 */
const WATCHDOG = [
  "trap '' HUP INT",
  "while read -r _; do :; done",
  'kill -CONT "$1" 2>/dev/null; kill -TERM "$1" 2>/dev/null || exit 0',
  "i=0",
  'while kill -0 "$1" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done',
  'kill -KILL "$1" 2>/dev/null',
  'if grep -qF "$2" "$3" 2>/dev/null; then rm -f "$3"; fi',
  'rm -rf "$2"',
].join("\n");

/** Stop `pid` when this process ends, however it ends; kill the returned process once `pid` has exited. */
const watchdog = (pid: number, dir: string, lockFile: string): ChildProcess | undefined => {
  if (process.platform === "win32") return undefined;
  const guard = spawn("/bin/sh", ["-c", WATCHDOG, "troupe-nats-watchdog", String(pid), dir, lockFile], { stdio: ["pipe", "ignore", "ignore"] });
  guard.on("error", () => undefined);
  guard.stdin?.on("error", () => undefined);
  // Neither keeps this process alive: the pipe only has to close when it ends.
  guard.unref();
  (guard.stdin as { unref?: () => void } | null)?.unref?.();
  return guard;
};

export class NatsServer {
  private child: ChildProcess | undefined;
  private lock: StoreLock | undefined;
  private exited: Promise<void> = Promise.resolve();
  /** The monitoring endpoint's base URL, when `monitoring` was asked for. */
  monitoringUrl: string | undefined;
  private constructor(
    readonly binary: string,
    readonly dir: string,
    readonly storeDir: string,
    private readonly ownsStore: boolean,
    private readonly options: NatsServerOptions,
    public port: number,
  ) {}

  /** `nats://127.0.0.1:<port>` */
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  static async start(options: NatsServerOptions = {}): Promise<NatsServer> {
    const binary = findNatsServer(options.binary);
    const dir = await mkdtemp(join(tmpdir(), "troupe-nats-"));
    const storeDir = options.storeDir === undefined ? join(dir, "store") : resolve(options.storeDir);
    await mkdir(storeDir, { recursive: true });
    const server = new NatsServer(binary, dir, storeDir, options.storeDir === undefined, options, options.port ?? -1);
    try {
      server.lock = await StoreLock.acquire(storeDir);
      await server.launch();
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  private async launch(): Promise<void> {
    const [major, minor] = natsServerVersion(this.binary);
    const sync = this.options.syncAlways && (major > 2 || (major === 2 && minor >= 10)) ? ", sync_interval: always" : "";
    const conf = join(this.dir, "server.conf");
    const portsDir = join(this.dir, "ports");
    await rm(portsDir, { recursive: true, force: true });
    await mkdir(portsDir, { recursive: true });
    await writeFile(
      conf,
      [
        `listen: "127.0.0.1:${this.port}"`,
        `ports_file_dir: ${JSON.stringify(portsDir)}`,
        this.options.name ? `server_name: ${JSON.stringify(this.options.name)}` : "",
        `jetstream { store_dir: ${JSON.stringify(this.storeDir)}${sync} }`,
        this.options.monitoring ? `http: "127.0.0.1:-1"` : "",
        this.options.config ?? "",
      ].join("\n"),
    );
    const child = spawn(this.binary, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    const guard = child.pid === undefined ? undefined : watchdog(child.pid, this.dir, join(this.storeDir, LOCK_FILE));
    child.once("exit", () => guard?.kill("SIGKILL"));
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    this.exited = new Promise((res) => child.once("exit", () => res()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`nats-server exited at start (${child.exitCode}): ${stderr.trim()}`);
      const files = existsSync(portsDir) ? await readdir(portsDir) : [];
      const file = files.find((f) => f.endsWith(".ports"));
      if (file !== undefined) {
        // The server may still be writing the file: one that does not parse yet is not ready yet.
        const ports = await readFile(join(portsDir, file), "utf8")
          .then((text) => JSON.parse(text) as { nats?: string[]; monitoring?: string[] })
          .catch(() => undefined);
        const url = ports?.nats?.[0];
        if (url !== undefined && (!this.options.monitoring || ports?.monitoring?.[0] !== undefined)) {
          this.monitoringUrl = ports?.monitoring?.[0];
          this.port = Number(new URL(url).port);
          if (child.pid !== undefined) await this.lock?.update({ pid: child.pid, url: this.url, conf });
          return;
        }
      }
      if (Date.now() > deadline) throw new Error(`nats-server did not report its ports in time: ${stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGKILL: the process dies at once, as in a crash. */
  async kill(): Promise<void> {
    this.child?.kill("SIGKILL");
    await this.exited;
  }

  /** SIGSTOP / SIGCONT: the process freezes, connections stay open. */
  pause(): void {
    this.child?.kill("SIGSTOP");
  }

  resume(): void {
    this.child?.kill("SIGCONT");
  }

  /** Start again on the same port and store. */
  async restart(): Promise<void> {
    if (this.child && this.child.exitCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
    await this.launch();
  }

  /** Stop the server; removes the temp dir (and the store when it was a temp one). */
  async stop(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGCONT");
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child?.kill("SIGKILL"), 5_000);
      await this.exited;
      clearTimeout(timer);
    }
    await this.lock?.release();
    this.lock = undefined;
    await rm(this.dir, { recursive: true, force: true });
    if (this.ownsStore) await rm(this.storeDir, { recursive: true, force: true });
  }
}
