import { afterEach, describe, expect, it } from "vitest";
import { request } from "node:http";
import { defineTask, Schema } from "../../src/index.js";
import { connectionOf, startInspector, type Inspector } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
const open: Inspector[] = [];
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
    const req = request(`${url}/events`, (res) => {
      let buffer = "";
      res.on("data", (d: Buffer) => {
        buffer += d.toString();
        const parts = buffer.split("\n\n");
        buffer = parts.pop() ?? "";
        for (const part of parts) {
          if (part.startsWith(":")) onConnected(); // the stream's opening comment
          if (!part.startsWith("data: ")) continue;
          const e = JSON.parse(part.slice(6)) as { kind: string; id: string; event: string };
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

describe("inspector", () => {
  it("serves the machines, streams transitions live, and shows an actor's record and history", async () => {
    const troupe = await connect(server());
    const inspector = await startInspector(connectionOf(troupe));
    open.push(inspector);

    const machines = (await (await fetch(`${inspector.url}/api/machines`)).json()) as Record<string, { states: Record<string, unknown> }>;
    expect(Object.keys(machines.task!.states)).toEqual(["QUEUED", "RUNNING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED", "LOST"]);
    expect(Object.keys(machines.worker!.states)).toContain("draining");
    expect(Object.keys(machines.workflow!.states)).toContain("RUNNING");
    expect(await (await fetch(inspector.url)).text()).toContain("Troupe inspector");

    await troupe.worker({ tasks: [echo] });
    let id = "";
    const live = sse(inspector.url, (e) => e.kind === "task" && e.id === id && e.event === "completed");
    await live.connected;
    const run = await troupe.submit(echo, { s: "hi" });
    id = run.id;
    await run.result();
    const events = await live.done;
    expect(events.filter((e) => e.id === id).map((e) => e.event)).toEqual(expect.arrayContaining(["started", "completed"]));

    const actor = (await (await fetch(`${inspector.url}/api/actors/task/${id}`)).json()) as {
      record: { status: string };
      events: Array<{ event: string }>;
    };
    expect(actor.record.status).toBe("COMPLETED");
    expect(actor.events.map((e) => e.event)).toEqual(["queued", "started", "completed"]);
    const recent = (await (await fetch(`${inspector.url}/api/recent`)).json()) as Array<{ id: string; event: string }>;
    expect(recent.filter((e) => e.id === id).map((e) => e.event)).toEqual(["queued", "started", "completed"]);
    expect((await fetch(`${inspector.url}/api/actors/task/nope`)).status).toBe(404);
    expect((await fetch(`${inspector.url}/api/actors/planet/x`)).status).toBe(400);
  });
});
