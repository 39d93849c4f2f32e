/**
 * A user's script that connects, runs a worker, awaits a result, then stops the worker and
 * closes the client leaves nothing running: no timer, no socket, and it exits by itself.
 */
import { afterEach, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const root = resolve(import.meta.dirname, "../..");
const sdkUrl = pathToFileURL(resolve(root, "src/index.ts")).href;
const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const script = `
import { defineTask, Schema, Troupe } from ${JSON.stringify(sdkUrl)};

const double = defineTask({
  name: "exit.double",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }) => n * 2,
});

const troupe = await Troupe.connect({ servers: process.env.NATS_URL });
const worker = await troupe.worker({ tasks: [double] });
const run = await troupe.submit(double, { n: 21 });
const output = await run.result();
await worker.stop();
await troupe.close();
// Two turns of the event loop: a socket destroyed by close() releases its handle in the
// loop's close phase, which comes after the first turn's immediates.
await new Promise((r) => setImmediate(r));
await new Promise((r) => setImmediate(r));
process.stdout.write("RESULT " + JSON.stringify({ output, resources: process.getActiveResourcesInfo() }) + "\\n");
`;

interface Ended {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

describe("a script's exit", () => {
  it("connect, worker, submit, result, stop, close: no timer or socket is left, and the process exits 0 by itself", async () => {
    const dir = await mkdtemp(join(tmpdir(), "troupe-exit-"));
    dirs.push(dir);
    const file = join(dir, "script.mts");
    await writeFile(file, script);
    const env: Record<string, string | undefined> = { ...process.env, NATS_URL: server().url, TROUPE_LOG_LEVEL: "warn" };
    const child = spawn(process.execPath, ["--import", tsx, file], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    const ended = await new Promise<Ended>((res) => {
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      // A safety net only: a script that does not exit is killed, and the test says so.
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      child.on("close", (code, signal) => {
        clearTimeout(timer);
        res({ code, signal, stdout, stderr });
      });
    });
    const line = ended.stdout.split("\n").find((l) => l.startsWith("RESULT "));
    expect(line, `no RESULT line; stdout: ${ended.stdout}; stderr: ${ended.stderr}`).toBeDefined();
    const { output, resources } = JSON.parse(line!.slice("RESULT ".length)) as { output: number; resources: string[] };
    expect(output).toBe(42);
    expect(resources).not.toContain("Timeout");
    expect(resources).not.toContain("TCPSocketWrap");
    expect(resources).not.toContain("TCPWRAP");
    expect(ended).toMatchObject({ code: 0, signal: null });
  }, 60_000);
});
