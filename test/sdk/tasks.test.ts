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
  it("runs a typed task and stores each transition once: the record's revisions in KV are its history", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [add], concurrency: 4 });
    const run = await troupe.submit(add, { a: 1, b: 2 });
    expect(await run.result()).toBe(3);
    const record = await troupe.get(run.id);
    expect(record).toMatchObject({ id: run.id, task: "math.add", status: "COMPLETED", attempt: 1, input: { a: 1, b: 2 }, output: 3 });
    expect(record?.workerId).toMatch(/^w-/);
    expect(Date.parse(record!.finishedAt!)).toBeGreaterThanOrEqual(Date.parse(record!.startedAt!));

    // The record is plain JSON under the task id, as `nats kv get troupe-tasks <id>` shows it,
    // and `nats kv history troupe-tasks <id>` its writes: the claim and the outcome.
    const nats = connectionOf(troupe);
    const entry = await nats.tasks.get(run.id);
    const raw = decodeJson(entry!.value);
    expect(raw.ok && (raw.value as { status: string }).status).toBe("COMPLETED");
    const revisions: string[] = [];
    for await (const e of await nats.tasks.history({ key: run.id })) revisions.push(e.json<{ status: string }>().status);
    expect(revisions).toEqual(["RUNNING", "COMPLETED"]);
    // The history: its QUEUED state (its work message, which the claim's record says), then each write.
    const history = await troupe.history(run.id);
    expect(history.map((e) => [e.event, (e.record as { status: string }).status])).toEqual([
      ["queued", "QUEUED"],
      ["started", "RUNNING"],
      ["completed", "COMPLETED"],
    ]);
    expect(history.map((e) => e.seq).slice(1)).toEqual([...history.map((e) => e.seq).slice(1)].sort((a, b) => a - b));
    expect(history.at(-1)?.seq).toBe(entry!.revision);
    // No second copy: TROUPE_EVENTS holds nothing of it.
    const events = await nats.jsm.streams.info(Topology.EVENTS_STREAM, { subjects_filter: `troupe.events.task.${run.id}.>` });
    expect(events.state.subjects ?? {}).toEqual({});
  });

  it("tells waiting clients of their tasks' ends from the bucket's own publish of each write (RePublish), with its revision", async () => {
    const a = await connect(server());
    const b = await connect(server());
    await a.worker({ tasks: [add], concurrency: 8 });
    const heard = new Map<string, Array<{ status: string; revision: number }>>();
    const watcher = connectionOf(a).nc.subscribe("troupe.events.task.*", {
      callback: (_e, msg) => {
        const decoded = decodeJson(msg.data);
        if (!decoded.ok) return;
        const id = msg.subject.split(".")[3]!;
        heard.set(id, [...(heard.get(id) ?? []), { status: (decoded.value as { status: string }).status, revision: Number(msg.headers?.get("Nats-Sequence")) }]);
      },
    });
    await connectionOf(a).nc.flush();
    // 100 waits at once in each client: past the point where a client listens to every task's writes.
    const runs = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 === 0 ? a : b).submit(add, { a: i, b: 1 })));
    expect(await Promise.all(runs.map((r) => r.result()))).toEqual(runs.map((_, i) => i + 1));
    await connectionOf(a).nc.flush();
    watcher.unsubscribe();
    for (const run of runs) {
      const stored = await connectionOf(a).tasks.get(run.id);
      // Each write heard once, the last the stored one, at its revision.
      expect(heard.get(run.id)?.map((h) => h.status)).toEqual(["RUNNING", "COMPLETED"]);
      expect(heard.get(run.id)?.at(-1)?.revision).toBe(stored!.revision);
    }
  });

  it("settles a wait from stored writes only: a write that lost its compare-and-set is never heard", async () => {
    const troupe = await connect(server());
    const run = await troupe.submit(add, { a: 2, b: 2 }); // no worker serves it yet
    const queued = await run.get();
    const forged = { ...queued, status: "COMPLETED", attempt: 1, output: 99, finishedAt: new Date().toISOString() };
    // A write over a revision the record does not have is refused by the bucket, and so never republished.
    const refused = await connectionOf(troupe)
      .publisher.publish(Topology.kvSubject(Topology.TASKS_BUCKET, run.id), new TextEncoder().encode(JSON.stringify(forged)), { lastSubjectSequence: 12_345 })
      .catch((e: unknown) => e);
    expect(refused).toMatchObject({ _tag: "PublishRejected", errCode: 10071 });
    await expect(run.result({ timeout: "1 second" })).rejects.toMatchObject({ _tag: "ResultTimeout" });
    await troupe.worker({ tasks: [add] });
    expect(await run.result({ timeout: "20 seconds" })).toBe(4);
  });

  it("hears large results that end together, each its own write", async () => {
    const big = defineTask({
      name: "big.output",
      input: Schema.Struct({ i: Schema.Number }),
      output: Schema.String,
      handler: async ({ i }) => String(i).padEnd(400_000, "x"),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [big], concurrency: 8 });
    const runs = await Promise.all(Array.from({ length: 8 }, (_, i) => troupe.submit(big, { i })));
    // Well before a wait's first re-read of KV (5 s): these come from the republished writes.
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
