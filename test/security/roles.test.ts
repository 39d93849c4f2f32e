// Roles with least privilege: `troupe auth init` writes the server's users, `troupe setup`
// makes the layout as admin, and the other roles only use it; the server refuses the rest.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineTask, defineWorkflow, Schema, Troupe } from "../../src/index.js";
import { NatsServer } from "../../src/testing/index.js";
import { connectionOf } from "../../src/sdk/troupe.js";
import { LayoutMissing, PermissionDenied } from "../../src/errors.js";
import { permissionDenied } from "../../src/nats/permissions.js";
import { ROLES, type Role } from "../../src/nats/roles.js";
import { setupLayout } from "../../src/nats/setup.js";
import { consumerName, EVENTS_STREAM, TASKS_STREAM, taskSubject } from "../../src/nats/topology.js";
import { AckPolicy } from "@nats-io/jetstream";
import bcrypt from "bcryptjs";
import { runCli } from "../helpers/cli.js";

const shout = defineTask({
  name: "roles.shout",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  handler: async ({ text }) => `${text.toUpperCase()}!`,
});

const twice = defineWorkflow({
  name: "roles.twice",
  input: Schema.Struct({ text: Schema.String }),
  steps: { first: { task: shout, input: { text: "${input.text}" } }, second: { task: shout, after: ["first"], input: { text: "${first}" } } },
});

let dir: string;
let server: NatsServer;
const open: Troupe[] = [];

const roleFile = (role: Role | "worker-payments") => join(dir, `${role}.json`);
const asRole = async (role: Role | "worker-payments"): Promise<Troupe> => {
  const t = await Troupe.connect({ servers: server.url, ...(JSON.parse(await readFile(roleFile(role), "utf8")) as object), logger: pino({ level: "silent" }) });
  open.push(t);
  return t;
};
const adminOptions = async () => ({ servers: server.url, ...(JSON.parse(await readFile(roleFile("admin"), "utf8")) as object) });
const cli = (args: string[], role: Role) => runCli([...args, "--server", server.url, "--auth", roleFile(role)], { NATS_URL: undefined }, { cwd: dir });

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "troupe-roles-"));
  const init = await runCli(["auth", "init", dir, "--queue-worker", "payments=roles.charge"], {}, { cwd: dir });
  expect(init.code, init.stderr).toBe(0);
  // `include` is relative to the including file, which NatsServer writes in a fresh folder of the temp dir.
  server = await NatsServer.start({ config: `include ${JSON.stringify(relative(join(tmpdir(), "server"), join(dir, "auth.conf")))}` });
}, 60_000);

afterAll(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("roles (troupe auth init, troupe setup)", () => {
  it("writes auth.conf with one user per role and a connection file per role", async () => {
    const conf = await readFile(join(dir, "auth.conf"), "utf8");
    for (const role of [...ROLES, "worker-payments" as const]) {
      const creds = JSON.parse(await readFile(roleFile(role), "utf8")) as { user: string; pass: string; layout?: string; inboxPrefix?: string };
      expect(creds.user).toBe(`troupe-${role}`);
      expect(creds.pass.length).toBeGreaterThanOrEqual(24);
      // The server holds the password's bcrypt hash only.
      const hash = new RegExp(`user: "${creds.user}", password: "(\\$2b\\$10\\$[^"]+)"`).exec(conf)?.[1];
      expect(hash !== undefined && bcrypt.compareSync(creds.pass, hash)).toBe(true);
      expect(conf).not.toContain(creds.pass);
      expect(creds.layout).toBe(role === "admin" ? undefined : "verify");
      // Each identity has its own inbox: none can read another's replies or pulled work.
      expect(creds.inboxPrefix).toBe(role === "admin" ? undefined : `_INBOX_troupe-${role}`);
    }
  });

  it("a role's client before setup fails with LayoutMissing naming what is missing, not a hang", async () => {
    const error = await asRole("client").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayoutMissing);
    expect((error as Error).message).toContain(`the Troupe layout is missing stream ${TASKS_STREAM}`);
    expect((error as Error).message).toContain("run `troupe setup`");
  }, 30_000);

  it("setup as admin creates the layout; a worker and a client with their roles run a task to completion", async () => {
    const setup = await cli(["setup"], "admin");
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain(`created: stream ${TASKS_STREAM}`);
    expect(await setupLayout(await adminOptions(), true)).toEqual({ missing: [], upgraded: [], drift: [], migrated: [] });

    const worker = await asRole("worker");
    await worker.worker({ tasks: [shout] });
    const client = await asRole("client");
    const run = await client.submit(shout, { text: "least privilege" });
    expect(await run.result({ timeout: 30_000 })).toBe("LEAST PRIVILEGE!");
    // A workflow: the coordinator role advances it, its steps run on the worker.
    await (await asRole("coordinator")).coordinator();
    const wf = await client.start(twice, { text: "a" });
    expect(await wf.result({ timeout: 30_000 })).toEqual({ first: "A!", second: "A!!" });
  }, 90_000);

  it("the worker role cannot delete a stream: the server refuses with a typed error naming the subject", async () => {
    const worker = await asRole("worker");
    const error = await connectionOf(worker).jsm.streams.delete(TASKS_STREAM).catch((e: unknown) => e);
    const denied = permissionDenied(error);
    expect(denied).toBeInstanceOf(PermissionDenied);
    expect(denied?.subject).toBe(`$JS.API.STREAM.DELETE.${TASKS_STREAM}`);
    expect(denied?.operation).toBe("publish");
    expect((await connectionOf(worker).jsm.streams.info(TASKS_STREAM)).config.name).toBe(TASKS_STREAM);
    // The CLI says it in one line: setup as the worker is refused the admin's part.
    const setup = await cli(["setup"], "worker");
    expect(setup.code).toBe(1);
    expect(setup.stderr).toMatch(/^troupe setup: PermissionDenied: permission denied: the server refused publish to "\$JS\.API\.\S+" for this identity/);
    expect(setup.stderr.trim().split("\n")).toHaveLength(1);
  }, 60_000);

  it("a refused publish nothing waits for is logged as one line naming the subject", async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) });
    const inspector = await Troupe.connect({
      servers: server.url,
      ...(JSON.parse(await readFile(roleFile("inspector"), "utf8")) as object),
      logger: pino({ level: "warn" }, sink),
    });
    open.push(inspector);
    connectionOf(inspector).nc.publish("troupe.tasks.default.roles.shout", "{}");
    const deadline = Date.now() + 20_000;
    while (!lines.some((l) => l.includes("PermissionDenied") || l.includes("permission denied")) && Date.now() < deadline) {
      await connectionOf(inspector).nc.flush();
      await new Promise((r) => setTimeout(r, 50));
    }
    const line = lines.find((l) => l.includes("permission denied"));
    expect(line).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ operation: "publish", subject: "troupe.tasks.default.roles.shout" });
  }, 30_000);

  it("setup --check reports a setting that drifted, setup upgrades it back", async () => {
    const admin = await asRole("admin");
    await connectionOf(admin).jsm.streams.update(EVENTS_STREAM, { max_age: 3_600 * 1_000_000_000 });
    const check = await cli(["setup", "--check"], "admin");
    expect(check.code).toBe(1);
    expect(check.stdout).toContain(`drift: stream ${EVENTS_STREAM}: max age is 1h, the configuration says 7d`);
    const setup = await cli(["setup"], "admin");
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain(`updated: stream ${EVENTS_STREAM}: max age is 1h, the configuration says 7d`);
    expect((await setupLayout(await adminOptions(), true)).drift).toEqual([]);
  }, 60_000);

  it("a worker limited to a queue serves its tasks, and the server refuses it another queue's work", async () => {
    const charge = defineTask({ name: "roles.charge", queue: "payments", input: Schema.Struct({ cents: Schema.Number }), output: Schema.Number, handler: async ({ cents }) => cents * 2 });
    const scoped = await asRole("worker-payments");
    await scoped.worker({ tasks: [charge] });
    const client = await asRole("client");
    expect(await (await client.submit(charge, { cents: 21 })).result({ timeout: 30_000 })).toBe(42);

    // Work waiting on the default queue (no worker serves it now).
    const other = defineTask({ name: "roles.other", input: Schema.Struct({ secret: Schema.String }), output: Schema.String, handler: async ({ secret }) => secret });
    const waiting = await client.submit(other, { secret: "not for payments" });
    const admin = await asRole("admin");
    await connectionOf(admin).jsm.consumers.add(TASKS_STREAM, { durable_name: consumerName("default", "roles.other"), ack_policy: AckPolicy.Explicit, filter_subject: taskSubject("default", "roles.other") });

    const { jsm, nc } = connectionOf(scoped);
    const refused = async (attempt: Promise<unknown>, subject: string) => {
      const denied = permissionDenied(await attempt.then(() => undefined, (e: unknown) => e));
      expect(denied, subject).toBeInstanceOf(PermissionDenied);
      expect(denied?.subject).toBe(subject);
    };
    // Pull another queue's consumer.
    const consumer = consumerName("default", "roles.other");
    // A pull request as a plain request: the server's refusal is its answer (a consumer's own pull loop hears nothing).
    const next = `$JS.API.CONSUMER.MSG.NEXT.${TASKS_STREAM}.${consumer}`;
    await refused(nc.request(next, JSON.stringify({ batch: 1, no_wait: true }), { timeout: 10_000 }), next);
    expect((await jsm.consumers.info(TASKS_STREAM, consumer)).name).toBe(consumer); // it exists: only the pull is refused
    // Read the work stream's messages directly.
    await refused(jsm.streams.getMessage(TASKS_STREAM, { last_by_subj: taskSubject("default", "roles.other") }), `$JS.API.STREAM.MSG.GET.${TASKS_STREAM}`);
    // Make its own consumer over another queue's work.
    await refused(
      jsm.consumers.add(TASKS_STREAM, { durable_name: "spy", ack_policy: AckPolicy.Explicit, filter_subject: "troupe.tasks.default.>" }),
      `$JS.API.CONSUMER.CREATE.${TASKS_STREAM}.spy.troupe.tasks.default.>`,
    );
    // Take over another queue's consumer by its name (a filter on its own queue).
    const takeover = `$JS.API.CONSUMER.CREATE.${TASKS_STREAM}.${consumer}.troupe.tasks.payments.roles.charge`;
    await refused(jsm.consumers.add(TASKS_STREAM, { durable_name: consumer, ack_policy: AckPolicy.Explicit, filter_subject: "troupe.tasks.payments.roles.charge" }), takeover);
    expect((await connectionOf(admin).jsm.consumers.info(TASKS_STREAM, consumer)).config.filter_subject).toBe(taskSubject("default", "roles.other"));
    // Put work on another queue, stop another worker, wipe every record, as a full worker could.
    await refused(connectionOf(scoped).publisher.publish(taskSubject("default", "roles.other"), new TextEncoder().encode("{}")), taskSubject("default", "roles.other"));
    await refused(nc.request("troupe.control.w-other.drain", "{}", { timeout: 10_000 }), "troupe.control.w-other.drain");
    await refused(jsm.streams.purge("KV_troupe-tasks"), "$JS.API.STREAM.PURGE.KV_troupe-tasks");
    // Listen to another queue's work subjects, or to another identity's inbox.
    const heard: string[] = [];
    const errors: unknown[] = [];
    for (const subject of ["troupe.tasks.default.>", "_INBOX.>", "_INBOX_troupe-worker.>"]) {
      nc.subscribe(subject, {
        callback: (e, m) => {
          if (e === null) heard.push(m.subject);
          else errors.push(e);
        },
      });
    }
    await client.submit(other, { secret: "still not" });
    await nc.flush();
    await expect.poll(() => errors.length, { timeout: 20_000 }).toBe(3);
    expect(heard).toEqual([]);
    // Nor delete the stream.
    await refused(jsm.streams.delete(TASKS_STREAM), `$JS.API.STREAM.DELETE.${TASKS_STREAM}`);
    expect((await client.get(waiting.id))?.status).toBe("QUEUED");
  }, 90_000);
});
