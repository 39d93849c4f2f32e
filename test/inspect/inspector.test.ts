import { afterEach, describe, expect, it } from "vitest";
import { request } from "node:http";
import { defineTask, defineWorkflow, Schema } from "../../src/index.js";
import { headers } from "@nats-io/transport-node";
import { connectionOf, startInspector, Topology, type Inspector } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
const open: Inspector[] = [];
/** Each inspector's token, by its address: the tests call it as a program does, with `Authorization: Bearer`. */
const tokens = new Map<string, string>();
const serving = (inspector: Inspector): Inspector => {
  tokens.set(inspector.url, inspector.token);
  open.push(inspector);
  return inspector;
};
const auth = (url: string): Record<string, string> => {
  const token = tokens.get(new URL(url).origin);
  return token === undefined ? {} : { authorization: `Bearer ${token}` };
};
const authed = (url: string, init: RequestInit = {}) => fetch(url, { ...init, headers: { ...auth(url), ...(init.headers as Record<string, string> | undefined) } });
afterEach(async () => {
  await Promise.all(open.splice(0).map((i) => i.close()));
  await closeAll();
});

const echo = defineTask({ name: "echo", input: Schema.Struct({ s: Schema.String }), output: Schema.String, handler: async ({ s }) => s });

/** Server-sent events from the inspector: `connected` once the stream is open, `done` when `until` says enough. */
const sse = (url: string, until: (event: { kind: string; id: string; event: string }) => boolean) => {
  let onConnected!: () => void;
  const connected = new Promise<void>((r) => (onConnected = r));
  const done = new Promise<Array<{ kind: string; id: string; event: string }>>((resolve, reject) => {
    const seen: Array<{ kind: string; id: string; event: string }> = [];
    const req = request(`${url}/events`, { headers: auth(url) }, (res) => {
      let buffer = "";
      res.on("data", (d: Buffer) => {
        buffer += d.toString();
        const parts = buffer.split("\n\n");
        buffer = parts.pop() ?? "";
        for (const part of parts) {
          if (part.startsWith(":")) onConnected(); // the stream's opening comment
          const data = part.split("\n").find((l) => l.startsWith("data: "));
          if (data === undefined) continue;
          const e = JSON.parse(data.slice(6)) as { kind: string; id: string; event: string };
          seen.push(e);
          if (until(e)) {
            req.destroy();
            resolve(seen);
          }
        }
      });
    });
    req.on("error", (e) => (seen.length > 0 ? undefined : reject(e)));
    req.end();
  });
  return { connected, done };
};

type Event = { kind: string; id: string; event: string; seq: number; at: string; state?: string; record: { status?: string } | null };

const getJson = async <T>(url: string): Promise<T> => (await authed(url)).json() as Promise<T>;
/** A GET with another Host header than the inspector's address. */
const statusWithHost = (url: string, host: string) =>
  new Promise<number>((resolve, reject) => {
    const req = request(url, { headers: { ...auth(url), host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on("error", reject);
    req.end();
  });
const post = (url: string, headers: Record<string, string> = { "X-Troupe-Action": "1" }) => authed(url, { method: "POST", headers });

describe("inspector", () => {
  it("serves the machines laid out, streams transitions live with the actor's state path, and shows an actor's record and history", async () => {
    const troupe = await connect(server());
    const inspector = serving(await startInspector(connectionOf(troupe)));

    const machines = await getJson<Record<string, { nodes: Array<{ path: string }>; edges: unknown[] }>>(`${inspector.url}/api/machines`);
    expect(machines.task!.nodes.map((n) => n.path)).toEqual(expect.arrayContaining(["QUEUED", "RUNNING", "RUNNING.executing", "RUNNING.failing", "RETRYING.waiting", "COMPLETED", "LOST"]));
    expect(machines.worker!.nodes.map((n) => n.path)).toContain("draining.finishing");
    expect(machines.workflow!.nodes.map((n) => n.path)).toContain("RUNNING");
    expect(machines.task!.edges.length).toBeGreaterThan(10);
    expect(await (await authed(inspector.url)).text()).toContain("Troupe inspector");

    await troupe.worker({ tasks: [echo] });
    let id = "";
    const live = sse(inspector.url, (e) => e.kind === "task" && e.id === id && e.event === "completed");
    await live.connected;
    const run = await troupe.submit(echo, { s: "hi" });
    id = run.id;
    await run.result();
    const events = (await live.done) as Event[];
    const mine = events.filter((e) => e.id === id);
    expect(mine.map((e) => [e.event, e.state])).toEqual(expect.arrayContaining([["started", "RUNNING.executing"], ["completed", "COMPLETED.saved"]]));
    expect(mine.every((e) => typeof e.seq === "number" && !Number.isNaN(Date.parse(e.at)))).toBe(true);

    const actor = await getJson<{ record: { status: string }; state: string; events: Event[] }>(`${inspector.url}/api/actors/task/${id}`);
    expect(actor.record.status).toBe("COMPLETED");
    expect(actor.state).toBe("COMPLETED.saved");
    expect(actor.events.map((e) => [e.event, e.state])).toEqual([["queued", "QUEUED"], ["started", "RUNNING.executing"], ["completed", "COMPLETED.saved"]]);
    // Time travel: the record and state as of the `started` event.
    const started = actor.events[1]!;
    const then = await getJson<{ event: Event }>(`${inspector.url}/api/actors/task/${id}/at/${started.seq}`);
    expect(then.event).toMatchObject({ event: "started", state: "RUNNING.executing", seq: started.seq, at: started.at, record: { status: "RUNNING" } });
    // Another actor's event is not this one's.
    expect((await authed(`${inspector.url}/api/actors/task/other/at/${started.seq}`)).status).toBe(404);

    const recent = await getJson<Event[]>(`${inspector.url}/api/recent`);
    expect(recent.filter((e) => e.id === id).map((e) => e.event)).toEqual(["queued", "started", "completed"]);
    expect((await authed(`${inspector.url}/api/actors/task/nope`)).status).toBe(404);
    expect((await authed(`${inspector.url}/api/actors/planet/x`)).status).toBe(400);
    // A late attempt's loss (it was fenced after another attempt completed the task) is its own event, not the task's state.
    const h = headers();
    h.set(Topology.Headers.state, "LOST");
    connectionOf(troupe).nc.publish(`troupe.events.task.${id}.lost`, JSON.stringify({ id, attempt: 1, wanted: "COMPLETED", reason: "fenced" }), { headers: h });
    await expect.poll(async () => (await getJson<{ events: Event[] }>(`${inspector.url}/api/actors/task/${id}`)).events.at(-1)?.event, { timeout: 20_000 }).toBe("lost");
    expect(await getJson(`${inspector.url}/api/actors/task/${id}`)).toMatchObject({ state: "COMPLETED.saved", record: { status: "COMPLETED" } });
    // Another name for this address (a rebound DNS name) gets nothing.
    expect(await statusWithHost(`${inspector.url}/api/recent`, "evil.example:80")).toBe(421);
    // Read-only without actions.
    expect(await getJson(`${inspector.url}/api/config`)).toEqual({ actions: false });
    expect((await post(`${inspector.url}/api/tasks/${id}/retry`)).status).toBe(405);
  });

  it("draws a workflow run's steps with their live status and says why a step waits; cancels through its SDK call", async () => {
    const troupe = await connect(server());
    const inspector = serving(
      await startInspector(connectionOf(troupe), {
        actions: { retry: (id) => troupe.retry(id), cancel: (id) => troupe.cancel(id), cancelWorkflow: (id) => troupe.cancelWorkflow(id) },
      }),
    );
    const unserved = defineTask({ name: "inspector.unserved", input: Schema.Struct({ s: Schema.String }), output: Schema.String, handler: async ({ s }) => s });
    const flow = defineWorkflow({
      name: "inspector.flow",
      input: Schema.Struct({ s: Schema.String }),
      steps: { first: { task: echo, input: { s: "${input.s}" } }, second: { task: unserved, after: ["first"], input: { s: "${first}" } } },
    });
    await troupe.worker({ tasks: [echo] });
    await troupe.coordinator();
    const run = await troupe.start(flow, { s: "x" });
    type Graph = { status: string; dag: { nodes: Array<{ step: string; x: number }> }; steps: Array<{ step: string; status: string; task: string; stuck?: string; durationMs?: number; taskId?: string }> };
    const graph = () => getJson<Graph>(`${inspector.url}/api/workflows/${run.id}/graph`);
    await expect.poll(async () => (await graph()).steps.find((s) => s.step === "second")?.status, { timeout: 30_000 }).toBe("QUEUED");
    const g = await graph();
    expect(g.steps.find((s) => s.step === "first")).toMatchObject({ status: "COMPLETED", task: "echo" });
    expect(g.steps.find((s) => s.step === "first")!.durationMs).toBeGreaterThanOrEqual(0);
    expect(g.steps.find((s) => s.step === "second")!.stuck).toBe('no worker serves task "inspector.unserved" on queue "default"');
    const [first, second] = ["first", "second"].map((s) => g.dag.nodes.find((n) => n.step === s)!);
    expect(first!.x).toBeLessThan(second!.x);

    // Actions need the header; then the run is cancelled through the SDK.
    expect((await post(`${inspector.url}/api/workflows/${run.id}/cancel`, {})).status).toBe(403);
    expect((await post(`${inspector.url}/api/workers/w/drain`)).status).toBe(404);
    const cancelled = await post(`${inspector.url}/api/workflows/${run.id}/cancel`);
    expect(cancelled.status).toBe(200);
    await expect.poll(async () => (await troupe.getWorkflow(run.id))?.status, { timeout: 30_000 }).toBe("CANCELLED");
    await expect.poll(async () => (await graph()).steps.find((s) => s.step === "second")?.status, { timeout: 30_000 }).toBe("CANCELLED");
    const history = await getJson<{ events: Event[] }>(`${inspector.url}/api/actors/workflow/${run.id}`);
    expect(history.events.at(-1)).toMatchObject({ event: "cancelled", state: "CANCELLED" });
  }, 90_000);
});
