import { afterEach, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { defineTask, defineWorkflow, Schema, Troupe } from "../../src/index.js";
import { killCliChildren, runCli, spawnCli, waitForOutput, type CliResult } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const children: ChildProcess[] = [];
const sdk = clients();
afterEach(async () => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  killCliChildren();
  await sdk.closeAll();
});

describe("troupe CLI", () => {
  it("runs when started through a symlink, as npm installs the `troupe` command", async () => {
    const dir = await mkdtemp(join(tmpdir(), "troupe-bin-"));
    try {
      const link = join(dir, "troupe");
      await symlink(resolve("src/cli/main.ts"), link);
      const out = await new Promise<string>((res) => {
        const child = spawn(process.execPath, ["--import", "tsx", link, "--help"], { stdio: ["ignore", "pipe", "pipe"] });
        let text = "";
        child.stdout.on("data", (d: Buffer) => (text += d.toString()));
        child.on("exit", () => res(text));
      });
      expect(out).toContain("Usage:");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("runs a module's tasks with `troupe worker`, and `submit --wait` / `get` show the record", async () => {
    const env = { NATS_URL: server().url };
    const worker = spawnCli(["worker", "test/fixtures/tasks.ts", "--concurrency", "2"], { TROUPE_LOG_LEVEL: "info", ...env });
    children.push(worker);
    await waitForOutput(worker, /worker started/);

    const waited = await runCli(["submit", "math.add", '{"a":2,"b":40}', "--wait"], env);
    expect(waited.code).toBe(0);
    const record = JSON.parse(waited.stdout) as { id: string; status: string; output: number };
    expect(record).toMatchObject({ status: "COMPLETED", output: 42 });

    const got = await runCli(["get", record.id], env);
    expect(got.code).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ id: record.id, task: "math.add", status: "COMPLETED" });

    const id = await runCli(["submit", "text.upper", '{"text":"abc"}', "--server", server().url]);
    expect(id.stdout.trim()).toMatch(/^[A-Za-z0-9]+$/);

    // SIGTERM: the worker stops gracefully and exits 0.
    const exited = new Promise<number | null>((r) => worker.on("exit", (code) => r(code)));
    worker.kill("SIGTERM");
    expect(await exited).toBe(0);
  }, 90_000);

  it("runs a YAML workflow with `troupe workflow run --watch` on a worker and a coordinator process", async () => {
    const env = { NATS_URL: server().url };
    const worker = spawnCli(["worker", "test/fixtures/tasks.ts", "--concurrency", "4"], { TROUPE_LOG_LEVEL: "info", ...env });
    const coordinator = spawnCli(["coordinator"], { TROUPE_LOG_LEVEL: "info", ...env });
    children.push(worker, coordinator);
    await Promise.all([waitForOutput(worker, /worker started/), waitForOutput(coordinator, /coordinator started/)]);

    const run = await runCli(["workflow", "run", "test/fixtures/diamond.yaml", "--input", '{"x":1}', "--watch"], env);
    expect(run.code).toBe(0);
    const record = JSON.parse(run.stdout) as { id: string; status: string; steps: Record<string, { output: number }> };
    expect(record.status).toBe("COMPLETED");
    expect(record.steps.d?.output).toBe(114);
    expect(run.stderr).toContain("steps");
    const got = await runCli(["workflow", "get", record.id], env);
    expect(JSON.parse(got.stdout)).toMatchObject({ id: record.id, workflow: "math.diamond", status: "COMPLETED" });

    const bad = await runCli(["workflow", "run", "test/fixtures/tasks.ts"], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("not valid JSON");
  }, 90_000);

  it("validates input at the boundary when given the module, and says so clearly", async () => {
    const env = { NATS_URL: server().url };
    const bad = await runCli(["submit", "math.add", '{"a":1}', "--module", "test/fixtures/tasks.ts"], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("InvalidInput");
    expect(bad.stderr).toContain('["b"]');
    const notJson = await runCli(["submit", "math.add", "{nope"], env);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain("not JSON");
    const missing = await runCli(["get", "no-such-id"], env);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe("troupe get: TaskNotFound: no task no-such-id\n");
    const unknown = await runCli(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
  }, 60_000);

  it("submit --wait --timeout on a task no worker serves: a warning at once, then ResultTimeout and exit 1", async () => {
    const env = { NATS_URL: server().url };
    const result = await runCli(["submit", "no.such.task", "{}", "--wait", "--timeout", "1s"], env);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    // The warning first, as the wait begins; the timeout's error line last.
    const lines = result.stderr.trim().split("\n");
    expect(lines[0]).toMatch(/^troupe submit: warning: no live worker serves task "no\.such\.task"/);
    expect(lines.at(-1)).toMatch(/^troupe submit: ResultTimeout: .*1000 ms/);

    const noWait = await runCli(["submit", "no.such.task", "{}"], env);
    expect(noWait.code).toBe(0);
    expect(noWait.stdout.trim()).toMatch(/^[A-Za-z0-9]+$/);
    expect(noWait.stderr).toContain('warning: no live worker serves task "no.such.task"');
  }, 60_000);

  it("workflow run --watch --timeout on a workflow whose step task no worker serves: a warning, then exit 1", async () => {
    const result = await runCli(["workflow", "run", "test/fixtures/unserved.yaml", "--watch", "--timeout", "2s"], { NATS_URL: server().url });
    expect(result.code).toBe(1);
    const lines = result.stderr.trim().split("\n");
    expect(lines[0]).toMatch(/^troupe workflow run: warning: no live worker serves task "test\.no-worker\.step"/);
    expect(lines.at(-1)).toMatch(/^troupe workflow run: ResultTimeout: .*2000 ms/);
  }, 60_000);

  it("workflow run checks the input against the document's declaration and its ${input...} references, before anything is written", async () => {
    const env = { NATS_URL: server().url };
    const [typed, missing] = await Promise.all([
      runCli(["workflow", "run", "test/fixtures/typed-input.yaml", "--input", '{"x":"one"}'], env),
      runCli(["workflow", "run", "test/fixtures/missing-input.yaml", "--input", "{}"], env),
    ]);
    expect(typed.code).toBe(1);
    expect(typed.stdout).toBe("");
    expect(typed.stderr).toMatch(/^troupe workflow run: InvalidInput: /);
    expect(typed.stderr).toContain('["x"]');
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe("");
    expect(missing.stderr).toMatch(/^troupe workflow run: InvalidInput: /);
    expect(missing.stderr).toContain("${input.y}");
    // No warning about unserved steps: nothing was started.
    expect(typed.stderr + missing.stderr).not.toContain("warning");
  }, 60_000);

  it("says a usage mistake in one line and a hint, without the usage text, exit 2", async () => {
    const env = { NATS_URL: server().url };
    const mistakes = await Promise.all([
      runCli(["workflow", "run", "test/fixtures/tasks.ts"], env),
      runCli(["submit", "math.add", "{}", "--module", "test/fixtures/tasks.ts", "--queue", "x"], env),
      runCli(["--frobnicate"], env),
      runCli(["submit"], env),
    ]);
    for (const mistake of mistakes) {
      expect(mistake.code).toBe(2);
      expect(mistake.stdout).toBe("");
      expect(mistake.stderr).not.toContain("Usage:");
      const lines = mistake.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/^troupe( \w+)*: UsageError: /);
      expect(lines[1]).toBe("Run `troupe --help` for usage.");
    }
    expect(mistakes[0]!.stderr).toContain("not valid JSON");
    expect(mistakes[1]!.stderr).toContain('--queue "x"');
    expect(mistakes[2]!.stderr).toContain("--frobnicate");
    // The verb once, then the tag: the message does not name the verb again.
    expect(mistakes[3]!.stderr.split("\n")[0]).toBe("troupe submit: UsageError: needs a task name");
  }, 60_000);

  it("workflow cancel, twice: cancelled and exit 0, then one line saying it already ended and exit 1, as cancel does", async () => {
    const env = { NATS_URL: server().url };
    const troupe = await sdk.connect(server());
    const unserved = defineTask({ name: "test.no-worker.cancel", input: Schema.Struct({}), output: Schema.Void, handler: async () => undefined });
    const flow = defineWorkflow({ name: "test.cancel-twice", input: Schema.Struct({}), steps: { only: { task: unserved, input: {} } } });
    const run = await troupe.start(flow, {});
    const task = await troupe.submit(unserved, {});

    const oneLine = (r: CliResult) => {
      const text = r.stdout.trim();
      expect(text.split("\n")).toHaveLength(1);
      expect(() => JSON.parse(text)).toThrow();
      return text;
    };
    for (const [verb, id] of [
      [["workflow", "cancel"], run.id],
      [["cancel"], task.id],
    ] as const) {
      const first = await runCli([...verb, id], env);
      expect(first.code).toBe(0);
      expect(oneLine(first)).toContain("cancelled");
      const second = await runCli([...verb, id], env);
      expect(second.code).toBe(1);
      expect(oneLine(second)).toMatch(/already ended CANCELLED/);
    }
    expect((await troupe.getWorkflow(run.id))?.status).toBe("CANCELLED");
    expect((await troupe.get(task.id))?.status).toBe("CANCELLED");
  }, 60_000);

  it("`troupe dev` writes its URL to .troupe/url, where the other verbs of its directory find it, and removes it on Ctrl-C", async () => {
    const dir = await mkdtemp(join(tmpdir(), "troupe-dev-cli-"));
    const urlFile = join(dir, ".troupe", "url");
    // Whatever NATS_URL this process has, the children must not see it.
    const noUrl = { NATS_URL: undefined };
    const dev = spawnCli(["dev", "--store", join(dir, "nats"), "--ui-port", "0"], noUrl, { cwd: dir });
    const devExited = outcome(dev);
    try {
      const banner = await waitForOutput(dev, /^troupe dev: nats-server with JetStream at nats:/);
      const [url = "", pid] = (await readFile(urlFile, "utf8")).split("\n");
      expect(banner).toContain(` at ${url} `);
      expect(pid).toBe(`pid ${dev.pid}`);

      const [missing, submitted] = await Promise.all([
        runCli(["get", "no-such-id"], noUrl, { cwd: dir }),
        runCli(["submit", "no.such.task", "{}"], noUrl, { cwd: dir }),
      ]);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain("no task no-such-id");
      // The task is on dev's server, not on another one the default URL may reach.
      expect(submitted.code).toBe(0);
      const id = submitted.stdout.trim();
      const troupe = await Troupe.connect({ servers: url });
      try {
        expect((await troupe.get(id))?.status).toBe("QUEUED");
      } finally {
        await troupe.close();
      }

      dev.kill("SIGINT");
      expect((await devExited).code).toBe(0);
      expect(existsSync(urlFile)).toBe(false);
    } finally {
      if (dev.exitCode === null && dev.signalCode === null) {
        // SIGINT stops dev's nats-server with it; SIGKILL only if it does not stop.
        dev.kill("SIGINT");
        const timer = setTimeout(() => dev.kill("SIGKILL"), 15_000);
        await devExited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

/** A child's whole output and exit code, once it has exited and its output is read. */
const outcome = (child: ChildProcess): Promise<CliResult> =>
  new Promise((res) => {
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => res({ code, stdout, stderr }));
  });
