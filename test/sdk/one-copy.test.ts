/**
 * Each transition stored once (docs/architecture.md, "Who writes what"): a plain task is four
 * stored messages (its work, its claim, its outcome, its index entry), its history is its
 * record's revisions, and a task is readable by id for as long as it exists, whatever any
 * stream's max age.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { defineTask, Schema, Troupe } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { useNatsServer } from "../helpers/nats.js";

const server = useNatsServer({ monitoring: true });
const open: Troupe[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

const calls: string[] = [];
const echo = defineTask({
  name: "once.echo",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }, ctx) => {
    calls.push(ctx.taskId);
    return n;
  },
});

const counts = async (troupe: Troupe) => {
  const nats = connectionOf(troupe);
  const stored: Record<string, number> = {};
  for await (const s of nats.jsm.streams.list()) stored[s.config.name] = s.state.last_seq;
  const varz = (await (await fetch(`${server().monitoringUrl}/varz`)).json()) as { in_msgs: number };
  return { stored, in: varz.in_msgs };
};

describe("one copy of each transition", () => {
  it("stores four messages per plain task, by stream: work, claim, outcome, index entry", async () => {
    const troupe = await Troupe.connect({ servers: server().url });
    open.push(troupe);
    await troupe.worker({ tasks: [echo], concurrency: 16 });
    const nats = connectionOf(troupe);
    // The index entries are stored before each message is acknowledged (after the result is heard): wait for the acks.
    const settled = () =>
      vi.waitFor(async () => expect((await nats.jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", echo.name))).num_ack_pending).toBe(0));
    await (await troupe.submit(echo, { n: 0 })).result(); // consumers made, a first index entry
    await settled();
    const before = await counts(troupe);
    const n = 300;
    const runs = await Promise.all(Array.from({ length: n }, (_, i) => troupe.submit(echo, { n: i })));
    expect(await Promise.all(runs.map((r) => r.result()))).toEqual(runs.map((_, i) => i));
    await settled();
    const after = await counts(troupe);
    const per = (stream: string) => ((after.stored[stream] ?? 0) - (before.stored[stream] ?? 0)) / n;
    expect(per(Topology.TASKS_STREAM)).toBe(1);
    expect(per(`KV_${Topology.TASKS_BUCKET}`)).toBe(2);
    expect(per(Topology.INDEX_STREAM)).toBe(1);
    expect(per(Topology.EVENTS_STREAM)).toBe(0);
    // Received: the four stored writes and the ack, and at this light load about one pull
    // request per task (under load they serve dozens each: the bench's line shows ~5.1).
    expect((after.in - before.in) / n).toBeLessThan(7);
  });

  it("keeps a task queued past every event retention readable, listable and cancellable by id", async () => {
    // TROUPE_EVENTS keeps its notes one second: once they are gone, nothing but the work message stands for the task.
    const troupe = await Troupe.connect({ servers: server().url, eventsMaxAge: 1_000 });
    open.push(troupe);
    const nats = connectionOf(troupe);
    await nats.jsm.streams.update(Topology.EVENTS_STREAM, { max_age: 1_000 * 1_000_000, duplicate_window: 1_000 * 1_000_000 });
    const run = await troupe.submit(echo, { n: 7 }); // no worker serves it yet
    nats.nc.publish(Topology.eventSubject("task", run.id, "lost"), JSON.stringify({ id: run.id, reason: "a note that expires" }));
    await vi.waitFor(async () => expect((await nats.jsm.streams.info(Topology.EVENTS_STREAM)).state.messages).toBe(1));
    await vi.waitFor(async () => expect((await nats.jsm.streams.info(Topology.EVENTS_STREAM)).state.messages).toBe(0), { timeout: 20_000 });
    // Still there, by id, at every reader.
    expect(await troupe.get(run.id)).toMatchObject({ id: run.id, status: "QUEUED", input: { n: 7 } });
    expect((await troupe.list({ status: "QUEUED", task: echo })).tasks.map((t) => t.id)).toContain(run.id);
    expect((await troupe.history(run.id)).map((e) => e.event)).toEqual(["queued"]);
    expect(await troupe.cancel(run.id)).toMatchObject({ status: "CANCELLED", cancelled: true });
    await expect(run.result({ timeout: "10 seconds" })).rejects.toMatchObject({ _tag: "Cancelled" });
    // A worker that comes later finds it cancelled: its handler never runs.
    const worker = await troupe.worker({ tasks: [echo] });
    await vi.waitFor(() => expect(worker.stats.processed + worker.stats.failed).toBe(0));
    await vi.waitFor(async () => expect((await nats.jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", echo.name))).num_pending).toBe(0));
    expect(calls).not.toContain(run.id);
    expect((await troupe.history(run.id)).map((e) => e.event)).toEqual(["queued", "cancelled"]);
  });

  it("a delivery of a task that ended stores its missing index entry before its message goes", async () => {
    const troupe = await Troupe.connect({ servers: server().url });
    open.push(troupe);
    const nats = connectionOf(troupe);
    const run = await troupe.submit(echo, { n: 3 });
    // Ended by a writer that died before its derivatives: the record alone, written in KV.
    const queued = await run.get();
    await nats.tasks.create(run.id, new TextEncoder().encode(JSON.stringify({ ...queued, status: "COMPLETED", attempt: 1, output: 3, finishedAt: new Date().toISOString() })));
    expect(await run.result({ timeout: "5 seconds" })).toBe(3);
    expect((await troupe.list({ status: "COMPLETED", task: echo })).tasks.map((t) => t.id)).not.toContain(run.id);
    await troupe.worker({ tasks: [echo] });
    await vi.waitFor(async () => expect((await troupe.list({ status: "COMPLETED", task: echo })).tasks.map((t) => t.id)).toContain(run.id), { timeout: 20_000 });
    expect(calls).not.toContain(run.id);
  });

  it("rings idle workers with bells that carry no payload: the work's subject, headers only", async () => {
    const troupe = await Troupe.connect({ servers: server().url });
    open.push(troupe);
    const nats = connectionOf(troupe);
    const bells: Array<{ subject: string; bytes: number; stored?: string }> = [];
    const sub = nats.nc.subscribe("troupe.bells.>", {
      callback: (_e, m) => {
        bells.push({ subject: m.subject, bytes: m.data.length, stored: m.headers?.get("Nats-Subject") });
      },
    });
    await nats.nc.flush();
    const run = await troupe.submit(echo, { n: 1 }, { priority: 2 });
    await vi.waitFor(() => expect(bells).toHaveLength(1));
    sub.unsubscribe();
    expect(bells[0]).toEqual({
      subject: `troupe.bells.default.${run.id}.${echo.name}.@2`,
      bytes: 0,
      stored: Topology.workSubject("default", echo.name, run.id, 2),
    });
    await troupe.cancel(run.id);
  });

  it("releases a wait every asker gave up on: nothing of it stays subscribed", async () => {
    const troupe = await Troupe.connect({ servers: server().url });
    open.push(troupe);
    const subscriptions = () => (connectionOf(troupe).nc as unknown as { protocol: { subscriptions: { size(): number } } }).protocol.subscriptions.size();
    const before = subscriptions();
    const run = await troupe.submit(echo, { n: 2 }); // no worker: it waits
    await expect(run.result({ timeout: 200 })).rejects.toMatchObject({ _tag: "ResultTimeout" });
    await vi.waitFor(() => expect(subscriptions()).toBe(before));
    // Asked again, it waits again, and hears the end.
    const worker = await troupe.worker({ tasks: [echo] });
    expect(await run.result({ timeout: "10 seconds" })).toBe(2);
    await worker.stop();
  });
});
