// Attacks with a stolen credential, on a real server with the users `troupe auth init` wrote:
// each is refused by the server, or is harmless and the test shows why.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineTask, Schema, Troupe } from "../../src/index.js";
import { NatsServer } from "../../src/testing/index.js";
import { connectionOf } from "../../src/sdk/troupe.js";
import { PermissionDenied } from "../../src/errors.js";
import { permissionDenied } from "../../src/nats/permissions.js";
import { PAYLOADS_STREAM } from "../../src/nats/layout.js";
import { ROLES, type Role } from "../../src/nats/roles.js";
import { setupLayout } from "../../src/nats/setup.js";
import {
  controlSubject,
  EVENTS_STREAM,
  INDEX_STREAM,
  LEASES_BUCKET,
  LIMITS_BUCKET,
  METHODS_BUCKET,
  OPEN_RUNS_BUCKET,
  PAUSES_BUCKET,
  RPC_QUEUE,
  RPC_SUBJECT,
  SCHEDULES_BUCKET,
  TASKS_BUCKET,
  TASKS_STREAM,
  WORKERS_BUCKET,
  WORKFLOWS_BUCKET,
} from "../../src/nats/topology.js";
import { runCli } from "../helpers/cli.js";

const shout = defineTask({
  name: "attack.shout",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }) => `${text.toUpperCase()}!`,
});

const charge = defineTask({
  name: "attack.charge",
  queue: "payments",
  input: Schema.Struct({ cents: Schema.Number }),
  output: Schema.Number,
  handler: async ({ cents }) => cents * 2,
});

type Identity = Role | "worker-payments";
/** Every identity but the admin. */
const NON_ADMIN: Identity[] = [...ROLES.filter((r) => r !== "admin"), "worker-payments"];

let dir: string;
let server: NatsServer;
const open: Troupe[] = [];
let client: Troupe;
let workerId: string;

const roleFile = (identity: Identity) => join(dir, `${identity}.json`);
const asRole = async (identity: Identity): Promise<Troupe> => {
  const t = await Troupe.connect({
    servers: server.url,
    ...(JSON.parse(await readFile(roleFile(identity), "utf8")) as object),
    logger: pino({ level: "silent" }, new Writable({ write: (_c, _e, done) => done() })),
  });
  open.push(t);
  return t;
};
const cli = (args: string[], identity: Identity) => runCli([...args, "--server", server.url, "--auth", roleFile(identity)], { NATS_URL: undefined }, { cwd: dir });

/** The server's refusal of `attempt`, typed; fails the test when it was not refused. */
const refusal = async (attempt: Promise<unknown>): Promise<PermissionDenied> => {
  const outcome = await attempt.then(
    () => undefined,
    (e: unknown) => e,
  );
  const denied = permissionDenied(outcome);
  if (denied === undefined) throw new Error(`not refused: ${String(outcome)}`);
  return denied;
};

/** Polls `probe` until it returns a value other than undefined. */
const until = async <T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 30_000): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

/** The worker still serves: its registry entry is not draining, and a task submitted now completes. */
const workerStillServes = async () => {
  const stats = await client.workerStats();
  const state = stats.find((w) => w.id === workerId)?.state;
  expect(state).toBeDefined();
  expect(state).not.toMatch(/drain|stop/);
  expect(await (await client.submit(shout, { text: "still here" })).result({ timeout: 30_000 })).toBe("STILL HERE!");
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "troupe-attacks-"));
  const init = await runCli(["auth", "init", dir, "--queue-worker", `payments=${charge.name}`], {}, { cwd: dir });
  expect(init.code, init.stderr).toBe(0);
  // `include` is relative to the including file, which NatsServer writes in a fresh folder of the temp dir.
  server = await NatsServer.start({ config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), join(dir, "auth.conf")))}` });
  await setupLayout({ servers: server.url, ...(JSON.parse(await readFile(roleFile("admin"), "utf8")) as object) });
  workerId = (await (await asRole("worker")).worker({ tasks: [shout] })).id;
  await (await asRole("worker-payments")).worker({ tasks: [charge], rpc: false });
  client = await asRole("client");
  expect(await (await client.submit(shout, { text: "a" })).result({ timeout: 60_000 })).toBe("A!");
  expect(await (await client.submit(charge, { cents: 1 })).result({ timeout: 60_000 })).toBe(2);
}, 120_000);

afterAll(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
}, 60_000);

describe("attacks with each role's credential", () => {
  it("the consumer relay: a push consumer aimed at a worker's shutdown or drain subject is delivered, and the worker ignores it", async () => {
    // nats-server does not check a consumer's deliver subject against its creator's rights:
    // what makes the relay harmless is that a delivery keeps the stored message's subject.
    for (const identity of NON_ADMIN) {
      const { jsm } = connectionOf(await asRole(identity));
      for (const verb of ["shutdown", "drain"] as const) {
        const name = `relay-${identity}-${verb}`;
        const stream = `KV_${WORKERS_BUCKET}`;
        await jsm.consumers.add(stream, { name, deliver_subject: controlSubject(workerId, verb), ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
        // The worker's endpoint is a literal subscription on that subject: the server delivers to it.
        await until(async () => ((await jsm.consumers.info(stream, name)).delivered.stream_seq > 0 ? true : undefined), `${identity}'s relay to be delivered`);
        await jsm.consumers.delete(stream, name).catch(() => undefined);
      }
    }
    await workerStillServes();
  }, 180_000);

  it("a purge or a message delete by every role but retention is refused, and the records stay", async () => {
    const record = await client.submit(shout, { text: "kept" });
    await record.result({ timeout: 30_000 });
    const streams = [`KV_${TASKS_BUCKET}`, `KV_${WORKFLOWS_BUCKET}`, `KV_${OPEN_RUNS_BUCKET}`, INDEX_STREAM, EVENTS_STREAM, PAYLOADS_STREAM, TASKS_STREAM];
    for (const identity of NON_ADMIN.filter((r) => r !== "retention")) {
      const { jsm } = connectionOf(await asRole(identity));
      for (const stream of streams) {
        expect((await refusal(jsm.streams.purge(stream))).subject, `${identity} purging ${stream}`).toBe(`$JS.API.STREAM.PURGE.${stream}`);
      }
      expect((await refusal(jsm.streams.deleteMessage(INDEX_STREAM, 1))).subject).toBe(`$JS.API.STREAM.MSG.DELETE.${INDEX_STREAM}`);
      expect((await refusal(jsm.streams.deleteMessage(TASKS_STREAM, 1))).subject).toBe(`$JS.API.STREAM.MSG.DELETE.${TASKS_STREAM}`);
    }
    expect((await client.get(record.id))?.status).toBe("COMPLETED");
    // The retention identity may: its sweep runs (nothing is past its retention yet).
    const retention = await asRole("retention");
    expect(await retention.sweep()).toEqual({ tasks: 0, workflows: 0 });
    expect((await client.get(record.id))?.status).toBe("COMPLETED");
  }, 180_000);

  it("the retention identity sweeps for real: a record past its retention goes, with its index entry, while the worker's own sweeps are refused", async () => {
    const done = await client.submit(shout, { text: "expires" });
    expect(await done.result({ timeout: 30_000 })).toBe("EXPIRES!");
    const indexed = async () =>
      Object.keys((await connectionOf(client).jsm.streams.info(INDEX_STREAM, { subjects_filter: "troupe.index.task.COMPLETED.>" })).state.subjects ?? {}).length;
    await until(async () => ((await indexed()) > 0 ? true : undefined), "the completed task indexed");
    // A worker whose retention would remove it may not: its sweep is refused, the record stays.
    const worker = await Troupe.connect({ servers: server.url, ...(JSON.parse(await readFile(roleFile("worker"), "utf8")) as object), retention: { completed: 1 }, logger: pino({ level: "silent" }) });
    open.push(worker);
    expect(permissionDenied(await worker.sweep().catch((e: unknown) => e))).toBeDefined();
    expect((await client.get(done.id))?.status).toBe("COMPLETED");
    // The retention identity, with the same policy, removes it.
    const sweeper = await Troupe.connect({ servers: server.url, ...(JSON.parse(await readFile(roleFile("retention"), "utf8")) as object), retention: { completed: 1 }, logger: pino({ level: "silent" }) });
    open.push(sweeper);
    const swept = await sweeper.sweep();
    expect(swept.tasks).toBeGreaterThanOrEqual(1);
    expect(await client.get(done.id)).toBeUndefined();
    expect(await indexed()).toBe(0);
  }, 120_000);

  it("a queue worker may not write another queue's limits or directory entry, nor workflows, schedules, pauses or leases", async () => {
    const scoped = connectionOf(await asRole("worker-payments"));
    const attempts: Array<[string, Promise<unknown>]> = [
      [`$KV.${METHODS_BUCKET}.${shout.name}`, scoped.methods.put(shout.name, "{}")],
      [`$KV.${LIMITS_BUCKET}.default.${shout.name}`, scoped.limits.put(`default.${shout.name}`, "{}")],
      [`$KV.${WORKFLOWS_BUCKET}.forged`, scoped.workflows.put("forged", "{}")],
      [`$KV.${SCHEDULES_BUCKET}.forged`, scoped.schedules.put("forged", "{}")],
      [`$KV.${PAUSES_BUCKET}.forged`, scoped.pauses.put("forged", "{}")],
      [`$KV.${LEASES_BUCKET}.scheduler`, scoped.leases.put("scheduler", "{}")],
    ];
    for (const [subject, attempt] of attempts) expect((await refusal(attempt)).subject).toBe(subject);
    // Its own type's directory entry it may write (it advertised it when it started).
    expect((await scoped.methods.get(charge.name))?.operation).toBe("PUT");
    // Nor may it publish another queue's work.
    expect((await refusal(connectionOf(await asRole("worker-payments")).js.publish(`troupe.tasks.default.${shout.name}.x`, "{}"))).subject).toMatch(/^troupe\.tasks\.default\./);
  }, 60_000);

  it("RPC interception: no role but workers and the gateway may join the troupe-rpc group; none but those answers a request", async () => {
    for (const identity of ["inspector", "coordinator", "client", "operator", "retention", "worker-payments"] as const) {
      const { nc } = connectionOf(await asRole(identity));
      const sub = nc.subscribe(RPC_SUBJECT, { queue: RPC_QUEUE });
      const closed = await Promise.race([sub.closed, new Promise((r) => setTimeout(() => r("still open"), 15_000))]);
      const denied = permissionDenied(closed);
      expect(denied, `${identity} joining ${RPC_QUEUE}`).toBeInstanceOf(PermissionDenied);
      expect(denied?.operation).toBe("subscription");
    }
    // The inspector hears a request it may subscribe to, but may not answer it.
    const inspector = connectionOf(await asRole("inspector")).nc;
    const fake = controlSubject("fake", "stats");
    const heard: string[] = [];
    inspector.subscribe(fake, {
      callback: (_e, m) => {
        heard.push(m.subject);
        m.respond('{"forged":true}');
      },
    });
    await inspector.flush();
    const answer = await connectionOf(client).nc.request(fake, undefined, { timeout: 2_000 }).catch((e: unknown) => e);
    expect(heard).toEqual([fake]);
    expect(answer).toBeInstanceOf(Error);
  }, 120_000);

  it("a client may not drain or shut a worker down; the operator role is the one that controls", async () => {
    const { nc } = connectionOf(client);
    for (const verb of ["shutdown", "drain", "cancel"] as const) {
      expect((await refusal(nc.request(controlSubject(workerId, verb), undefined, { timeout: 5_000 }))).subject).toBe(controlSubject(workerId, verb));
    }
    const drain = await cli(["worker", "stop", workerId], "client");
    expect(drain.code).toBe(1);
    expect(drain.stderr).toMatch(/PermissionDenied: permission denied: the server refused publish to "troupe\.control\./);
    for (const bucket of [PAUSES_BUCKET, SCHEDULES_BUCKET]) {
      expect((await refusal(connectionOf(client).js.publish(`$KV.${bucket}.forged`, "{}"))).subject).toBe(`$KV.${bucket}.forged`);
    }
    await workerStillServes();
    // The operator asks for stats the same way it would drain: the worker answers it.
    const operator = connectionOf(await asRole("operator")).nc;
    const stats = await operator.request(controlSubject(workerId, "stats"), undefined, { timeout: 10_000 });
    expect(stats.json<{ id?: string }>()).toMatchObject({ id: workerId });
  }, 120_000);
});
