import { Effect } from "effect";
import { afterEach, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  defineTask,
  Execution,
  InvalidInput,
  NonRetryableError,
  Schema,
  TaskNotFound,
  type TaskRunContext,
} from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { decodeJson } from "../../src/nats/codec.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const add = defineTask({
  name: "math.add",
  input: Schema.Struct({ a: Schema.Number, b: Schema.Number }),
  output: Schema.Number,
  handler: async ({ a, b }) => a + b,
});

describe("tasks end to end", () => {
  it("runs a typed task and records every transition in KV and TROUPE_EVENTS", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [add], concurrency: 4 });
    const run = await troupe.submit(add, { a: 1, b: 2 });
    expect(await run.result()).toBe(3);
    const record = await troupe.get(run.id);
    expect(record).toMatchObject({ id: run.id, task: "math.add", status: "COMPLETED", attempt: 1, input: { a: 1, b: 2 }, output: 3 });
    expect(record?.workerId).toMatch(/^w-/);
    expect(Date.parse(record!.finishedAt!)).toBeGreaterThanOrEqual(Date.parse(record!.startedAt!));

    // The record is plain JSON under the task id, as `nats kv get troupe-tasks <id>` shows it.
    const entry = await connectionOf(troupe).tasks.get(run.id);
    const raw = decodeJson(entry!.value);
    expect(raw.ok && (raw.value as { status: string }).status).toBe("COMPLETED");

    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    const events: string[] = [];
    for (const e of ["queued", "started", "completed"]) {
      const msg = await jsm.streams.getMessage(Topology.EVENTS_STREAM, { last_by_subj: Topology.eventSubject("task", run.id, e) });
      events.push((msg?.json() as { status: string }).status);
    }
    expect(events).toEqual(["QUEUED", "RUNNING", "COMPLETED"]);
  });

  it("tells each client of its own tasks' ends on troupe.notify.<client>: JSON arrays of their terminal records", async () => {
    const a = await connect(server());
    const b = await connect(server());
    await a.worker({ tasks: [add], concurrency: 8 });
    const seen: Array<{ subject: string; records: Array<{ id: string; status: string; notify: string }> }> = [];
    const watcher = connectionOf(a).nc.subscribe("troupe.notify.>", {
      callback: (_e, msg) => {
        const decoded = decodeJson(msg.data);
        if (decoded.ok) seen.push({ subject: msg.subject, records: decoded.value as never });
      },
    });
    await connectionOf(a).nc.flush();
    const runs = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? a : b).submit(add, { a: i, b: 1 })));
    expect(await Promise.all(runs.map((r) => r.result()))).toEqual(runs.map((_, i) => i + 1));
    await connectionOf(a).nc.flush();
    watcher.unsubscribe();
    // Every message is an array of one client's records: none of another client's, none twice.
    for (const { subject, records } of seen) {
      expect(Array.isArray(records)).toBe(true);
      for (const r of records) expect(r).toMatchObject({ status: "COMPLETED", notify: subject });
    }
    const ids = seen.flatMap((m) => m.records.map((r) => r.id));
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(ids)).toEqual(new Set(runs.map((r) => r.id)));
    expect(new Set(seen.map((m) => m.subject)).size).toBe(2);
  });

  it("still hears a terminal record sent alone on troupe.notify.<client>.<id>, as earlier workers sent them", async () => {
    const troupe = await connect(server());
    const run = await troupe.submit(add, { a: 2, b: 2 }); // no worker serves it
    const queued = await run.get();
    const done = { ...queued, status: "COMPLETED", attempt: 1, output: 4, finishedAt: new Date().toISOString() };
    connectionOf(troupe).nc.publish(`${queued.notify}.${run.id}`, JSON.stringify(done));
    expect(await run.result({ timeout: "3 seconds" })).toBe(4);
  });

  it("splits a client's notifications at the server's payload limit: large results that end together all arrive", async () => {
    const big = defineTask({
      name: "big.output",
      input: Schema.Struct({ i: Schema.Number }),
      output: Schema.String,
      handler: async ({ i }) => String(i).padEnd(400_000, "x"),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [big], concurrency: 8 });
    const runs = await Promise.all(Array.from({ length: 8 }, (_, i) => troupe.submit(big, { i })));
    // Well before a wait's first re-read of KV (5 s): these come from the notifications.
    const outputs = await Promise.all(runs.map((r) => r.result({ timeout: "4 seconds" })));
    expect(outputs.map((o) => o.length)).toEqual(runs.map(() => 400_000));
  });

  it("rejects bad input at submit with InvalidInput naming the field, and publishes nothing", async () => {
    const troupe = await connect(server());
    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    const before = (await jsm.streams.info(Topology.TASKS_STREAM)).state.messages;
    const error = await troupe.submit(add, { a: 1, b: "two" } as never).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInput);
    expect((error as InvalidInput).path).toEqual(["b"]);
    expect((error as InvalidInput).message).toContain("b");
    const missing = await troupe.submit(add, { a: 1 } as never).catch((e: unknown) => e);
    expect((missing as InvalidInput)._tag).toBe("InvalidInput");
    expect((await jsm.streams.info(Topology.TASKS_STREAM)).state.messages).toBe(before);
  });

  it("gives the handler its context and accepts an Effect as the result", async () => {
    const seen: Array<Omit<TaskRunContext, "log" | "heartbeat" | "progress"> & { hasLog: boolean }> = [];
    const greet = defineTask({
      name: "greet",
      input: Schema.Struct({ name: Schema.String }),
      output: Schema.String,
      handler: ({ name }, ctx) => {
        seen.push({ taskId: ctx.taskId, attempt: ctx.attempt, signal: ctx.signal, hasLog: typeof ctx.log.info === "function" });
        return Effect.succeed(`hello ${name}`);
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [greet] });
    const run = await troupe.submit(greet, { name: "ada" });
    expect(await run.result()).toBe("hello ada");
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ taskId: run.id, attempt: 1, hasLog: true });
    expect(seen[0]!.signal.aborted).toBe(false);
  });

  it("fails a task whose handler throws with a typed Execution error and the handler's stack", async () => {
    const boom = defineTask({
      name: "boom",
      input: Schema.Struct({}),
      output: Schema.Void,
      handler: () => {
        throw new NonRetryableError("it broke");
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [boom] });
    const run = await troupe.submit(boom, {});
    const error = await run.result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Execution);
    expect((error as Execution).message).toBe("it broke");
    expect((error as Execution).remoteStack).toContain("NonRetryableError");
    const record = await run.get();
    expect(record).toMatchObject({ status: "FAILED", error: { _tag: "Execution", message: "it broke" } });
  });

  it("delivers only the task types a worker registered", async () => {
    const mul = defineTask({
      name: "math.mul",
      input: Schema.Struct({ a: Schema.Number, b: Schema.Number }),
      output: Schema.Number,
      handler: async ({ a, b }) => a * b,
    });
    const troupe = await connect(server());
    const adder = await troupe.worker({ tasks: [add], concurrency: 4 });
    const multiplier = await troupe.worker({ tasks: [mul], concurrency: 4 });
    const runs = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => troupe.submit(add, { a: i, b: i })),
      ...Array.from({ length: 20 }, (_, i) => troupe.submit(mul, { a: i, b: i })),
    ]);
    await Promise.all(runs.map((r) => r.result()));
    const records = await Promise.all(runs.map((r) => r.get()));
    for (const r of records) expect(r.workerId).toBe(r.task === "math.add" ? adder.id : multiplier.id);
    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    const consumers = [];
    for await (const c of jsm.consumers.list(Topology.TASKS_STREAM)) consumers.push(c.name);
    expect(consumers).toEqual(expect.arrayContaining(["troupe-default-math_add", "troupe-default-math_mul"]));
  });

  it("hands out a run by id to any client, and says when there is no such task", async () => {
    const a = await connect(server());
    const b = await connect(server());
    await a.worker({ tasks: [add] });
    const run = await a.submit(add, { a: 20, b: 22 });
    expect(await b.run(add, run.id).result()).toBe(42);
    const error = await b.run(add, "no-such-task").result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TaskNotFound);
    expect(await b.get("no-such-task")).toBeUndefined();
  });

  it("creates the layout idempotently when many clients connect at once", async () => {
    const many = await Promise.all(Array.from({ length: 6 }, () => connect(server())));
    const workers = await Promise.all(many.map((t) => t.worker({ tasks: [add] })));
    expect(new Set(workers.map((w) => w.id)).size).toBe(6);
  });

  it("runs 10,000 no-op tasks to COMPLETED with correct outputs, readable in KV", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [add], concurrency: 64 });
    const n = 10_000;
    const runs = [];
    for (let i = 0; i < n; i += 1_000) {
      runs.push(...(await Promise.all(Array.from({ length: 1_000 }, (_, j) => troupe.submit(add, { a: i + j, b: 1 })))));
    }
    const results = await Promise.all(runs.map((r) => r.result()));
    expect(results.every((r, i) => r === i + 1)).toBe(true);
    let completed = 0;
    for (let i = 0; i < n; i += 500) {
      const entries = await Promise.all(runs.slice(i, i + 500).map((r) => connectionOf(troupe).tasks.get(r.id)));
      for (const [j, e] of entries.entries()) {
        const d = decodeJson(e!.value);
        const rec = d.ok ? (d.value as { status: string; output: number }) : undefined;
        if (rec?.status === "COMPLETED" && rec.output === i + j + 1) completed++;
      }
    }
    expect(completed).toBe(n);
  }, 180_000);
});

describe("workers as NATS micro services", () => {
  it("answer `nats micro` discovery: ping, info with their tasks, stats with their counters", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ tasks: [add], concurrency: 3 });
    await (await troupe.submit(add, { a: 2, b: 2 })).result();
    const ask = async (subject: string) => decodeJson((await connectionOf(troupe).nc.request(subject, undefined, { timeout: 2_000 })).data);
    const ping = await ask(`$SRV.PING.troupe-worker.${worker.id}`);
    expect(ping.ok && ping.value).toMatchObject({ type: "io.nats.micro.v1.ping_response", name: "troupe-worker", id: worker.id });
    const info = await ask(`$SRV.INFO.troupe-worker.${worker.id}`);
    expect(info.ok && info.value).toMatchObject({
      type: "io.nats.micro.v1.info_response",
      metadata: { tasks: "math.add", concurrency: "3" },
      endpoints: [{ name: "cancel" }, { name: "stats" }, { name: "drain" }, { name: "shutdown" }],
    });
    const stats = await ask(`$SRV.STATS.troupe-worker.${worker.id}`);
    const endpoints = (stats.ok ? (stats.value as { endpoints: Array<{ name: string; data: unknown }> }) : { endpoints: [] }).endpoints;
    expect(endpoints.find((e) => e.name === "stats")?.data).toMatchObject({ id: worker.id, processed: 1, failed: 0 });
  });
});
