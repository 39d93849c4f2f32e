import { spawn } from "node:child_process";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { InvalidOption, loadConfig, Troupe, type ConfigKey, type TroupeConfig } from "../../src/index.js";
import { untypedTask } from "../../src/task.js";
import { fallbackNotice } from "../../src/cli/config.js";
import { killCliChildren, runCli, spawnCli, waitForOutput } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const sdk = clients();
let root = "";
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "troupe-config-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});
afterEach(async () => {
  killCliChildren();
  await sdk.closeAll();
});

/** A fresh folder under the test's root, with `files` (paths relative to it) written. */
let folders = 0;
const project = async (files: Record<string, string>): Promise<string> => {
  const dir = join(root, `p${++folders}`);
  for (const [name, content] of Object.entries(files)) {
    await mkdir(join(dir, name, ".."), { recursive: true });
    await writeFile(join(dir, name), content);
  }
  return dir;
};

const valueOf = (config: TroupeConfig, key: ConfigKey) => config.values.find((v) => v.key === key);
const thrown = (f: () => unknown): unknown => {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("expected an error");
};

describe("loadConfig", () => {
  it("finds the nearest config file upward, YAML or JSON, and resolves its paths from its own folder", async () => {
    const dir = await project({
      "troupe.config.yaml": "connection:\n  servers: nats://a:4222, nats://b:4222\n  credentials: secrets/app.creds\nworker:\n  module: ./tasks.js\n  concurrency: 3\n",
      "svc/troupe.config.json": JSON.stringify({ worker: { concurrency: 5 } }),
      "deep/er/still/.keep": "",
      // In one folder, .json is looked for before .yaml and .yml.
      "both/troupe.config.json": JSON.stringify({ layout: { replicas: 3 } }),
      "both/troupe.config.yml": "layout:\n  replicas: 5\n",
    });
    const deep = loadConfig({ cwd: join(dir, "deep/er/still"), env: {} });
    expect(deep.file).toBe(join(dir, "troupe.config.yaml"));
    expect(deep.connection).toMatchObject({ servers: ["nats://a:4222", "nats://b:4222"], credentials: join(dir, "secrets/app.creds") });
    expect(deep.worker).toMatchObject({ module: join(dir, "tasks.js"), concurrency: 3 });
    expect(valueOf(deep, "worker.concurrency")?.source).toBe("file ../../../troupe.config.yaml");

    const svc = loadConfig({ cwd: join(dir, "svc"), env: {} });
    expect(svc.file).toBe(join(dir, "svc/troupe.config.json"));
    expect(svc.worker.concurrency).toBe(5);
    expect(svc.worker.module).toBeUndefined();
    expect(valueOf(svc, "worker.concurrency")?.source).toBe("file troupe.config.json");

    expect(loadConfig({ cwd: join(dir, "both"), env: {} }).connection.replicas).toBe(3);
    // TROUPE_CONFIG names another file; the search does not happen.
    expect(loadConfig({ cwd: join(dir, "svc"), env: { TROUPE_CONFIG: "../both/troupe.config.yml" } }).connection.replicas).toBe(5);
  });

  it("flag over env over file over default, each value with its source; durations and secrets", async () => {
    const dir = await project({
      "troupe.config.yml": [
        "connection: { servers: nats://file:4222, user: app, pass: from-file, name: billing }",
        "layout: { replicas: 3, eventsMaxAge: 2d }",
        "retention: { completed: 1d, failed: 3 days }",
        "worker: { concurrency: 2, stopTimeout: 10s, disconnectTimeout: false, isolation: thread, executors: 4, gracePeriod: 2s }",
        "metrics: { port: 9464 }",
        "rpc: { timeout: 5s }",
        "log: { level: debug }",
      ].join("\n"),
    });
    const env = { NATS_URL: "nats://nats-url:4222", TROUPE_CONCURRENCY: "3", TROUPE_STOP_TIMEOUT: "1m", TROUPE_TOKEN: "s3cret", TROUPE_RETENTION_FAILED: "86400000" };
    const config = loadConfig({
      cwd: dir,
      env,
      overrides: [
        { key: "worker.stopTimeout", text: "2m", source: "flag --stop-timeout" },
        { key: "connection.pass", text: "from-flag", source: "flag --password" },
      ],
    });
    expect(config.connection).toEqual({
      servers: ["nats://nats-url:4222"],
      user: "app",
      pass: "from-flag",
      token: "s3cret",
      name: "billing",
      replicas: 3,
      eventsMaxAge: 2 * 86_400_000,
      retention: { completed: 86_400_000, failed: 86_400_000 },
    });
    expect(config.worker).toEqual({
      concurrency: 3,
      isolation: "thread",
      executors: 4,
      gracePeriod: 2_000,
      disconnectTimeout: false,
      metrics: { port: 9464 },
      rpc: { timeout: 5_000 },
    });
    expect(config.rpc).toEqual({ timeout: 5_000 });
    expect(config.stop).toEqual({ timeout: 120_000 });
    expect(config.metrics).toEqual({ port: 9464 });
    expect(config.logLevel).toBe("debug");
    const sources = Object.fromEntries(config.values.map((v) => [v.key, v.source]));
    expect(sources).toMatchObject({
      "connection.servers": "env NATS_URL",
      "connection.user": "file troupe.config.yml",
      "connection.pass": "flag --password",
      "connection.token": "env TROUPE_TOKEN",
      "worker.concurrency": "env TROUPE_CONCURRENCY",
      "worker.stopTimeout": "flag --stop-timeout",
      "retention.failed": "env TROUPE_RETENTION_FAILED",
      "retention.cancelled": "default",
      "worker.pullExpires": "default",
    });
    expect(valueOf(config, "connection.pass")?.value).toBe("****");
    expect(valueOf(config, "connection.token")?.value).toBe("****");
    expect(valueOf(config, "worker.pullExpires")).toMatchObject({ value: 5_000, shown: "5s" });
    // TROUPE_SERVERS goes before NATS_URL.
    expect(loadConfig({ cwd: dir, env: { ...env, TROUPE_SERVERS: "nats://t:1" } }).connection.servers).toEqual(["nats://t:1"]);
    // Without isolation, the pool's settings are not passed to the worker.
    expect(loadConfig({ cwd: dir, env: { TROUPE_ISOLATION: "none", TROUPE_RPC: "false" } }).worker).toEqual({
      concurrency: 2,
      disconnectTimeout: false,
      metrics: { port: 9464 },
      rpc: false,
    });
  });

  it("a bad value or an unknown key is InvalidOption naming the file or variable and the key", async () => {
    const dir = await project({
      "bad.yaml": "worker:\n  concurrency: x\n",
      "typo.json": JSON.stringify({ worker: { concurency: 2 } }),
      "section.yaml": "connection:\n  tls: { ca: ./ca.pem }\n",
      "broken.yaml": "worker: [unclosed\n",
    });
    const error = (file: string | undefined, env: Record<string, string> = {}) => thrown(() => loadConfig({ cwd: dir, env, ...(file === undefined ? {} : { file }) }));
    const bad = error("bad.yaml");
    expect(bad).toBeInstanceOf(InvalidOption);
    expect((bad as InvalidOption).message).toBe('bad.yaml: worker.concurrency must be a positive integer, got "x"');
    expect((error("typo.json") as InvalidOption).message).toMatch(/^typo\.json: unknown key "worker\.concurency" \(keys of worker: module, id, concurrency, /);
    expect((error("section.yaml") as InvalidOption).message).toMatch(/^section\.yaml: unknown key "connection\.tls\.ca" \(keys of connection\.tls: caFile, certFile, keyFile\)$/);
    expect((error("broken.yaml") as InvalidOption).message).toMatch(/^broken\.yaml: not valid YAML: /);
    expect((error("missing.yaml") as InvalidOption).message).toBe("file: no config file missing.yaml");
    expect((error(undefined, { TROUPE_GRACE: "soon" }) as InvalidOption).message).toMatch(/^TROUPE_GRACE: worker\.gracePeriod must be a duration .*, got "soon"$/);
    // An empty variable is an unset one.
    expect(loadConfig({ cwd: dir, env: { TROUPE_PASS: "", TROUPE_CONCURRENCY: "" } }).connection.pass).toBeUndefined();
  });

  // The SDK itself reads no configuration: connect is explicit.
  it("Troupe.connect(loadConfig().connection) connects where the file says", async () => {
    const dir = await project({ "troupe.config.json": JSON.stringify({ connection: { servers: server().url, name: "from-config" } }) });
    const troupe = await Troupe.connect(loadConfig({ cwd: dir, env: {} }).connection);
    try {
      expect(troupe.url).toContain(new URL(server().url).port);
    } finally {
      await troupe.close();
    }
  });
});

describe("troupe config and the verbs", () => {
  it("`troupe config [--json]` from a nested folder: each value, its source, secrets masked", async () => {
    const dir = await project({
      "troupe.config.yaml": "connection:\n  user: app\n  pass: file-secret\nworker:\n  concurrency: 2\n  stopTimeout: 10s\n",
      "src/jobs/.keep": "",
    });
    const cwd = join(dir, "src/jobs");
    const env = { NATS_URL: undefined, TROUPE_CONCURRENCY: "3", TROUPE_STOP_TIMEOUT: "1m", TROUPE_TOKEN: "env-secret" };
    const flags = ["--stop-timeout", "2m", "--password", "flag-secret", "--server", "nats://flag:4222"];
    const [json, text] = await Promise.all([runCli(["config", "--json", ...flags], env, { cwd }), runCli(["config", ...flags], env, { cwd })]);
    expect(json.code).toBe(0);
    const out = JSON.parse(json.stdout) as { file: string; values: Record<string, { value: unknown; source: string }> };
    expect(out.file).toBe(join(dir, "troupe.config.yaml"));
    expect(out.values).toMatchObject({
      "connection.servers": { value: ["nats://flag:4222"], source: "flag --server" },
      "connection.user": { value: "app", source: "file ../../troupe.config.yaml" },
      "connection.pass": { value: "****", source: "flag --password" },
      "connection.token": { value: "****", source: "env TROUPE_TOKEN" },
      "connection.name": { value: "troupe-cli", source: "default" },
      "worker.concurrency": { value: 3, source: "env TROUPE_CONCURRENCY" },
      "worker.stopTimeout": { value: 120_000, source: "flag --stop-timeout" },
      "layout.replicas": { value: 1, source: "default" },
      "connection.credentials": { value: null, source: "default" },
    });
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`config file: ${join(dir, "troupe.config.yaml")}`);
    expect(text.stdout).toMatch(/^worker\.stopTimeout +2m +flag --stop-timeout$/m);
    expect(text.stdout).toMatch(/^connection\.pass +\*{4} +flag --password$/m);
    for (const secret of ["file-secret", "flag-secret", "env-secret"]) expect(json.stdout + text.stdout).not.toContain(secret);
  }, 120_000);

  it("every verb goes through it: a bad value or an unknown key exits 1 with one clear line; a bad flag value is a usage mistake", async () => {
    const dir = await project({
      "troupe.config.json": JSON.stringify({ connection: { servers: server().url }, worker: { concurency: 2 } }),
      "bad/troupe.config.yaml": "worker:\n  concurrency: x\n",
      "good/troupe.config.yaml": `connection:\n  servers: ${server().url}\n`,
    });
    const env = { NATS_URL: undefined };
    const [unknown, bad, variable, flag] = await Promise.all([
      runCli(["workers"], env, { cwd: dir }),
      runCli(["config"], env, { cwd: join(dir, "bad") }),
      runCli(["get", "some-id"], { ...env, TROUPE_REPLICAS: "zero" }, { cwd: join(dir, "good") }),
      runCli(["config", "--config", "good/troupe.config.yaml", "--concurrency", "0"], env, { cwd: dir }),
    ]);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout).toBe("");
    expect(unknown.stderr).toMatch(/^troupe workers: InvalidOption: troupe\.config\.json: unknown key "worker\.concurency" \(keys of worker: [^\n]*\)\n$/);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('troupe config: InvalidOption: troupe.config.yaml: worker.concurrency must be a positive integer, got "x"\n');
    expect(variable.code).toBe(1);
    expect(variable.stderr).toBe('troupe get: InvalidOption: TROUPE_REPLICAS: layout.replicas must be a positive integer, got "zero"\n');
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('troupe config: UsageError: flag --concurrency: worker.concurrency must be a positive integer, got "0"');
  }, 120_000);

  it("a verb that falls back to the default server says so on stderr, and what layout mode it creates in", async () => {
    const dir = await project({ "empty/.keep": "" });
    const cwd = join(dir, "empty");
    const quiet = loadConfig({ cwd, env: {} });
    expect(fallbackNotice(quiet)).toBe(
      "no NATS server given (--server, NATS_URL, connection.servers of a config file, or a `troupe dev` in this folder); using nats://127.0.0.1:4222, creating the Troupe layout there if it is missing (layout mode create)",
    );
    expect(fallbackNotice(loadConfig({ cwd, env: { NATS_URL: server().url } }))).toBeUndefined();
    const unset = { NATS_URL: undefined, TROUPE_SERVERS: undefined, TROUPE_CONFIG: undefined };
    // Layout mode verify, so that whatever listens on the default port is only read.
    const [fellBack, named] = await Promise.all([
      runCli(["get", "some-id", "--connect-timeout", "1s"], { ...unset, TROUPE_LAYOUT: "verify" }, { cwd }),
      runCli(["get", "some-id"], { ...unset, NATS_URL: server().url }, { cwd }),
    ]);
    expect(fellBack.stderr.split("\n")[0]).toBe(
      "troupe get: no NATS server given (--server, NATS_URL, connection.servers of a config file, or a `troupe dev` in this folder); using nats://127.0.0.1:4222",
    );
    expect(named.stderr).toBe("troupe get: TaskNotFound: no task some-id\n");

    // A `.troupe/url` whose `troupe dev` was killed (the file left behind) is not used, and the line says so.
    const gone = spawn(process.execPath, ["-e", ""]);
    const pid = gone.pid!;
    await new Promise((r) => gone.on("close", r));
    await mkdir(join(cwd, ".troupe"), { recursive: true });
    await writeFile(join(cwd, ".troupe", "url"), `nats://127.0.0.1:1\npid ${pid}\n`);
    const stale = await runCli(["get", "some-id", "--connect-timeout", "1s"], { ...unset, TROUPE_LAYOUT: "verify" }, { cwd });
    expect(stale.stderr.split("\n")[0]).toBe(
      `troupe get: .troupe/url names the server of a \`troupe dev\` (pid ${pid}) that no longer runs: not using it (start \`troupe dev\` again); ` +
        "no NATS server given (--server, NATS_URL, connection.servers of a config file, or a `troupe dev` in this folder); using nats://127.0.0.1:4222",
    );
  }, 120_000);

  it("a worker started from a config file alone (servers, module, concurrency, log level) serves tasks", async () => {
    const fixture = resolve("test/fixtures/tasks.ts");
    const dir = await project({ "deploy/.keep": "" });
    // The module's path is relative to the file's folder.
    await writeFile(
      join(dir, "troupe.config.yaml"),
      `connection:\n  servers: ${server().url}\n  name: config-worker\nworker:\n  module: ${relative(dir, fixture)}\n  concurrency: 3\nlog:\n  level: info\n`,
    );
    const worker = spawnCli(["worker"], { NATS_URL: undefined, TROUPE_LOG_LEVEL: undefined }, { cwd: join(dir, "deploy") });
    const exited = new Promise<number | null>((r) => worker.on("exit", (code) => r(code)));
    // An info line: log.level comes from the file too.
    const started = JSON.parse(await waitForOutput(worker, /"msg":"worker started"/, 90_000)) as { workerId: string };

    const troupe = await sdk.connect(server());
    const add = untypedTask("math.add");
    const registered = (await troupe.workers(add)).find((w) => w.id === started.workerId);
    expect(registered?.concurrency).toBe(3);
    const run = await troupe.submit(add, { a: 20, b: 22 });
    expect(await run.result({ timeout: "60 seconds" })).toBe(42);

    worker.kill("SIGTERM");
    expect(await exited).toBe(0);
  }, 120_000);
});
