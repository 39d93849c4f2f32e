// The compose topology with local processes: docker-compose.yml is read, its topology checked
// (3 nodes including the roles' auth.conf, TLS on, setup as admin with 3 replicas, a worker and
// a coordinator with their roles, each service with its own role's file only and the code
// read-only), then that same topology runs here: the compose file's own `certs` and `auth`
// scripts (each volume a folder), a 3-node cluster with its TLS block and auth.conf, `troupe
// setup`, a worker and a coordinator spawned with the compose file's own arguments, and a
// client with the client role, every connection over TLS.
import { execFile, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, symlink } from "node:fs/promises";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { tmpdir } from "node:os";
import { dirname, join, posix, relative, resolve } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { defineWorkflow, Schema, Troupe } from "../../src/index.js";
import { add } from "../../src/dev/demo.js";
import { NatsCluster } from "../../src/testing/index.js";
import { connectionOf } from "../../src/sdk/troupe.js";
import { LAYOUT_BUCKETS, layoutStreams } from "../../src/nats/layout.js";
import type { Role } from "../../src/nats/roles.js";
import { killCliChildren, runCli, spawnCli, startWorkerProcess, waitForOutput, type WorkerProcess } from "../helpers/cli.js";

const run = promisify(execFile);

const root = resolve(import.meta.dirname, "../..");
const CLI = "dist/src/cli/main.js";

interface Service {
  readonly image?: string;
  readonly command?: string | string[];
  readonly volumes?: string[];
  readonly environment?: Record<string, string>;
  readonly depends_on?: Record<string, { condition: string }>;
  readonly configs?: Array<{ source: string; target: string }>;
  readonly ports?: string[];
}
interface Compose {
  readonly services: Record<string, Service>;
  readonly configs: Record<string, { content: string }>;
  readonly volumes: Record<string, unknown>;
}

/** Compose's `${VAR:-default}` with VAR unset, and `$$` (a literal `$`). */
const interpolate = (s: string) => s.replace(/\$\{\w+:-([^}]*)\}/g, "$1").replace(/\$\$/g, "$");

/** The `troupe` arguments of a service: what follows `node dist/src/cli/main.js` (in an `sh -c` script too, up to its command's end). */
const troupeArgs = (service: Service | undefined): string[] => {
  const command = service?.command ?? [];
  const list = Array.isArray(command) ? command : command.split(/\s+/);
  const commands = list[0] === "sh" && list[1] === "-c" ? (list[2] ?? "").split(/\n|;|&&|\|\||\|/) : [list.join(" ")];
  const words = (commands.find((c) => c.includes(CLI)) ?? "").trim().split(/\s+/);
  const at = words.findIndex((w) => w.endsWith(CLI));
  return at < 0 ? [] : words.slice(at + 1).map(interpolate);
};

/** A service's mounts: `source:target[:ro]`. */
const mountsOf = (service: Service | undefined) =>
  (service?.volumes ?? []).map((v) => {
    const [source = "", target = "", mode] = v.split(":");
    return { source, target, readOnly: mode === "ro" };
  });

/** A flag's value in `args` (`--auth FILE`). */
const flag = (args: string[], name: string): string | undefined => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
};

/** Where a named volume is mounted in a service (`auth:/auth:ro` → `/auth`). */
const mountOf = (service: Service | undefined, volume: string): string | undefined => mountsOf(service).find((m) => m.source === volume)?.target;

/** The named volume a service mounts at `dir` (or above a file in it). */
const volumeAt = (service: Service | undefined, path: string): string | undefined =>
  mountsOf(service)
    .filter((m) => m.source !== "." && (path === m.target || path.startsWith(`${m.target}/`)))
    .sort((a, b) => b.target.length - a.target.length)[0]?.source;

/** The settings of the `tls { }` block `pattern` finds (`cert_file`, `key_file`, `ca_file`, `verify`). */
const tlsBlock = (content: string, pattern: RegExp): Record<string, string | undefined> =>
  Object.fromEntries([...(pattern.exec(content)?.[1] ?? "").matchAll(/^\s*(\w+):\s*(\S+)\s*$/gm)].map((m) => [m[1], m[2]]));

const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

/**
 * The compose file's one-shot scripts (`certs`, then `auth`) run here, each volume a folder:
 * each service sees, at each mount target, a link to its volume's folder; its script's
 * absolute paths are rewritten to its own folder of links, and `node dist/src/cli/main.js` to
 * the CLI from source. `files` lists what each volume holds afterwards.
 */
const filledVolumes = async () => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-compose-volumes-"));
  const path = (volume: string) => (volume === "." ? root : join(dir, "volumes", volume));
  for (const name of ["certs", "auth"]) {
    const service = services[name];
    const command = service?.command;
    expect(Array.isArray(command) && command[0] === "sh" && command[1] === "-c", `${name} runs a script`).toBe(true);
    const fs = join(dir, `root-${name}`);
    const tops = new Set<string>();
    for (const m of mountsOf(service)) {
      await mkdir(path(m.source), { recursive: true });
      await mkdir(dirname(join(fs, m.target)), { recursive: true });
      await symlink(path(m.source), join(fs, m.target));
      tops.add(m.target.split("/")[1]!);
    }
    let script = interpolate((command as string[])[2]!).replaceAll(`node ${CLI}`, `"${process.execPath}" --import ${tsx} ${join(root, "src/cli/main.ts")}`);
    for (const top of tops) script = script.replace(new RegExp(`(?<![\\w.$/-])/${top}(?=[/\\s;]|$)`, "gm"), join(fs, top));
    const cwd = mountsOf(service).some((m) => m.source === ".") ? root : dir;
    await run("sh", ["-c", script], { cwd, timeout: 90_000, env: { ...process.env, TROUPE_LOG_LEVEL: "warn" } });
  }
  const files = new Map<string, string[]>();
  for (const volume of Object.keys(compose.volumes)) files.set(volume, (await readdir(path(volume)).catch(() => [])).sort());
  return { path, files, remove: () => rm(dir, { recursive: true, force: true }) };
};

const compose = parse(await readFile(join(root, "docker-compose.yml"), "utf8"), { merge: true }) as Compose;
const services = compose.services;
const byVerb = (verb: string) => Object.entries(services).filter(([, s]) => troupeArgs(s)[0] === verb);
const one = (verb: string): [string, Service] => {
  const found = byVerb(verb);
  expect(found.map(([name]) => name), `one service runs troupe ${verb}`).toHaveLength(1);
  return found[0]!;
};
const nodeNames = Object.entries(services)
  .filter(([, s]) => s.image?.startsWith("nats:") === true)
  .map(([name]) => name);

/** The compose topology, derived from the file (and checked as it is derived). */
const topology = () => {
  const [authName, authService] = one("auth");
  const authArgs = troupeArgs(authService);
  expect(authArgs.slice(0, 2)).toEqual(["auth", "init"]);
  const authDir = authArgs[2]!;
  // The volume the auth service writes every role's file into: its own.
  const authVolume = volumeAt(authService, authDir);
  expect(authVolume, `the ${authName} service writes ${authDir} to a named volume`).toBeDefined();
  expect(Object.keys(compose.volumes)).toContain(authVolume);
  const role = (name: string, args: string[], expected: Role) => {
    const file = flag(args, "--auth");
    expect(file, `${name} runs with --auth`).toBeDefined();
    expect(posix.basename(file!)).toBe(`${expected}.json`);
    expect(volumeAt(services[name], file!), `${name} mounts a volume holding ${file}`).toBeDefined();
    return file!;
  };
  const [setupName, setup] = one("setup");
  const [workerName, worker] = one("worker");
  const [coordinatorName, coordinator] = one("coordinator");
  return {
    authName,
    authDir,
    authVolume: authVolume!,
    setup: { name: setupName, args: troupeArgs(setup), role: role(setupName, troupeArgs(setup), "admin") },
    worker: { name: workerName, args: troupeArgs(worker), role: role(workerName, troupeArgs(worker), "worker") },
    coordinator: { name: coordinatorName, args: troupeArgs(coordinator), role: role(coordinatorName, troupeArgs(coordinator), "coordinator") },
  };
};

describe("docker-compose.yml", () => {
  it("runs a cluster of at least 3 JetStream nodes, fsync on every write, including the roles' auth.conf", () => {
    expect(nodeNames.length).toBeGreaterThanOrEqual(3);
    const { authName, authVolume } = topology();
    for (const name of nodeNames) {
      const node = services[name]!;
      expect(node.image).toMatch(/^nats:2\.(1\d|[2-9]\d)/); // 2.10+: sync_interval
      const config = node.configs?.[0];
      expect(config, `${name} has a config`).toBeDefined();
      expect(node.command).toEqual(["-c", config!.target]);
      const content = compose.configs[config!.source]!.content;
      expect(content).toMatch(/^\s*sync_interval: always$/m);
      // Its routes name every node.
      for (const other of nodeNames) expect(content).toContain(`nats://${other}:6222`);
      // auth.conf is included relative to the config, from a volume mounted beside it (not the auth service's own).
      const include = /^\s*include\s+"([^"]+)"/m.exec(content)?.[1];
      expect(include, `${name}'s config includes auth.conf`).toMatch(/auth\.conf$/);
      const included = posix.join(posix.dirname(config!.target), include!);
      expect(volumeAt(node, included)).toBeDefined();
      expect(volumeAt(node, included)).not.toBe(authVolume);
      expect(node.depends_on?.[authName]?.condition).toBe("service_completed_successfully");
      // TLS on the client port and on the routes (only nodes with a certificate the CA signed may route).
      const client = tlsBlock(content, /^tls\s*\{([\s\S]*?)^\}/m);
      const routes = tlsBlock(content, /^\s+tls\s*\{([\s\S]*?)^\s+\}/m);
      for (const tls of [client, routes]) {
        expect(tls.cert_file, `${name}: tls`).toBeDefined();
        for (const file of [tls.cert_file, tls.key_file, tls.ca_file]) expect(volumeAt(node, file ?? "?"), `${name} mounts ${file}`).toBe(volumeAt(node, included));
      }
      expect(routes.verify).toBe("true");
      // Published, if at all, on the host's loopback only.
      for (const port of node.ports ?? []) expect(port, `${name} publishes ${port}`).toMatch(/^127\.0\.0\.1:/);
    }
  });

  it("sets up the layout as admin with a replica per node, then runs a worker and a coordinator with their roles", () => {
    const t = topology();
    expect(Number(flag(t.setup.args, "--replicas"))).toBeGreaterThanOrEqual(3);
    expect(flag(t.setup.args, "--replicas")).toBe(String(nodeNames.length));
    expect(t.setup.args).not.toContain("--check");
    for (const node of nodeNames) expect(services[t.setup.name]!.depends_on?.[node]?.condition).toBe("service_healthy");
    for (const s of [t.worker, t.coordinator]) {
      expect(services[s.name]!.depends_on?.[t.setup.name]?.condition).toBe("service_completed_successfully");
    }
    // Every troupe process is given every node, and checks their certificate against the CA.
    for (const s of [t.setup, t.worker, t.coordinator]) {
      const urls = services[s.name]!.environment?.NATS_URL ?? flag(s.args, "--server") ?? "";
      expect(urls.split(",").sort()).toEqual(nodeNames.map((n) => `nats://${n}:4222`).sort());
      const ca = flag(s.args, "--tls-ca") ?? services[s.name]!.environment?.TROUPE_TLS_CA;
      expect(ca, `${s.name} checks the servers' certificate`).toBeDefined();
      expect(volumeAt(services[s.name], ca!)).toBe(volumeAt(services[s.name], s.role));
    }
    // nats-box connects as the inspector, over TLS.
    const box = services["nats-box"];
    expect(box).toBeDefined();
    expect(JSON.stringify(box?.command)).toMatch(/\/inspector\.json/);
    expect(JSON.stringify(box?.command)).toMatch(/--tlsca \/\S+\/ca\.pem/);
  });

  it("mounts the code read-only in every service but the build, and gives each service its own role's file only", async () => {
    for (const [name, service] of Object.entries(services)) {
      for (const m of mountsOf(service).filter((m) => m.source === "." || m.source.startsWith("./"))) {
        if (name !== "build") expect(m.readOnly, `${name} mounts ${m.source} read-only`).toBe(true);
      }
    }
    const t = topology();
    // What each volume holds once the compose file's own certs and auth scripts have run.
    const volumes = await filledVolumes();
    try {
      const files = (volume: string) => volumes.files.get(volume) ?? [];
      const roles = new Map<string, Role>([
        [t.setup.name, "admin"],
        [t.worker.name, "worker"],
        [t.coordinator.name, "coordinator"],
        ["nats-box", "inspector"],
        // The sweeper: the only identity that may purge or delete messages.
        ["retention", "retention"],
      ]);
      expect(JSON.stringify(services.retention?.command)).toMatch(/"retention","--auth","\/auth\/retention\.json"/);
      for (const [name, service] of Object.entries(services)) {
        // The two one-shots that make the secrets.
        if (name === t.authName || name === "certs") continue;
        const held = mountsOf(service).flatMap((m) => (m.source === "." ? [] : files(m.source)));
        // No service but auth sees every role's file, nor, but the certs and auth, the CA's key.
        expect(mountsOf(service).map((m) => m.source), name).not.toContain(t.authVolume);
        expect(held, name).not.toContain("ca-key.pem");
        const secrets = held.filter((f) => f.endsWith(".json"));
        const role = roles.get(name);
        expect(secrets, `${name} holds ${role === undefined ? "no role's file" : `${role}.json only`}`).toEqual(role === undefined ? [] : [`${role}.json`]);
        if (role !== undefined) expect(held, name).toContain("ca.pem");
      }
      for (const node of nodeNames) {
        const held = mountsOf(services[node]).flatMap((m) => files(m.source));
        expect(held.sort(), node).toEqual(["auth.conf", "ca.pem", "server-key.pem", "server.pem"]);
      }
      // The nodes' certificate names every node (and the published port's loopback).
      const { stdout } = await run("openssl", ["x509", "-noout", "-ext", "subjectAltName", "-in", join(volumes.path(volumeAt(services[nodeNames[0]!], "/etc/nats/auth/server.pem")!), "server.pem")]);
      for (const name of [...nodeNames, "localhost"]) expect(stdout).toContain(`DNS:${name}`);
      expect(stdout).toContain("IP Address:127.0.0.1");
    } finally {
      await volumes.remove();
    }
  }, 120_000);
});

describe("the compose topology with local processes", () => {
  let dir: string;
  let cluster: NatsCluster;
  let worker: WorkerProcess | undefined;
  let coordinator: ChildProcess | undefined;
  const open: Troupe[] = [];
  let t: ReturnType<typeof topology>;
  let volumes: Awaited<ReturnType<typeof filledVolumes>>;

  /** A compose argument of `service` with this machine's paths: its volumes' files, the module from source. */
  const local = (service: string) => (arg: string) => {
    const volume = arg.startsWith("/") ? volumeAt(services[service], arg) : undefined;
    if (volume !== undefined) return join(volumes.path(volume), arg.slice(mountOf(services[service], volume)!.length));
    return /^dist\/.+\.js$/.test(arg) ? arg.replace(/^dist\//, "").replace(/\.js$/, ".ts") : arg;
  };
  const env = () => ({ NATS_URL: cluster.urls.join(","), TROUPE_LOG_LEVEL: "info" });
  /** A role's file and the CA's certificate, from the one volume the service of that role mounts. */
  const secrets = (service: string, role: Role) => {
    const volume = mountsOf(services[service]).find((m) => m.source !== ".")!.source;
    return { file: join(volumes.path(volume), `${role}.json`), ca: join(volumes.path(volume), "ca.pem") };
  };
  const asRole = async ({ file, ca }: { file: string; ca: string }): Promise<Troupe> => {
    const troupe = await Troupe.connect({
      servers: cluster.urls,
      ...(JSON.parse(await readFile(file, "utf8")) as object),
      tls: { caFile: ca },
      logger: pino({ level: "silent" }),
    });
    open.push(troupe);
    return troupe;
  };

  beforeAll(async () => {
    t = topology();
    dir = await mkdtemp(join(tmpdir(), "troupe-compose-"));
    // The compose file's own certs and auth scripts.
    volumes = await filledVolumes();
    // Each node's config: the compose file's TLS block and auth.conf, from the nodes' volume here.
    const node = services[nodeNames[0]!]!;
    const content = compose.configs[node.configs![0]!.source]!.content;
    const nodeLocal = local(nodeNames[0]!);
    const tls = (/^tls\s*\{[\s\S]*?^\}/m.exec(content)?.[0] ?? "").replace(/\/\S+\.pem/g, (file) => JSON.stringify(nodeLocal(file)));
    const include = posix.join(posix.dirname(node.configs![0]!.target), /^\s*include\s+"([^"]+)"/m.exec(content)![1]!);
    // `include` is relative to the including file, which each node writes in a fresh folder of the temp dir.
    const { user, pass, inboxPrefix } = JSON.parse(await readFile(secrets("nats-box", "inspector").file, "utf8")) as { user: string; pass: string; inboxPrefix?: string };
    cluster = await NatsCluster.start({
      size: nodeNames.length,
      config: `${tls}\ninclude ${JSON.stringify(relative(join(tmpdir(), "server"), nodeLocal(include)))}`,
      // The helper's own connection (its JetStream questions) as the inspector, over TLS.
      auth: { user, pass, ...(inboxPrefix === undefined ? {} : { inboxPrefix }), tls: { caFile: secrets("nats-box", "inspector").ca } },
      readyTimeout: 60_000,
    });
  }, 180_000);

  afterAll(async () => {
    coordinator?.kill("SIGKILL");
    worker?.child.kill("SIGKILL");
    killCliChildren();
    await Promise.all(open.splice(0).map((x) => x.close().catch(() => undefined)));
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    await volumes?.remove();
  }, 120_000);

  it("setup as admin, a worker and a coordinator with their roles; a client's tasks and workflow complete", async () => {
    // Without the CA, the nodes' certificate is refused: TLS is on and checked.
    const untrusted = await runCli(t.setup.args.filter((a, i, all) => a !== "--tls-ca" && all[i - 1] !== "--tls-ca").map(local(t.setup.name)), env());
    expect(untrusted.code).not.toBe(0);
    const setup = await runCli(t.setup.args.map(local(t.setup.name)), env());
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain(`the Troupe layout is in place (replicas ${nodeNames.length})`);

    const workerArgs = t.worker.args.map(local(t.worker.name));
    expect(workerArgs[0]).toBe("worker");
    worker = await startWorkerProcess(cluster.urls.join(","), workerArgs[1]!, null, workerArgs.slice(2));
    coordinator = spawnCli(t.coordinator.args.map(local(t.coordinator.name)), env());
    const coordinatorExited = new Promise<never>((_, reject) =>
      coordinator!.once("exit", (code) => reject(new Error(`troupe coordinator exited (${code})`))),
    );
    await Promise.race([waitForOutput(coordinator, /coordinator started/, 60_000), coordinatorExited]);

    // The client role's file is for the user's own programs: none of the compose services holds it.
    const client = await asRole({ file: join(volumes.path(t.authVolume), "client.json"), ca: secrets(t.worker.name, "worker").ca });
    const runs = await Promise.all(Array.from({ length: 20 }, (_, i) => client.submit(add, { a: i, b: 1000 })));
    const results = await Promise.all(runs.map((r) => r.result({ timeout: 120_000 })));
    expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i + 1000));

    const sums = defineWorkflow({
      name: "compose.sums",
      input: Schema.Struct({ x: Schema.Number }),
      steps: {
        a: { task: add, input: { a: "${input.x}", b: 1 } },
        b: { task: add, after: ["a"], input: { a: "${a}", b: 10 } },
      },
    });
    const run = await client.start(sums, { x: 5 });
    expect(await run.result({ timeout: 120_000 })).toEqual({ a: 6, b: 16 });
  }, 300_000);

  it("the layout's streams and buckets have a replica on every node, as setup --check confirms", async () => {
    const inspector = await asRole(secrets("nats-box", "inspector"));
    const jsm = connectionOf(inspector).jsm;
    const expected = [...layoutStreams().map((s) => s.name), ...LAYOUT_BUCKETS.map((b) => `KV_${b.name}`)];
    for (const name of expected) {
      const info = await jsm.streams.info(name);
      expect(info.config.num_replicas, name).toBe(nodeNames.length);
    }
    await cluster.healthy(120_000);
    const check = await runCli([...t.setup.args.map(local(t.setup.name)), "--check"], env());
    expect(check.code, check.stdout + check.stderr).toBe(0);
  }, 300_000);
});
