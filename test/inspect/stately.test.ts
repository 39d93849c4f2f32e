import { afterEach, describe, expect, it } from "vitest";
import { createInspector, type StatelyInspectionEvent } from "@statelyai/inspect";
import { jetstream } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { bridgeToStately, defineTask, Schema, type StatelyBridge } from "../../src/index.js";
import { connectionOf, taskMachine, Topology } from "../../src/internals.js";
import { serveStately, stateValueOf } from "../../src/inspect/stately.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer({ monitoring: true });
const { connect, closeAll } = clients();
const bridges: StatelyBridge[] = [];
afterEach(async () => {
  await Promise.all(bridges.splice(0).map((b) => b.close()));
  await closeAll();
});

/** Stately's side of the wire: the adapter records what the real inspector sends it. */
const recorder = () => {
  const sent: StatelyInspectionEvent[] = [];
  const waiters: Array<() => void> = [];
  const inspector = createInspector({
    send: (e) => {
      sent.push(e);
      for (const w of waiters.splice(0)) w();
    },
  });
  const until = (check: (sent: StatelyInspectionEvent[]) => boolean, timeoutMs = 20_000) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not seen within ${timeoutMs} ms: ${JSON.stringify(sent.map((e) => e.type))}`)), timeoutMs);
      const look = () => {
        if (check(sent)) {
          clearTimeout(timer);
          resolve();
        } else waiters.push(look);
      };
      look();
    });
  return { inspector, sent, until };
};

type Snapshot = Extract<StatelyInspectionEvent, { type: "@xstate.snapshot" }>;
const snapshots = (sent: StatelyInspectionEvent[]) => sent.filter((e): e is Snapshot => e.type === "@xstate.snapshot");
/** What the bridge put in a snapshot (the inspector's type is XState's union of snapshots). */
const stateOf = (s: Snapshot) => s.snapshot as { status?: string; value?: unknown; context?: unknown };
const topOf = (value: unknown) => (typeof value === "string" ? value : Object.keys(value as object)[0]);

/** The subscriptions of every client connection, from the server's monitoring endpoint (`/connz`). */
const subscriptions = async () => {
  const connz = (await (await fetch(`${server().monitoringUrl}/connz`)).json()) as { connections: Array<{ subscriptions: number }> };
  return connz.connections.reduce((n, c) => n + c.subscriptions, 0);
};
const eventually = async (check: () => Promise<boolean>, timeoutMs = 20_000) => {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not met");
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe("bridgeToStately", () => {
  it("registers the task with its machine, sends each event and snapshot in order, history then live, until closed", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const steps = defineTask({
      name: "stately.steps",
      input: Schema.Struct({ n: Schema.Number }),
      output: Schema.Number,
      handler: async ({ n }, { progress }) => {
        progress({ done: 1, of: n });
        await gate;
        return n;
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [steps] });
    const run = await troupe.submit(steps, { n: 2 });

    const first = recorder();
    const bridge = await bridgeToStately(troupe, { kind: "task", id: run.id }, first.inspector);
    bridges.push(bridge);
    expect(bridge.sessionId).toBe(`task:${run.id}`);
    // The handler holds until the progress is seen, so the completion comes live.
    await first.until((sent) => snapshots(sent).some((s) => s.event.type === "progress"));
    release();
    expect(await run.result()).toBe(2);
    await first.until((sent) => snapshots(sent).some((s) => topOf(stateOf(s).value) === "COMPLETED"));

    const [registration, ...rest] = first.sent;
    expect(registration?.type).toBe("@xstate.actor");
    if (registration?.type !== "@xstate.actor") throw new Error("no registration");
    expect(registration.sessionId).toBe(`task:${run.id}`);
    expect(registration.name).toBe("task");
    const definition = JSON.parse(registration.definition ?? "{}") as { id: string; initial: string; states: Record<string, { states?: Record<string, unknown> }> };
    expect(definition.id).toBe("task");
    expect(definition.initial).toBe("QUEUED");
    // Keys arrive sorted (the inspector serializes with stable key order).
    expect(Object.keys(definition.states).sort()).toEqual(Object.keys(taskMachine.config.states ?? {}).sort());
    expect(Object.keys(definition.states.RUNNING?.states ?? {})).toEqual(["claiming", "executing", "failing"].sort());
    expect(registration.snapshot.value).toBe("QUEUED");

    // Each event is an event, then the snapshot it led to, carrying it.
    const pairs: Array<[string, string]> = [];
    for (let i = 0; i < rest.length; i += 2) {
      const [event, snapshot] = [rest[i], rest[i + 1]];
      expect(event?.type).toBe("@xstate.event");
      expect(snapshot?.type).toBe("@xstate.snapshot");
      if (event?.type !== "@xstate.event" || snapshot?.type !== "@xstate.snapshot") throw new Error("out of order");
      expect(snapshot.event).toEqual(event.event);
      pairs.push([event.event.type, JSON.stringify(stateOf(snapshot).value)]);
    }
    expect(pairs).toEqual([
      ["queued", JSON.stringify("QUEUED")],
      ["started", JSON.stringify({ RUNNING: "executing" })],
      ["progress", JSON.stringify({ RUNNING: "executing" })],
      ["completed", JSON.stringify({ COMPLETED: "saved" })],
    ]);
    const last = snapshots(first.sent).at(-1)!;
    expect(stateOf(last).status).toBe("active"); // COMPLETED is not a top-level final state of the task machine
    expect(stateOf(last).context).toMatchObject({ id: run.id, task: "stately.steps", status: "COMPLETED", output: 2 });
    const progressed = snapshots(first.sent).find((s) => s.event.type === "progress")!;
    expect(stateOf(progressed).context).toMatchObject({ status: "RUNNING", progress: { data: { done: 1, of: 2 } } });
    const seqs = snapshots(first.sent).map((s) => s.event.seq as number);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));

    // Closed: an event stored afterwards reaches a new bridge, not the closed one.
    await bridge.close();
    const count = first.sent.length;
    const record = stateOf(last).context as Record<string, unknown>;
    // A write with the state path a live actor would give it: the path wins over the record's status.
    const h = headers();
    h.set(Topology.Headers.state, "RUNNING.claiming");
    const late = JSON.stringify({ ...record, status: "RUNNING", progress: { data: "late", at: new Date().toISOString() } });
    await jetstream(connectionOf(troupe).nc).publish(Topology.kvSubject(Topology.TASKS_BUCKET, run.id), late, { headers: h });
    const before = await subscriptions();
    const second = recorder();
    const again = await bridgeToStately(troupe, { kind: "task", id: run.id }, second.inspector);
    await second.until((sent) => snapshots(sent).length === 5);
    expect(snapshots(second.sent).map((s) => s.event.type)).toEqual(["queued", "started", "progress", "completed", "progress"]);
    expect(stateOf(snapshots(second.sent).at(-1)!).value).toEqual({ RUNNING: "claiming" });
    expect(first.sent.length).toBe(count);
    expect(await subscriptions()).toBeGreaterThan(before);
    await again.close();
    await again.close(); // idempotent
    // Nothing left open: the server sees the consumer's subscription go.
    await eventually(async () => (await subscriptions()) === before);
  }, 60_000);

  it("serves Stately's page for one actor (troupe inspect --stately) on loopback with a token, fed by server-sent events", async () => {
    const echo = defineTask({ name: "stately.echo", input: Schema.String, output: Schema.String, handler: async (s) => s });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [echo] });
    const run = await troupe.submit(echo, "hi");
    await run.result();
    await expect(serveStately(troupe, "task")).rejects.toMatchObject({ _tag: "InvalidOption" });
    const stately = await serveStately(troupe, `task:${run.id}`);
    try {
      expect(new URL(stately.url).hostname).toBe("127.0.0.1");
      expect(stately.link).toBe(`${stately.url}/?token=${stately.token}`);
      // The page frames Stately's UI, and keeps the token in a cookie for its own stream.
      const page = await fetch(stately.link);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain("https://stately.ai/inspect");
      expect(page.headers.get("set-cookie")).toMatch(new RegExp(`^troupe-stately-\\d+=${stately.token}; Path=/; HttpOnly; SameSite=Strict$`));
      // What the page's script reads: the registration, then each event and snapshot, history first.
      const abort = new AbortController();
      const stream = await fetch(`${stately.url}/events`, { headers: { authorization: `Bearer ${stately.token}` }, signal: abort.signal });
      expect(stream.headers.get("content-type")).toBe("text/event-stream");
      const reader = stream.body!.getReader();
      const received: Array<{ type: string; sessionId: string; event?: { type: string } }> = [];
      let text = "";
      const deadline = Date.now() + 20_000;
      while (received.filter((e) => e.type === "@xstate.snapshot").length < 3 && Date.now() < deadline) {
        const chunk = await reader.read();
        if (chunk.done) break;
        text += new TextDecoder().decode(chunk.value);
        const parts = text.split("\n\n");
        text = parts.pop() ?? "";
        for (const part of parts) {
          const data = part.split("\n").find((l) => l.startsWith("data: "));
          if (data !== undefined) received.push(JSON.parse(data.slice(6)) as (typeof received)[number]);
        }
      }
      abort.abort();
      expect(received[0]).toMatchObject({ type: "@xstate.actor", name: "task", sessionId: `task:${run.id}` });
      expect(received.filter((e) => e.type === "@xstate.snapshot").map((e) => e.event?.type)).toEqual(["queued", "started", "completed"]);
    } finally {
      await stately.close();
    }
  }, 60_000);

  it("draws an actor with no events yet in its machine's initial state, and refuses a malformed target", async () => {
    const troupe = await connect(server());
    const { inspector, sent } = recorder();
    const bridge = await bridgeToStately(troupe, { kind: "workflow", id: "not-yet" }, inspector);
    bridges.push(bridge);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ type: "@xstate.actor", name: "workflow", sessionId: "workflow:not-yet", snapshot: { value: "PENDING" } });
    await expect(bridgeToStately(troupe, { kind: "task", id: "a.b" }, inspector)).rejects.toMatchObject({ _tag: "InvalidOption" });
    await expect(bridgeToStately(troupe, { kind: "planet" as "task", id: "x" }, inspector)).rejects.toMatchObject({ _tag: "InvalidOption" });
    expect(stateValueOf("QUEUED")).toBe("QUEUED");
    expect(stateValueOf("draining.interrupting")).toEqual({ draining: "interrupting" });
    expect(stateValueOf("a.b.c")).toEqual({ a: { b: "c" } });
  }, 60_000);
});
