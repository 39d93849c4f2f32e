// The compose topology with local processes: docker-compose.yml is read, its topology checked
// (3 nodes including the roles' auth.conf, setup as admin with 3 replicas, a worker and a
// coordinator with their roles), then that same topology runs here: `troupe auth init`, a
// 3-node cluster including its auth.conf, `troupe setup`, a worker and a coordinator spawned
// with the compose file's own arguments, and a client with the client role.
import type { ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix, relative, resolve } from "node:path";
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

const root = resolve(import.meta.dirname, "../..");
const CLI = "dist/src/cli/main.js";

interface Service {
  readonly image?: string;
  readonly command?: string | string[];
  readonly volumes?: string[];
  readonly environment?: Record<string, string>;
  readonly depends_on?: Record<string, { condition: string }>;
  readonly configs?: Array<{ source: string; target: string }>;
}
interface Compose {
  readonly services: Record<string, Service>;
  readonly configs: Record<string, { content: string }>;
  readonly volumes: Record<string, unknown>;
}

/** Compose's `${VAR:-default}` with VAR unset, and `$$` (a literal `$`). */
const interpolate = (s: string) => s.replace(/\$\{\w+:-([^}]*)\}/g, "$1").replace(/\$\$/g, "$");

/** The `troupe` arguments of a service: what follows `node dist/src/cli/main.js` (in `sh -c` too). */
const troupeArgs = (service: Service | undefined): string[] => {
  const command = service?.command ?? [];
  const words = (Array.isArray(command) ? command : command.split(/\s+/)).flatMap((w, i, all) =>
    // `sh -c "<script>"`: the script's words.
    i === 2 && all[0] === "sh" && all[1] === "-c" ? w.split(/\s+/) : i < 2 && all[0] === "sh" && all[1] === "-c" ? [] : [w],
  );
  const at = words.findIndex((w) => w.endsWith(CLI));
  if (at < 0) return [];
  const rest = words.slice(at + 1).map(interpolate);
  const end = rest.findIndex((w) => [";", "&&", "||", "|"].includes(w));
  return end < 0 ? rest : rest.slice(0, end);
};

/** A flag's value in `args` (`--auth FILE`). */
const flag = (args: string[], name: string): string | undefined => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
};

/** Where a named volume is mounted in a service (`auth:/auth:ro` → `/auth`). */
const mountOf = (service: Service | undefined, volume: string): string | undefined =>
  service?.volumes?.map((v) => v.split(":")).find(([source]) => source === volume)?.[1];

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
  // The volume the auth service writes into, and where every troupe service and node mounts it.
  const authVolume = authService.volumes?.map((v) => v.split(":")).find(([, target]) => target === authDir)?.[0];
  expect(authVolume, `the ${authName} service writes ${authDir} to a named volume`).toBeDefined();
  expect(Object.keys(compose.volumes)).toContain(authVolume);
  const role = (name: string, args: string[], expected: Role) => {
    const file = flag(args, "--auth");
    const mount = mountOf(services[name], authVolume!);
    expect(file, `${name} runs with --auth`).toBeDefined();
    expect(mount, `${name} mounts the ${authVolume} volume`).toBeDefined();
    expect(file).toBe(posix.join(mount!, `${expected}.json`));
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
      // auth.conf is included relative to the config, from the auth volume mounted beside it.
      const include = /^\s*include\s+"([^"]+)"/m.exec(content)?.[1];
      expect(include, `${name}'s config includes auth.conf`).toMatch(/auth\.conf$/);
      expect(posix.dirname(posix.join(posix.dirname(config!.target), include!))).toBe(mountOf(node, authVolume));
      expect(node.depends_on?.[authName]?.condition).toBe("service_completed_successfully");
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
    // Every troupe process is given every node.
    for (const s of [t.setup, t.worker, t.coordinator]) {
      const urls = services[s.name]!.environment?.NATS_URL ?? flag(s.args, "--server") ?? "";
      expect(urls.split(",").sort()).toEqual(nodeNames.map((n) => `nats://${n}:4222`).sort());
    }
    // nats-box connects as the inspector, from the auth volume.
    const box = services["nats-box"];
    expect(box).toBeDefined();
    expect(JSON.stringify(box?.command)).toContain(posix.join(mountOf(box, t.authVolume) ?? "?", "inspector.json"));
  });
});

describe("the compose topology with local processes", () => {
  let dir: string;
  let cluster: NatsCluster;
  let worker: WorkerProcess | undefined;
  let coordinator: ChildProcess | undefined;
  const open: Troupe[] = [];
  let t: ReturnType<typeof topology>;

  /** A compose argument with this machine's paths: the auth volume's files, the module from source. */
  const local = (arg: string) =>
    arg === t.authDir || arg.startsWith(`${t.authDir}/`)
      ? join(dir, arg.slice(t.authDir.length))
      : /^dist\/.+\.js$/.test(arg)
        ? arg.replace(/^dist\//, "").replace(/\.js$/, ".ts")
        : arg;
  const env = () => ({ NATS_URL: cluster.urls.join(","), TROUPE_LOG_LEVEL: "info" });
  const asRole = async (role: Role): Promise<Troupe> => {
    const troupe = await Troupe.connect({
      servers: cluster.urls,
      ...(JSON.parse(await readFile(join(dir, `${role}.json`), "utf8")) as object),
      logger: pino({ level: "silent" }),
    });
    open.push(troupe);
    return troupe;
  };

  beforeAll(async () => {
    t = topology();
    dir = await mkdtemp(join(tmpdir(), "troupe-compose-"));
    const authArgs = troupeArgs(services[t.authName]).map(local);
    const init = await runCli(authArgs, {}, { cwd: dir });
    expect(init.code, init.stderr).toBe(0);
    // `include` is relative to the including file, which each node writes in a fresh folder of the temp dir.
    // The helper's own connection (its JetStream questions) as the inspector.
    const { user, pass, inboxPrefix } = JSON.parse(await readFile(join(dir, "inspector.json"), "utf8")) as { user: string; pass: string; inboxPrefix?: string };
    cluster = await NatsCluster.start({
      size: nodeNames.length,
      config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), join(dir, "auth.conf")))}`,
      auth: { user, pass, ...(inboxPrefix === undefined ? {} : { inboxPrefix }) },
      readyTimeout: 60_000,
    });
  }, 120_000);

  afterAll(async () => {
    coordinator?.kill("SIGKILL");
    worker?.child.kill("SIGKILL");
    killCliChildren();
    await Promise.all(open.splice(0).map((x) => x.close().catch(() => undefined)));
    await cluster?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  it("setup as admin, a worker and a coordinator with their roles; a client's tasks and workflow complete", async () => {
    const setup = await runCli(t.setup.args.map(local), env());
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain(`the Troupe layout is in place (replicas ${nodeNames.length})`);

    const workerArgs = t.worker.args.map(local);
    expect(workerArgs[0]).toBe("worker");
    worker = await startWorkerProcess(cluster.urls.join(","), workerArgs[1]!, null, workerArgs.slice(2));
    coordinator = spawnCli(t.coordinator.args.map(local), env());
    const coordinatorExited = new Promise<never>((_, reject) =>
      coordinator!.once("exit", (code) => reject(new Error(`troupe coordinator exited (${code})`))),
    );
    await Promise.race([waitForOutput(coordinator, /coordinator started/, 60_000), coordinatorExited]);

    const client = await asRole("client");
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
    const inspector = await asRole("inspector");
    const jsm = connectionOf(inspector).jsm;
    const expected = [...layoutStreams().map((s) => s.name), ...LAYOUT_BUCKETS.map((b) => `KV_${b.name}`)];
    for (const name of expected) {
      const info = await jsm.streams.info(name);
      expect(info.config.num_replicas, name).toBe(nodeNames.length);
    }
    await cluster.healthy(120_000);
    const check = await runCli([...t.setup.args.map(local), "--check"], env());
    expect(check.code, check.stdout + check.stderr).toBe(0);
  }, 300_000);
});
