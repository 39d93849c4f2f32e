/** Operating Troupe: listing, retrying, history, retention and large payloads, against a real server. */
import { afterEach, describe, expect, it } from "vitest";
import { defineTask, defineWorkflow, InvalidOption, NonRetryableError, Schema, TaskNotFound, Troupe, type TroupeOptions } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { useNatsServer } from "../helpers/nats.js";
import { recordWhere } from "../helpers/records.js";
import { untilAborted } from "../helpers/handlers.js";
import { runCli } from "../helpers/cli.js";

const server = useNatsServer();
const open: Troupe[] = [];
const connect = async (options: TroupeOptions = {}) => {
  const troupe = await Troupe.connect({ servers: server().url, ...options });
  open.push(troupe);
  return troupe;
};
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

const Input = Schema.Struct({ n: Schema.Number });

/** Polls `check` until it holds (a bound, never a guess at how long it takes). */
const until = async (check: () => Promise<boolean>, what: string, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe("list", () => {
  it("finds 3 FAILED tasks among 100,000 finished ones with a few requests, newest first, a page at a time", { timeout: 180_000 }, async () => {
    const troupe = await connect();
    const nc = connectionOf(troupe).nc;
    // 100,000 index entries of finished tasks (what a busy week leaves), published directly.
    const at = Date.now();
    const body = (i: number) => Buffer.from(JSON.stringify({ id: `done-${i}`, at }));
    for (let i = 0; i < 100_000; i++) {
      nc.publish(Topology.taskIndexSubject("COMPLETED", "default", "bulk.work"), body(i));
      if (i % 5_000 === 4_999) await nc.flush();
    }
    await until(async () => (await connectionOf(troupe).jsm.streams.info(Topology.INDEX_STREAM)).state.messages >= 100_000, "100,000 index entries", 120_000);

    const flaky = defineTask({
      name: "ops.flaky",
      input: Input,
      output: Schema.Number,
      handler: ({ n }) => {
        if (n > 0) throw new NonRetryableError(`no ${n}`);
        return n;
      },
    });
    await troupe.worker({ tasks: [flaky], concurrency: 4 });
    const failed: string[] = [];
    for (const n of [1, 2, 3]) {
      const run = await troupe.submit(flaky, { n });
      await run.settledRecord();
      failed.push(run.id);
    }
    const completed = await troupe.submit(flaky, { n: 0 });
    await completed.result();
    // The last index entries land after the records' notify: wait for them.
    await until(async () => (await troupe.list({ status: "FAILED" })).tasks.length === 3, "3 FAILED listed");

    const before = nc.stats().outMsgs;
    const page = await troupe.list({ status: "FAILED" });
    const requests = nc.stats().outMsgs - before;
    expect(page.tasks.map((t) => t.id)).toEqual([...failed].reverse());
    expect(page.tasks.every((t) => t.status === "FAILED" && t.error?._tag === "Execution")).toBe(true);
    expect(page.cursor).toBeUndefined();
    // Windows back from the end, twice as long each time: ~12 empty probes and 3 records, not 100,000 reads.
    expect(requests).toBeLessThan(100);

    const firstTwo = await troupe.list({ status: "FAILED", limit: 2 });
    expect(firstTwo.tasks.map((t) => t.id)).toEqual([failed[2], failed[1]]);
    const rest = await troupe.list({ status: "FAILED", limit: 2, cursor: firstTwo.cursor! });
    expect(rest.tasks.map((t) => t.id)).toEqual([failed[0]]);

    expect((await troupe.list({ status: "COMPLETED", task: flaky })).tasks.map((t) => t.id)).toEqual([completed.id]);
    expect((await troupe.list({ status: "FAILED", task: "bulk.work" })).tasks).toEqual([]);
    expect((await troupe.list({ status: "FAILED", since: Date.now() + 60_000 })).tasks).toEqual([]);
    await expect(troupe.list({ status: "LOST" as never })).rejects.toBeInstanceOf(InvalidOption);
    await expect(troupe.list({ limit: 0 })).rejects.toBeInstanceOf(InvalidOption);
    // Entries whose records are gone cost a listing that matches them: one call checks at most
    // 2,000 and hands back a cursor, never reads all 100,000 at once.
    const capped = await troupe.list({ task: "bulk.work" });
    expect(capped.tasks).toEqual([]);
    expect(capped.cursor).toBeDefined();
    await connectionOf(troupe).jsm.streams.purge(Topology.INDEX_STREAM, { filter: Topology.taskIndexSubject("COMPLETED", "default", "bulk.work") });
  });

  it("lists queued and running tasks from their work and their workers", async () => {
    const troupe = await connect();
    // A queue of their own: the other tests' tasks are on the same server.
    const hold = defineTask({ name: "ops.hold", queue: "opsq", input: Input, output: Schema.Void, handler: (_i, ctx) => untilAborted(ctx.signal, undefined) });
    const idle = defineTask({ name: "ops.idle", queue: "opsq", input: Input, output: Schema.Void, handler: () => undefined });
    const waiting = [await troupe.submit(idle, { n: 1 }), await troupe.submit(idle, { n: 2 })];
    expect((await troupe.list({ status: "QUEUED", task: idle })).tasks.map((t) => t.id)).toEqual([waiting[1]!.id, waiting[0]!.id]);
    await troupe.worker({ tasks: [hold] });
    const running = await troupe.submit(hold, { n: 1 });
    await recordWhere(troupe, running.id, (r) => r.status === "RUNNING");
    expect((await troupe.list({ status: "RUNNING" })).tasks.map((t) => t.id)).toEqual([running.id]);
    const all = await troupe.list({ queue: "opsq" });
    expect(all.tasks.map((t) => t.id).sort()).toEqual([running.id, ...waiting.map((w) => w.id)].sort());
    await running.cancel();
  });
});

describe("retry", () => {
  it("runs a FAILED task again under the same id, its history kept and its attempts counted anew", async () => {
    const troupe = await connect();
    let failing = true;
    const once = defineTask({
      name: "ops.once",
      input: Input,
      output: Schema.Number,
      retry: { attempts: 2, delay: 10 },
      handler: ({ n }) => {
        if (failing) throw new Error("not yet");
        return n * 2;
      },
    });
    await troupe.worker({ tasks: [once] });
    const run = await troupe.submit(once, { n: 21 }, { idempotencyKey: "answer" });
    expect(await run.settledRecord()).toMatchObject({ status: "FAILED", attempt: 2 });
    await expect(troupe.retry("nope")).rejects.toBeInstanceOf(TaskNotFound);

    failing = false;
    const again = await troupe.retry(run.id);
    expect(again.id).toBe(run.id);
    expect(await again.result()).toBe(42);
    expect(await troupe.get(run.id)).toMatchObject({ status: "COMPLETED", attempt: 1, retries: 1, output: 42 });
    await expect(troupe.retry(run.id)).rejects.toThrow(/COMPLETED; only FAILED or CANCELLED/);
    await until(async () => (await troupe.history(run.id)).at(-1)?.event === "completed", "the completed event");
    const events = (await troupe.history(run.id)).map((e) => e.event);
    expect(events.filter((e) => e === "failed")).toHaveLength(1);
    expect(events.indexOf("failed")).toBeLessThan(events.lastIndexOf("queued"));
    expect((await troupe.history(run.id)).every((e) => !Number.isNaN(Date.parse(e.at)))).toBe(true);
  });

  it("retries every FAILED task of a type in bulk", async () => {
    const troupe = await connect();
    let failing = true;
    const bulk = defineTask({
      name: "ops.bulk",
      input: Input,
      output: Schema.Number,
      handler: ({ n }) => {
        if (failing) throw new NonRetryableError("down");
        return n;
      },
    });
    await troupe.worker({ tasks: [bulk], concurrency: 4 });
    const runs = await Promise.all([1, 2, 3].map((n) => troupe.submit(bulk, { n })));
    for (const run of runs) await run.settledRecord();
    await until(async () => (await troupe.list({ status: "FAILED", task: bulk })).tasks.length === 3, "3 FAILED listed");
    failing = false;
    const result = await troupe.retry({ status: "FAILED", task: bulk });
    expect([...result.retried].sort()).toEqual(runs.map((r) => r.id).sort());
    for (const run of runs) await recordWhere(troupe, run.id, (r) => r.status === "COMPLETED");
  });
});

describe("retention", () => {
  it("removes finished records, their payloads and index entries past their retention; running ones stay", { timeout: 120_000 }, async () => {
    const troupe = await connect({ retention: { completed: 1, cancelled: "1 hour" } });
    const nats = connectionOf(troupe);
    const big = defineTask({ name: "ops.big", input: Input, output: Schema.String, handler: () => "x".repeat(300_000) });
    const hold = defineTask({ name: "ops.held", input: Input, output: Schema.Void, handler: (_i, ctx) => untilAborted(ctx.signal, undefined) });
    await troupe.worker({ tasks: [big, hold], concurrency: 4 });
    const done = await troupe.submit(big, { n: 1 });
    expect(await done.result()).toHaveLength(300_000);
    const running = await troupe.submit(hold, { n: 1 });
    await recordWhere(troupe, running.id, (r) => r.status === "RUNNING");
    expect(await nats.payloads.info(`${done.id}.output`)).not.toBeNull();
    await until(async () => (await troupe.list({ status: "COMPLETED", task: big })).tasks.length === 1, "the completed task listed");

    await until(async () => (await troupe.sweep()) && (await troupe.get(done.id)) === undefined, "the completed record removed");
    expect(await nats.payloads.getBlob(`${done.id}.output`)).toBeNull();
    expect((await troupe.list({ status: "COMPLETED", task: big })).tasks).toEqual([]);
    expect((await nats.jsm.streams.info(Topology.INDEX_STREAM, { subjects_filter: "troupe.index.task.COMPLETED.>" })).state.subjects ?? {}).toEqual({});
    expect(await troupe.get(running.id)).toMatchObject({ status: "RUNNING" });
    // A cancelled one is kept for its own retention (an hour here).
    await running.cancel();
    await troupe.sweep();
    expect(await troupe.get(running.id)).toMatchObject({ status: "CANCELLED" });
  });

  it("a retry's index entry goes with its record: removed with a completed one, kept with a failed one still kept", { timeout: 120_000 }, async () => {
    const troupe = await connect({ retention: { completed: 1, failed: "1 hour" } });
    const nats = connectionOf(troupe);
    const twice = defineTask({
      name: "ops.twice",
      input: Input,
      output: Schema.Number,
      retry: { attempts: 2, delay: 10 },
      handler: async ({ n }, ctx) => {
        if (ctx.attempt === 1) throw new Error("first try fails");
        if (n === 2) throw new NonRetryableError("and so does the second");
        return n;
      },
    });
    await troupe.worker({ tasks: [twice] });
    const done = await troupe.submit(twice, { n: 1 });
    const failed = await troupe.submit(twice, { n: 2 });
    expect(await done.result()).toBe(1);
    await expect(failed.result()).rejects.toMatchObject({ _tag: "Execution" });
    const retries = async () =>
      Object.values((await nats.jsm.streams.info(Topology.INDEX_STREAM, { subjects_filter: "troupe.index.task.RETRYING.>" })).state.subjects ?? {}).reduce((a, b) => a + b, 0);
    await until(async () => (await retries()) === 2, "both retries indexed");

    await until(async () => (await troupe.sweep()) && (await troupe.get(done.id)) === undefined, "the completed record removed");
    // The completed task's retry entry went with it; the failed one's stays with its record.
    expect(await retries()).toBe(1);
    expect(await troupe.get(failed.id)).toMatchObject({ status: "FAILED", attempt: 2 });
    await troupe.sweep();
    expect(await retries()).toBe(1);
    expect((await troupe.stats()).totals.retried).toBe(1);
  });

  it("removes finished workflow runs, and coordinators reconcile only open ones", { timeout: 120_000 }, async () => {
    const troupe = await connect({ retention: { completed: 1 } });
    const nats = connectionOf(troupe);
    const step = defineTask({ name: "ops.step", input: Input, output: Schema.Number, handler: ({ n }) => n + 1 });
    const flow = defineWorkflow({ name: "ops.flow", input: Input, steps: { a: { task: step, input: { n: "${input.n}" } } } });
    await troupe.worker({ tasks: [step] });
    await troupe.coordinator({ reconcileEvery: 0 });
    const run = await troupe.start(flow, { n: 1 });
    expect(await run.result()).toEqual({ a: 2 });
    await until(async () => (await nats.openRuns.get(run.id)) === null, "the run closed");
    await until(async () => (await troupe.sweep()) && (await troupe.getWorkflow(run.id)) === undefined, "the run removed");
    await expect(troupe.sweep()).resolves.toEqual({ tasks: 0, workflows: 0 });
  });

  it("refuses a retention that is not a duration", async () => {
    await expect(Troupe.connect({ servers: server().url, retention: { failed: "soon" as never } })).rejects.toBeInstanceOf(InvalidOption);
  });
});

describe("large payloads", () => {
  it("carries a 20 MB input and a 20 MB output through the object store", { timeout: 120_000 }, async () => {
    const troupe = await connect();
    const Blob = Schema.Struct({ data: Schema.String });
    const echo = defineTask({ name: "ops.echo", input: Blob, output: Blob, handler: ({ data }) => ({ data: data.toUpperCase() }) });
    await troupe.worker({ tasks: [echo] });
    const data = "ab".repeat(10 * 1024 * 1024);
    const run = await troupe.submit(echo, { data });
    const output = await run.result({ timeout: 90_000 });
    expect(output.data.length).toBe(data.length);
    expect(output.data.slice(0, 4)).toBe("ABAB");
    // The record holds references; readers get the values.
    const stored = await connectionOf(troupe).tasks.get(run.id);
    const raw = stored!.json<{ input: unknown; output: unknown }>();
    expect(raw.input).toMatchObject({ "troupe.payload": `${run.id}.input` });
    expect(raw.output).toMatchObject({ "troupe.payload": `${run.id}.output` });
    expect(stored!.value.length).toBeLessThan(4_096);
    const record = await troupe.get(run.id);
    expect((record!.input as { data: string }).data.length).toBe(data.length);
    expect((record!.output as { data: string }).data.length).toBe(data.length);
  });
});

describe("large payloads in workflows", () => {
  it("a step's input reaches into an earlier step's output kept in the object store", { timeout: 90_000 }, async () => {
    // A small threshold: the producer's output (about 6 KB) is stored, its record holds a reference.
    const troupe = await connect({ payloadThreshold: 1_024 });
    const produce = defineTask({
      name: "ops.produce",
      input: Schema.Struct({ n: Schema.Number }),
      output: Schema.Struct({ items: Schema.Array(Schema.String), count: Schema.Number }),
      handler: ({ n }) => ({ items: Array.from({ length: n }, (_, i) => `item-${i}-${"x".repeat(20)}`), count: n }),
    });
    const consume = defineTask({
      name: "ops.consume",
      input: Schema.Struct({ items: Schema.Array(Schema.String), count: Schema.Number }),
      output: Schema.Number,
      handler: ({ items, count }) => items.length + count,
    });
    const label = defineTask({ name: "ops.label", input: Schema.Struct({ text: Schema.String }), output: Schema.String, handler: ({ text }) => text });
    const reach = defineWorkflow({
      name: "ops.reach",
      input: Schema.Struct({ n: Schema.Number }),
      steps: {
        produce: { task: produce, input: { n: "${input.n}" } },
        consume: { task: consume, after: ["produce"], input: { items: "${produce.items}", count: "${produce.count}" } },
      },
    });
    await troupe.worker({ tasks: [produce, consume, label] });
    await troupe.coordinator({ reconcileEvery: 0 });
    const run = await troupe.start(reach, { n: 200 });
    const result = (await run.result({ timeout: 60_000 })) as { produce: { count: number }; consume: number };
    expect(result.consume).toBe(400);
    expect(result.produce.count).toBe(200);
    const raw = (await connectionOf(troupe).tasks.get(`${run.id}-produce`))!.json<{ output: unknown }>();
    expect(raw.output).toMatchObject({ "troupe.payload": `${run.id}-produce.output` });
    const consumed = (await connectionOf(troupe).tasks.get(`${run.id}-consume`))!.json<{ input: { items: unknown } }>();
    expect(consumed.input.items).toEqual({ "troupe.payload": `${run.id}-produce.output`, bytes: expect.any(Number), path: ["items"] });

    // Inside a longer string a stored value cannot be interpolated: the step fails InvalidInput, saying why.
    const interpolated = defineWorkflow({
      name: "ops.reach.text",
      input: Schema.Struct({ n: Schema.Number }),
      steps: {
        produce: { task: produce, input: { n: "${input.n}" } },
        label: { task: label, after: ["produce"], input: { text: "${produce.count} items" } },
      },
    });
    const failed = await troupe.start(interpolated, { n: 200 });
    await expect(failed.result({ timeout: 60_000 })).rejects.toBeDefined();
    const record = await troupe.getWorkflow(failed.id);
    expect(record?.steps.label).toMatchObject({ status: "FAILED", error: { _tag: "InvalidInput" } });
    expect(record?.steps.label?.error?.message).toContain("reaches into a stored output");
  });
});

describe("the CLI's ls, retry and history", () => {
  it("lists a failed task, retries it and shows its history; each verb has its --help", { timeout: 180_000 }, async () => {
    const troupe = await connect();
    let failing = true;
    const cli = defineTask({
      name: "ops.cli",
      input: Input,
      output: Schema.Number,
      handler: ({ n }) => {
        if (failing) throw new NonRetryableError("first time");
        return n;
      },
    });
    await troupe.worker({ tasks: [cli] });
    const run = await troupe.submit(cli, { n: 7 });
    await run.settledRecord();
    await until(async () => (await troupe.list({ status: "FAILED", task: cli })).tasks.length === 1, "the failed task listed");
    const env = { NATS_URL: server().url };
    const listed = await runCli(["ls", "--status", "failed", "--task", "ops.cli", "--json"], env);
    expect(listed.code).toBe(0);
    expect((JSON.parse(listed.stdout) as { tasks: Array<{ id: string }> }).tasks.map((t) => t.id)).toEqual([run.id]);
    failing = false;
    const retried = await runCli(["retry", run.id, "--wait", "--timeout", "60s"], env);
    expect(retried.stdout).toContain(`task ${run.id} queued again`);
    expect(retried.code).toBe(0);
    const history = await runCli(["history", run.id], env);
    expect(history.stdout).toMatch(/failed[\s\S]*queued[\s\S]*completed/);
    const help = await runCli(["retry", "--help"]);
    expect(help.stdout).toContain("troupe retry --status FAILED|CANCELLED");
    expect(help.stdout).not.toContain("troupe schedule");
  });
});
