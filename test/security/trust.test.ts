// A result is taken from the record alone. Forged completions, on a real server with the
// generated roles: on the record's event subject (refused; and were it published, not taken),
// as a work message (not taken for the task's end, not run), and as a workflow step's notice
// (the coordinator settles the step from its task's record, not from the notice).
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Writable } from "node:stream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineTask, defineWorkflow, Schema, Troupe } from "../../src/index.js";
import { NatsServer } from "../../src/testing/index.js";
import { connectionOf } from "../../src/sdk/troupe.js";
import { encodeJson } from "../../src/nats/codec.js";
import { COORDINATOR_CONSUMER, Headers, STEPS_STREAM, workSubject } from "../../src/nats/topology.js";
import type { Role } from "../../src/nats/roles.js";
import { runCli } from "../helpers/cli.js";
import { gates } from "../helpers/handlers.js";

/** Gates a test opens: a `trust.gate` task runs until its gate opens. */
const { gate, opened, openAll } = gates();
const gatedTask = (name: string) =>
  defineTask({
    name,
    input: Schema.Struct({ key: Schema.String }),
    output: Schema.String,
    handler: async ({ key }) => {
      await opened(key);
      return `true ${key}`;
    },
  });
const gated = gatedTask("trust.gate");
/** Served by no worker until the test starts one. */
const unserved = gatedTask("trust.unserved");
const flow = defineWorkflow({
  name: "trust.flow",
  input: Schema.Struct({ key: Schema.String }),
  steps: { a: { task: gated, input: { key: "${input.key}" } } },
});

let dir: string;
let server: NatsServer;
const open: Troupe[] = [];

const asRole = async (role: Role, logger = pino({ level: "silent" })): Promise<Troupe> => {
  const t = await Troupe.connect({ servers: server.url, ...(JSON.parse(await readFile(join(dir, `${role}.json`), "utf8")) as object), logger });
  open.push(t);
  return t;
};

/** Whether `promise` has settled by the time a round trip on each of `troupes` is done (everything sent before is handled). */
const settledYet = async (promise: Promise<unknown>, ...troupes: Troupe[]): Promise<boolean> => {
  let settled = false;
  void promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (const t of troupes) await connectionOf(t).nc.flush();
  await new Promise((r) => setImmediate(r));
  return settled;
};

/** Resolves once `check` holds, polled every 50 ms, for at most `ms`. */
const until = async (check: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> => {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "troupe-trust-"));
  const init = await runCli(["auth", "init", dir], {}, { cwd: dir });
  expect(init.code, init.stderr).toBe(0);
  server = await NatsServer.start({ config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), join(dir, "auth.conf")))}` });
  const setup = await runCli(["setup", "--server", server.url, "--auth", join(dir, "admin.json")], { NATS_URL: undefined }, { cwd: dir });
  expect(setup.code, setup.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  openAll();
  await Promise.all(open.splice(0).map((t) => t.close()));
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("forged completions", () => {
  it("on troupe.events.task.<id>: another client's publish is refused, and a forged write there settles no wait; the waiter gets the true result", async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) });
    const [worker, victim, attacker, admin] = await Promise.all([asRole("worker"), asRole("client"), asRole("client", pino({ level: "warn" }, sink)), asRole("admin")]);
    await worker.worker({ tasks: [gated] });
    const openGate = gate("events");
    const run = await victim.submit(gated, { key: "events" });
    const result = run.result({ timeout: 60_000 });
    await until(async () => (await victim.get(run.id))?.status === "RUNNING");
    // The task's true record, said to have ended with another output: a record any reader would decode.
    const running = (await victim.get(run.id))!;
    const forged = (id: string) => encodeJson({ ...running, id, status: "COMPLETED", output: "forged", finishedAt: new Date().toISOString() });

    // A stolen client credential: the server refuses the publish.
    connectionOf(attacker).nc.publish(`troupe.events.task.${run.id}`, forged(run.id));
    await until(async () => {
      await connectionOf(attacker).nc.flush();
      return lines.some((l) => l.includes("permission denied") && l.includes(`troupe.events.task.${run.id}`));
    });
    // Were one published there (the admin may), neither a write the bucket did not stamp nor another task's record is taken.
    const stamped = natsHeaders();
    stamped.set("Nats-Subject", `$KV.troupe-tasks.${run.id}`);
    connectionOf(admin).nc.publish(`troupe.events.task.${run.id}`, forged(run.id));
    connectionOf(admin).nc.publish(`troupe.events.task.${run.id}`, forged(`${run.id}x`), { headers: stamped });
    expect(await settledYet(result, admin, victim)).toBe(false);

    openGate();
    expect(await result).toBe("true events");
  }, 120_000);

  it("as a work message: a record that says it ended is not the task's end for a wait or a read, and a worker rejects it", async () => {
    const [victim, attacker] = await Promise.all([asRole("client"), asRole("client")]);
    const openGate = gate("work");
    const run = await victim.submit(unserved, { key: "work" });
    const result = run.result({ timeout: 60_000 });
    // No worker serves it yet: the task is read from its work message. The attacker enqueues an ended record under its id.
    const h = natsHeaders();
    h.set(Headers.revision, "0");
    const queued = (await victim.get(run.id))!;
    expect(queued.status).toBe("QUEUED");
    const forgedRecord = { ...queued, status: "COMPLETED", attempt: 1, output: "forged", finishedAt: new Date().toISOString() };
    await connectionOf(attacker).js.publish(workSubject("default", unserved.name, run.id), encodeJson(forgedRecord), { headers: h });
    expect((await victim.get(run.id))?.status).not.toBe("COMPLETED");
    expect(await settledYet(result, victim)).toBe(false);

    // The worker that takes the work runs the true message and rejects the forged one.
    const rejected: string[] = [];
    const sub = connectionOf(victim).nc.subscribe("troupe.events.worker.*.rejected", { callback: (_e, msg) => void rejected.push(msg.string()) });
    await connectionOf(victim).nc.flush();
    const worker = await asRole("worker");
    await worker.worker({ tasks: [unserved], concurrency: 4 });
    await until(() => rejected.some((r) => r.includes("a work message carries a QUEUED record, not COMPLETED")));
    sub.unsubscribe();
    openGate();
    expect(await result).toBe("true work");
    expect(await victim.get(run.id)).toMatchObject({ status: "COMPLETED", output: "true work", attempt: 1 });
  }, 120_000);

  it("as a step's notice from a worker's credential: the coordinator settles the step only from its task's record", async () => {
    const [worker, coordinatorRole, client, attacker, admin] = await Promise.all([asRole("worker"), asRole("coordinator"), asRole("client"), asRole("worker"), asRole("admin")]);
    await worker.worker({ tasks: [gated] });
    await coordinatorRole.coordinator({ reconcileEvery: 0 });
    const openGate = gate("step");
    const run = await client.start(flow, { key: "step" });
    const taskId = `${run.id}-a`;
    await until(async () => (await client.get(taskId))?.status === "RUNNING");

    const jsm = connectionOf(admin).jsm;
    const before = (await jsm.consumers.info(STEPS_STREAM, COORDINATOR_CONSUMER)).delivered.consumer_seq;
    const forged = { id: taskId, task: gated.name, queue: "default", status: "COMPLETED", attempt: 1, output: "forged", notify: `troupe.steps.${run.id}.a` };
    await connectionOf(attacker).js.publish(`troupe.steps.${run.id}.a.${taskId}`, encodeJson(forged));
    // The coordinator has looked at the notice, found the task's record not ended, and handed it back to look again.
    await until(async () => (await jsm.consumers.info(STEPS_STREAM, COORDINATOR_CONSUMER)).delivered.consumer_seq >= before + 2);
    expect((await client.getWorkflow(run.id))?.steps.a).toMatchObject({ status: "RUNNING" });

    openGate();
    expect(await run.result({ timeout: 60_000 })).toEqual({ a: "true step" });
  }, 120_000);
});
