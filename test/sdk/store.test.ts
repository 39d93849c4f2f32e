/**
 * The task store's promises: a terminal record is always announced (or repaired by whoever
 * finds it), a waiting client never depends on one notify, and nothing that throws leaves
 * a task RUNNING. Dead workers are played by the test against the real server: it takes a
 * delivery and writes what a worker would, then stops where a SIGKILL would stop it.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import type { JsMsg } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { defineTask, Internal, Schema, type TaskRecord } from "../../src/index.js";
import { connectionOf, ensureTaskConsumer, nextRecord, Topology, type Stored } from "../../src/internals.js";
import { encodeJson } from "../../src/nats/codec.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { recordWhere } from "../helpers/records.js";
import { startProxy } from "../helpers/proxy.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

let calls = 0;
const echo = defineTask({
  name: "store.echo",
  input: Schema.Struct({ text: Schema.String }),
  output: Schema.String,
  heartbeatTimeout: 600,
  handler: async ({ text }) => {
    calls++;
    return text;
  },
});

/** Take the task's next delivery as a worker would, without ever settling it. */
const takeDelivery = async (troupe: Parameters<typeof connectionOf>[0], task: typeof echo) => {
  const nats = connectionOf(troupe);
  const consumer = await ensureTaskConsumer(nats.jsm, task.queue, task.name, { ackWaitMs: task.heartbeatTimeout, maxDeliver: task.maxDeliveries });
  const delivery = await (await nats.js.consumers.get(Topology.TASKS_STREAM, consumer)).next({ expires: 5_000 });
  expect(delivery).not.toBeNull();
  return delivery!;
};

/**
 * Write what a worker's attempt writes, RUNNING then COMPLETED, and nothing else: the claim
 * starts from the delivered record and the revision it carries (0: a create).
 */
const writeLikeAWorker = async (troupe: Parameters<typeof connectionOf>[0], delivery: JsMsg, output: unknown): Promise<TaskRecord> => {
  const tasks = connectionOf(troupe).tasks;
  const queued: Stored = { record: delivery.json<TaskRecord>(), revision: Number(delivery.headers?.get("Troupe-Revision")) };
  const id = queued.record.id;
  const running = nextRecord(queued, { type: "START", workerId: "w-dead", at: Date.now() })!;
  const revision =
    queued.revision === 0 ? await tasks.create(id, encodeJson(running)) : await tasks.update(id, encodeJson(running), queued.revision);
  const completed = nextRecord({ record: running, revision }, { type: "EXECUTED", execution: { ok: true, output, at: Date.now() } })!;
  await tasks.update(id, encodeJson(completed), revision);
  return completed;
};

describe("the task store", () => {
  it("a worker killed between its terminal write and its index entry: the write is heard at once, the redelivery stores the entry", async () => {
    calls = 0;
    const troupe = await connect(server());
    const run = await troupe.submit(echo, { text: "kept" });
    await writeLikeAWorker(troupe, await takeDelivery(troupe, echo), "kept");
    // The write itself is what waits hear: no announcement was needed.
    expect(await run.result({ timeout: "4 seconds" })).toBe("kept");
    const entries = async () => {
      const info = await connectionOf(troupe).jsm.streams.info(Topology.INDEX_STREAM, { subjects_filter: Topology.taskIndexSubject("COMPLETED", echo.queue, echo.name) });
      return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    };
    expect(await entries()).toBe(0); // it died before its index entry
    expect((await troupe.list({ status: "COMPLETED", task: echo })).tasks).toHaveLength(0);

    await troupe.worker({ tasks: [echo] }); // gets the redelivery once the dead worker's lease lapses
    await vi.waitFor(async () => expect(await entries()).toBe(1), { timeout: 20_000 });
    expect((await troupe.list({ status: "COMPLETED", task: echo })).tasks.map((t) => t.id)).toEqual([run.id]);
    expect(calls).toBe(0); // the committed result stands: the handler did not run again
  });

  it("a waiting client re-reads the record when the write's publish to it is lost", async () => {
    // The client's connection loses every task write the server sends it (a core publish lost on the way).
    const proxy = await startProxy({ host: "127.0.0.1", port: server().port });
    const troupe = await connect(proxy);
    proxy.dropping((subject) => subject.startsWith("troupe.events.task."));
    const run = await troupe.submit(echo, { text: "quiet" });
    const waiting = run.result({ timeout: "20 seconds" });
    const other = troupe.run(echo, run.id).result({ timeout: "20 seconds" });
    const delivery = await takeDelivery(troupe, echo);
    await writeLikeAWorker(troupe, delivery, "quiet");
    delivery.ack();
    expect(await waiting).toBe("quiet");
    expect(await other).toBe("quiet");
    expect(proxy.dropped).toBeGreaterThan(0);
    await troupe.close();
    await proxy.cut();
  });

  it("an exception inside a task actor ends the task FAILED with Internal, never RUNNING", async () => {
    const sound = defineTask({
      name: "store.broken",
      input: Schema.Struct({}),
      output: Schema.Void,
      retry: { attempts: 2 },
      handler: async () => {
        throw new Error("fails once");
      },
    });
    // A policy that slipped past validation (the old "50 millis" delay): computing the retry throws.
    const broken = { ...sound, policy: { ...sound.policy, retry: { ...sound.policy.retry, delay: "50 millis" as unknown as number } } };
    const troupe = await connect(server());
    await troupe.worker({ tasks: [broken] });
    const run = await troupe.submit(broken, {});
    const error = await run.result({ timeout: "20 seconds" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Internal);
    expect((error as Internal).message).toContain("task actor failed");
    expect(await run.get()).toMatchObject({ status: "FAILED", attempt: 1, error: { _tag: "Internal", retryable: false } });
  });

  it("a stored record that cannot be read ends the task FAILED with Internal", async () => {
    const troupe = await connect(server());
    const run = await troupe.submit(echo, { text: "lost" });
    await connectionOf(troupe).tasks.put(run.id, "not a task record");
    await troupe.worker({ tasks: [echo] });
    const error = await run.result({ timeout: "20 seconds" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Internal);
    expect((error as Internal).message).toContain("unreadable");
    const record = await recordWhere(troupe, run.id, (r) => r.status === "FAILED");
    expect(record.error).toMatchObject({ _tag: "Internal" });
  });

  it("a second work message for a running task is a duplicate, not a lost worker: the handler runs once", async () => {
    let calls = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const held = defineTask({
      name: "store.held",
      input: Schema.Struct({ text: Schema.String }),
      output: Schema.String,
      heartbeatTimeout: 600,
      handler: async ({ text }) => {
        calls++;
        await released;
        return text;
      },
    });
    const troupe = await connect(server());
    const nats = connectionOf(troupe);
    await troupe.worker({ tasks: [held] });
    await troupe.worker({ tasks: [held] }); // free to take the duplicate while the first is busy
    const run = await troupe.submit(held, { text: "once" });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING");
    // The same QUEUED record again under another message id: as a re-enqueue past the duplicate window would.
    const queued = await nats.jsm.streams.getMessage(Topology.TASKS_STREAM, { last_by_subj: Topology.workOfTask(run.id) });
    const h = headers();
    h.set("Troupe-Revision", "0");
    await nats.js.publish(Topology.workSubject(held.queue, held.name, run.id), queued!.data, { msgID: `${run.id}-again`, headers: h });
    // The duplicate is acknowledged; only the running attempt's message stays pending.
    const consumer = Topology.consumerName(held.queue, held.name);
    await vi.waitFor(async () => {
      const info = await nats.jsm.consumers.info(Topology.TASKS_STREAM, consumer);
      expect(info.num_pending + info.num_ack_pending).toBe(1);
      expect(info.delivered.stream_seq).toBeGreaterThanOrEqual(2);
    }, { timeout: 10_000 });
    release();
    expect(await run.result({ timeout: "20 seconds" })).toBe("once");
    expect(calls).toBe(1);
    expect(await run.get()).toMatchObject({ status: "COMPLETED", attempt: 1 });
  });
});
