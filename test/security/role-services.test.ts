// Every verb and service under the role it is meant to run with, against a server that has
// only the users `troupe auth init` wrote: the gateway, the scheduler, logs (and --follow),
// ls, stats, history, workers, retry, cancel, pause/resume and the inspector's API. And a role
// without the right is refused by the server, in one line.
import type { ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineTask, Schema, Troupe } from "../../src/index.js";
import { NatsServer } from "../../src/testing/index.js";
import { connectionOf } from "../../src/sdk/troupe.js";
import type { Role } from "../../src/nats/roles.js";
import { setupLayout } from "../../src/nats/setup.js";
import { RPC_SERVICE, RPC_SUBJECT } from "../../src/nats/topology.js";
import { killCliChildren, runCli, spawnCli, waitForOutput } from "../helpers/cli.js";

const shout = defineTask({
  name: "rolesvc.shout",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }, ctx) => {
    ctx.log.info({ text }, "shouting");
    return `${text.toUpperCase()}!`;
  },
});

/** Fails until `flaky.allow` is set: a FAILED task to retry. */
const flakyState = { allow: false };
const flaky = defineTask({
  name: "rolesvc.flaky",
  input: Schema.Struct({}),
  output: Schema.String,
  handler: async () => {
    if (!flakyState.allow) throw new Error("not yet");
    return "ok";
  },
});

/** Runs until cancelled. */
const forever = defineTask({
  name: "rolesvc.forever",
  input: Schema.Struct({}),
  output: Schema.String,
  handler: (_input, ctx) =>
    new Promise<string>((_resolve, reject) => {
      ctx.signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true });
    }),
});

/** Paused and resumed. */
const later = defineTask({
  name: "rolesvc.later",
  input: Schema.Struct({}),
  output: Schema.String,
  handler: async () => "later",
});

let dir: string;
let server: NatsServer;
const open: Troupe[] = [];
const children: ChildProcess[] = [];

const roleFile = (role: Role) => join(dir, `${role}.json`);
const roleOptions = async (role: Role) => ({ servers: server.url, ...(JSON.parse(await readFile(roleFile(role), "utf8")) as object) });
const asRole = async (role: Role, level = "silent"): Promise<Troupe> => {
  // The worker's own lines go into nothing; handlers' lines at "info" and above reach TROUPE_LOGS whatever its level.
  const t = await Troupe.connect({ ...(await roleOptions(role)), logger: pino({ level }, new Writable({ write: (_c, _e, done) => done() })) });
  open.push(t);
  return t;
};
const withAuth = (args: string[], role: Role) => [...args, "--server", server.url, "--auth", roleFile(role)];
const cli = (args: string[], role: Role) => runCli(withAuth(args, role), { NATS_URL: undefined }, { cwd: dir });
/** A long-running verb; its output collected; stopped in afterAll if still running. */
const spawnAs = (args: string[], role: Role) => {
  const child = spawnCli(withAuth(args, role), { NATS_URL: undefined }, { cwd: dir });
  children.push(child);
  const out = { stdout: "", stderr: "" };
  child.stdout?.on("data", (d: Buffer) => (out.stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out.stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, out, exited };
};

/** Polls `probe` until it returns a value other than undefined. */
const until = async <T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 60_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
};

/** The one-line refusal the CLI prints for a permission the role lacks. */
const REFUSED = /^troupe \S+( \S+)?: PermissionDenied: permission denied: the server refused publish to "[^"]+" for this identity/;

let client: Troupe;
let done: { id: string };
let failed: { id: string };
/** A task that runs until cancelled. */
let running: { id: string };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "troupe-role-services-"));
  const init = await runCli(["auth", "init", dir], {}, { cwd: dir });
  expect(init.code, init.stderr).toBe(0);
  // `include` is relative to the including file, which NatsServer writes in a fresh folder of the temp dir.
  server = await NatsServer.start({ config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), join(dir, "auth.conf")))}` });
  const setup = await setupLayout(await roleOptions("admin"));
  expect(setup.drift).toEqual([]);
  // The worker answers no RPC itself (it still advertises its methods): the gateway must.
  await (await asRole("worker", "info")).worker({ tasks: [shout, flaky, forever, later], concurrency: 4, rpc: false });
  client = await asRole("client");
  const run = await client.submit(shout, { text: "records" });
  expect(await run.result({ timeout: 60_000 })).toBe("RECORDS!");
  done = { id: run.id };
  const bad = await client.submit(flaky, {});
  await expect(bad.result({ timeout: 60_000 })).rejects.toThrow("not yet");
  failed = { id: bad.id };
}, 120_000);

afterAll(async () => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGTERM");
  await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : undefined)));
  killCliChildren();
  await Promise.all(open.splice(0).map((t) => t.close()));
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}, 60_000);

describe("each verb and service under its role", () => {
  it("the inspector role reads: get, ls, stats, history, workers, logs, schedule ls, pause (list)", async () => {
    const [get, ls, stats, history, workers, logs, schedules, paused] = await Promise.all([
      cli(["get", done.id], "inspector"),
      cli(["ls", "--json", "--task", shout.name], "inspector"),
      cli(["stats", "--json"], "inspector"),
      cli(["history", done.id, "--json"], "inspector"),
      cli(["workers", "--json"], "inspector"),
      cli(["logs", "--task", done.id], "inspector"),
      cli(["schedule", "ls"], "inspector"),
      cli(["pause"], "inspector"),
    ]);
    expect(get.code, get.stderr).toBe(0);
    expect(JSON.parse(get.stdout)).toMatchObject({ id: done.id, status: "COMPLETED", output: "RECORDS!" });
    expect(ls.code, ls.stderr).toBe(0);
    expect((JSON.parse(ls.stdout) as { tasks: Array<{ id: string; status: string }> }).tasks).toContainEqual(expect.objectContaining({ id: done.id, status: "COMPLETED" }));
    expect(stats.code, stats.stderr).toBe(0);
    expect(stats.stdout).toContain(shout.name);
    expect(history.code, history.stderr).toBe(0);
    expect((JSON.parse(history.stdout) as Array<{ event: string }>).map((e) => e.event)).toContain("completed");
    expect(workers.code, workers.stderr).toBe(0);
    expect((JSON.parse(workers.stdout) as Array<{ tasks: Array<{ name: string }> }>)[0]?.tasks.map((t) => t.name)).toContain(shout.name);
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toContain('"shouting"');
    expect(schedules.code, schedules.stderr).toBe(0);
    expect(paused.code, paused.stderr).toBe(0);
    expect(paused.stdout).toContain("nothing is paused");
  }, 120_000);

  it("troupe logs --follow (inspector role) prints the stored lines, then new ones as they come", async () => {
    const follow = spawnAs(["logs", "--follow"], "inspector");
    await waitForOutput(follow.child, new RegExp(done.id), 60_000);
    const run = await client.submit(shout, { text: "followed" });
    await waitForOutput(follow.child, new RegExp(run.id), 60_000);
    expect(follow.out.stdout).toContain('"followed"');
    follow.child.kill("SIGTERM");
    expect(await follow.exited, follow.out.stderr).toBe(0);
    expect(follow.out.stderr).toBe("");
  }, 120_000);

  it("the inspector role cannot submit, retry, cancel, pause or schedule: the server refuses, one line each", async () => {
    const run = await client.submit(forever, {});
    running = { id: run.id };
    await until(async () => ((await client.get(run.id))?.status === "RUNNING" ? true : undefined), "the forever task to run");
    const results = await Promise.all([
      cli(["submit", shout.name, '{"text":"no"}'], "inspector"),
      cli(["retry", failed.id], "inspector"),
      cli(["cancel", run.id], "inspector"),
      cli(["pause", later.name], "inspector"),
      cli(["schedule", "add", "nope", shout.name, '{"text":"no"}', "--every", "1h"], "inspector"),
    ]);
    for (const r of results) {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(REFUSED);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
    expect((await client.get(failed.id))?.status).toBe("FAILED");
    expect((await client.get(run.id))?.status).toBe("RUNNING");
    expect(await client.paused()).toEqual([]);
    expect((await client.schedules()).map((s) => s.id)).not.toContain("nope");
  }, 120_000);

  it("the operator role retries, cancels, pauses and resumes", async () => {
    flakyState.allow = true;
    const [retry, cancel, pause] = await Promise.all([
      cli(["retry", failed.id, "--wait", "--timeout", "60s"], "operator"),
      cli(["cancel", running.id, "--reason", "enough"], "operator"),
      cli(["pause", later.name, "--reason", "maintenance"], "operator"),
    ]);
    expect(retry.code, retry.stderr).toBe(0);
    expect(retry.stdout).toContain(`task ${failed.id} queued again`);
    expect(retry.stdout).toContain('"status": "COMPLETED"');
    expect(cancel.code, cancel.stderr).toBe(0);
    await until(async () => ((await client.get(running.id))?.status === "CANCELLED" ? true : undefined), "the forever task to be cancelled");
    expect(pause.code, pause.stderr).toBe(0);
    expect(await client.paused()).toContainEqual(expect.objectContaining({ task: later.name, reason: "maintenance" }));

    // The worker sees the pause (its stats say so), so a task of the type waits queued until resumed.
    await until(async () => ((await client.workerStats()).some((w) => (w.paused ?? []).some((p) => p.includes(later.name))) ? true : undefined), "the worker to see the pause");
    const waiting = await client.submit(later, {});
    expect((await client.get(waiting.id))?.status).toBe("QUEUED");
    const [listed, resume] = await Promise.all([cli(["pause"], "client"), cli(["resume", later.name], "operator")]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(resume.code, resume.stderr).toBe(0);
    expect(resume.stdout).toContain(`resumed ${later.name}`);
    expect(await waiting.result({ timeout: 60_000 })).toBe("later");
  }, 180_000);

  it("troupe scheduler (coordinator role) fires a schedule the operator role added", async () => {
    const scheduler = spawnAs(["scheduler"], "coordinator");
    const add = await cli(["schedule", "add", "every-second", shout.name, '{"text":"tick"}', "--every", "1s"], "operator");
    expect(add.code, add.stderr).toBe(0);
    const fired = await until(async () => {
      const page = await client.list({ task: shout.name, status: "COMPLETED", limit: 50 });
      return page.tasks.find((t) => t.id.startsWith("every-second-"));
    }, "a task of the schedule to complete", 90_000);
    expect(fired.output).toBe("TICK!");
    const ls = await cli(["schedule", "ls"], "inspector");
    const rm = await cli(["schedule", "rm", "every-second"], "operator");
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(/^leading scheduler: (?!none)\S+/);
    expect(ls.stdout).toContain("every-second");
    expect(rm.code, rm.stderr).toBe(0);
    expect(scheduler.child.exitCode).toBeNull();
    expect(scheduler.out.stderr).not.toMatch(/permission|denied/i);
    scheduler.child.kill("SIGTERM");
    expect(await scheduler.exited, scheduler.out.stderr).toBe(0);
  }, 180_000);

  it("troupe gateway (gateway role) answers JSON-RPC and its micro service endpoints", async () => {
    const gateway = spawnAs(["gateway", "--timeout", "60s"], "gateway");
    const line = await waitForOutput(gateway.child, /^troupe gateway: JSON-RPC/, 60_000);
    const id = /id (\S+)\)/.exec(line)?.[1];
    expect(id).toBeDefined();
    const nc = connectionOf(client).nc;
    const info = await nc.request(`$SRV.INFO.${RPC_SERVICE}.${id}`, undefined, { timeout: 10_000 });
    expect(info.json<{ id: string }>().id).toBe(id);
    const reply = await nc.request(RPC_SUBJECT, JSON.stringify({ jsonrpc: "2.0", id: 1, method: shout.name, params: { text: "rpc" } }), { timeout: 60_000 });
    expect(reply.json<unknown>()).toEqual({ jsonrpc: "2.0", id: 1, result: "RPC!" });
    expect(gateway.out.stderr).not.toMatch(/permission|denied/i);
    gateway.child.kill("SIGTERM");
    expect(await gateway.exited, gateway.out.stderr).toBe(0);
  }, 120_000);

  it("troupe inspect --actions (inspector role) serves /api/recent, /api/actors and /events with its token; its retry action is refused", async () => {
    const inspect = spawnAs(["inspect", "--ui-port", "0", "--actions"], "inspector");
    const printed = /(http:\/\/\S+)/.exec(await waitForOutput(inspect.child, /^troupe inspect: http/, 60_000))?.[1];
    expect(printed).toBeDefined();
    // The printed address carries this start's token; a program sends it as a bearer token.
    const link = new URL(printed!);
    const url = link.origin;
    const token = link.searchParams.get("token");
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect((await globalThis.fetch(`${url}/api/recent`)).status).toBe(401);
    const fetch = (input: string, init: RequestInit = {}) => globalThis.fetch(input, { ...init, headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${token}` } });
    const recent = (await (await fetch(`${url}/api/recent`)).json()) as Array<{ kind: string; id: string; event: string }>;
    expect(recent).toContainEqual(expect.objectContaining({ kind: "task", id: done.id, event: "completed" }));
    const actor = await fetch(`${url}/api/actors/task/${done.id}`);
    expect(actor.status).toBe(200);
    expect(await actor.json()).toMatchObject({ kind: "task", id: done.id, record: { status: "COMPLETED" } });

    // Live: a transition of a task submitted now reaches /events.
    const abort = new AbortController();
    const events = await fetch(`${url}/events`, { signal: abort.signal });
    const reader = events.body!.getReader();
    let seen = "";
    const first = await reader.read();
    seen += new TextDecoder().decode(first.value);
    const run = await client.submit(shout, { text: "live" });
    const deadline = Date.now() + 60_000;
    while (!seen.includes(`"id":"${run.id}"`) && Date.now() < deadline) {
      const chunk = await reader.read();
      if (chunk.done) break;
      seen += new TextDecoder().decode(chunk.value);
    }
    abort.abort();
    expect(seen).toContain(`"id":"${run.id}"`);

    // The inspector role writes nothing: the page's retry button is refused by the server.
    flakyState.allow = false;
    const bad = await client.submit(flaky, {});
    await expect(bad.result({ timeout: 60_000 })).rejects.toThrow("not yet");
    const retried = await fetch(`${url}/api/tasks/${bad.id}/retry`, { method: "POST", headers: { "x-troupe-action": "1" } });
    expect(retried.status).toBe(409);
    expect(((await retried.json()) as { error: string }).error).toMatch(/permission denied/);
    expect((await client.get(bad.id))?.status).toBe("FAILED");
    // Its log (JSON lines on stderr) warns of the refused write; nothing else is said of it.
    const said = inspect.out.stderr.split("\n").filter((line) => !line.startsWith("{"));
    expect(said.join("\n")).not.toMatch(/denied|permission/i);
    inspect.child.kill("SIGTERM");
    expect(await inspect.exited, inspect.out.stderr).toBe(0);
  }, 180_000);
});
