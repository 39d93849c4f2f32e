/**
 * Troupe inside someone's program keeps quiet: at the default level a run of 100 tasks, some
 * retried and one cancelled while queued, writes nothing to the program's stdout but what it
 * prints, and no log line at all; at `info` its lines go to stderr, a retry without its stack
 * and the cancel as a cancel, not a lost lease. A handler's `ctx.log.info` line reaches
 * TROUPE_LOGS at either level.
 */
import { afterEach, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Troupe } from "../../src/index.js";
import { useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const root = resolve(import.meta.dirname, "../..");
const sdkUrl = pathToFileURL(resolve(root, "src/index.ts")).href;
const internalsUrl = pathToFileURL(resolve(root, "src/internals.ts")).href;
const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/** 100 tasks on one worker; every third fails its first attempt and is retried; the last is cancelled while queued. */
const script = `
import { defineTask, Schema, Troupe } from ${JSON.stringify(sdkUrl)};
import { connectionOf, Topology } from ${JSON.stringify(internalsUrl)};

const name = process.env.TASK_NAME;
const flaky = defineTask({
  name,
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  retry: { attempts: 3, backoff: "fixed", delay: 20 },
  handler: async ({ n }, ctx) => {
    if (n % 3 === 0 && ctx.attempt === 1) throw new Error("flaky " + n);
    if (n === 1) ctx.log.info({ n }, "working");
    await new Promise((r) => setTimeout(r, 5));
    return n;
  },
});

const level = process.env.LOG_LEVEL_OPTION;
const troupe = await Troupe.connect({ servers: process.env.NATS_URL, ...(level === undefined ? {} : { logLevel: level }) });
const worker = await troupe.worker({ tasks: [flaky], concurrency: 2 });
const runs = [];
for (let n = 0; n < 100; n++) runs.push(await troupe.submit(flaky, { n }));
const cancelled = runs.pop();
const cancel = await troupe.cancel(cancelled.id);
const outputs = await Promise.all(runs.map((r) => r.result({ timeout: "60 seconds" })));
// The cancelled task's work message is deleted, or reached the worker before (its claim fenced by the cancel): wait until it is settled.
const { jsm } = connectionOf(troupe);
const deadline = Date.now() + 30_000;
for (;;) {
  const info = await jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", name));
  if (info.num_pending + info.num_ack_pending === 0) break;
  if (Date.now() > deadline) throw new Error("the cancelled task's message was never settled");
  await new Promise((r) => setTimeout(r, 50));
}
const retried = (await Promise.all(runs.map((r) => r.get()))).filter((r) => r.attempt > 1).length;
// A handler's info line reaches TROUPE_LOGS whatever the level.
let logged;
for await (const line of troupe.logs({ task: runs[1].id, follow: true, timeout: 20_000 })) {
  logged = line.msg;
  break;
}
await worker.stop();
await troupe.close();
process.stdout.write("RESULT " + JSON.stringify({ sum: outputs.reduce((a, b) => a + b, 0), retried, cancel: cancel.cancelled, id: cancelled.id, logged }) + "\\n");
`;

interface Ended {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run the script with `env` over this process's, TROUPE_LOG_LEVEL removed (vitest sets it). */
const runScript = async (env: Record<string, string>): Promise<Ended> => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-quiet-"));
  dirs.push(dir);
  const file = join(dir, "script.mts");
  await writeFile(file, script);
  const merged: Record<string, string | undefined> = { ...process.env, NATS_URL: server().url, ...env };
  delete merged.TROUPE_LOG_LEVEL;
  const child = spawn(process.execPath, ["--import", tsx, file], { cwd: dir, env: merged, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise<Ended>((res) => {
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    // A safety net only: a script that does not exit is killed, and the test says so.
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
};

/** The JSON log lines among a stream's lines. */
const logLines = (text: string): Array<Record<string, unknown>> =>
  text
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** The script's one RESULT line, which must be all of its stdout. */
const result = (ended: Ended) => {
  expect(ended.code, ended.stderr).toBe(0);
  expect(ended.stdout.split("\n").filter((l) => l !== "")).toHaveLength(1);
  expect(ended.stdout).toMatch(/^RESULT \{.*\}\n$/);
  const out = JSON.parse(ended.stdout.slice("RESULT ".length)) as { sum: number; retried: number; cancel: boolean; id: string };
  // 0..98; 0, 3, ..., 96 were retried.
  expect(out).toMatchObject({ sum: (98 * 99) / 2, retried: 33, cancel: true, logged: "working" });
  return out;
};

describe("logs of a library inside a program", () => {
  it("at the default level: stdout holds only what the program printed, and retries and a cancel log nothing", async () => {
    const ended = await runScript({ TASK_NAME: "quiet.default" });
    result(ended);
    expect(logLines(ended.stderr)).toEqual([]);
  }, 120_000);

  it("at logLevel info: lines on stderr, a retry without its stack, the queued task's cancel as a cancel, no warning", async () => {
    const ended = await runScript({ TASK_NAME: "quiet.info", LOG_LEVEL_OPTION: "info" });
    const { id } = result(ended);
    const lines = logLines(ended.stderr);
    const retries = lines.filter((l) => l.msg === "attempt failed; retry scheduled");
    expect(retries).toHaveLength(33);
    for (const r of retries) {
      expect(r.level).toBe(30);
      expect(r.error).toEqual({ _tag: "Execution", message: expect.stringMatching(/^flaky \d+$/) });
    }
    // Cancelled while queued, its work message is deleted; a worker that took it before hears a cancel, not a lost lease.
    const ofCancelled = lines.filter((l) => l.taskId === id).map((l) => [l.level, l.msg]);
    expect(ofCancelled.length).toBeLessThanOrEqual(1);
    for (const line of ofCancelled) expect(line).toEqual([30, "task cancelled; this attempt's outcome is discarded"]);
    expect(lines.filter((l) => typeof l.msg === "string" && l.msg.includes("lost its lease"))).toEqual([]);
    expect(lines.filter((l) => (l.level as number) >= 40)).toEqual([]);
  }, 120_000);

  it("a level that is none is InvalidOption naming where it came from, before anything connects", async () => {
    const bad = await Troupe.connect({ servers: server().url, logLevel: "loud" as never }).catch((e: unknown) => e);
    if (bad instanceof Troupe) await bad.close();
    expect(bad).toMatchObject({ _tag: "InvalidOption", message: expect.stringContaining('logLevel must be one of fatal, error, warn, info, debug, trace, silent, got "loud"') });
    const before = process.env.TROUPE_LOG_LEVEL;
    process.env.TROUPE_LOG_LEVEL = "chatty";
    try {
      const fromEnv = await Troupe.connect({ servers: server().url }).catch((e: unknown) => e);
      if (fromEnv instanceof Troupe) await fromEnv.close();
      expect(fromEnv).toMatchObject({ _tag: "InvalidOption", message: expect.stringContaining('TROUPE_LOG_LEVEL must be one of') });
    } finally {
      if (before === undefined) delete process.env.TROUPE_LOG_LEVEL;
      else process.env.TROUPE_LOG_LEVEL = before;
    }
  });
});
