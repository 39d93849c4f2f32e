import { afterEach, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runCli, spawnCli, waitForOutput } from "../helpers/cli.js";
import { useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
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
    expect(missing.stderr).toContain("no task no-such-id");
    const unknown = await runCli(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
  }, 60_000);
});
