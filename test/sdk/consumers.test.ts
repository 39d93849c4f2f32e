/**
 * Consumers on an idle system: what `troupe dev` runs (a client with a worker, a coordinator
 * with its scheduler, the inspector) holds a fixed set of consumers; periodic readers (the
 * schedule checker, reconciliation) and one-shot readers (registry listings, logs, the
 * inspector's recent events) leave none behind.
 */
import { afterEach, describe, expect, it } from "vitest";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect as natsConnect, type NatsConnection } from "@nats-io/transport-node";
import { defineTask, Schema } from "../../src/index.js";
import { connectionOf, startInspector, Topology, type Inspector } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
const open: Array<{ close(): Promise<unknown> }> = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((o) => o.close()));
  await closeAll();
});

const idle = defineTask({ name: "consumers.idle", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: async ({ n }) => n });

/** Every consumer on every stream, by stream. */
const consumers = async (jsm: JetStreamManager): Promise<Record<string, string[]>> => {
  const all: Record<string, string[]> = {};
  for await (const stream of jsm.streams.list()) {
    const names: string[] = [];
    for await (const c of jsm.consumers.list(stream.config.name)) names.push(c.name);
    all[stream.config.name] = names.sort();
  }
  return all;
};
const total = (all: Record<string, string[]>) => Object.values(all).reduce((n, names) => n + names.length, 0);

/** When the scheduler's leader last renewed its lease (epoch ms): it does so at most once a second, from its passes (four a second). */
const renewedAt = async (nc: NatsConnection): Promise<number> => {
  const entry = await (await new Kvm(nc).open(Topology.LEASES_BUCKET)).get("scheduler");
  return entry?.operation === "PUT" ? Date.parse(entry.json<{ at: string }>().at) : 0;
};

/** Wait, within a bound, for a renewal of the scheduler's lease `ms` after now: the leader's passes went on meanwhile (about four a second). */
const passesFor = async (nc: NatsConnection, ms: number) => {
  const from = Date.now();
  await expect.poll(() => renewedAt(nc), { timeout: 30_000, interval: 100 }).toBeGreaterThanOrEqual(from + ms);
};

describe("consumers on an idle system", () => {
  it("stay as many while the scheduler checks its schedules and reconciliation runs, and readers leave none behind", async () => {
    const troupe = await connect(server());
    const raw = await natsConnect({ servers: server().url });
    open.push({ close: () => raw.close() });
    const jsm = await jetstreamManager(raw);
    await troupe.worker({ tasks: [idle] });
    await troupe.coordinator({ reconcileEvery: 100 });
    const inspector: Inspector = await startInspector(connectionOf(troupe));
    open.push(inspector);
    // A schedule whose next tick is an hour away: read on every check, fired by none.
    await troupe.schedule({ id: "hourly", task: idle, input: { n: 1 }, every: "1 hour" });

    // Leading, and a pass since the first one that led: what a leader keeps open is open.
    await expect.poll(() => troupe.schedulerLeader(), { timeout: 20_000 }).toBeDefined();
    await passesFor(raw, 1_000);
    const before = await consumers(jsm);

    // About twelve schedule checks, and thirty reconciliation passes.
    await passesFor(raw, 3_000);
    // What the CLI and the inspector read, once each, several times.
    for (let i = 0; i < 3; i++) {
      expect((await troupe.workers()).length).toBe(1);
      expect((await troupe.schedules()).map((s) => s.id)).toEqual(["hourly"]);
      expect(await troupe.paused()).toEqual([]);
      for await (const line of troupe.logs()) expect(line).toBeDefined();
      expect((await fetch(`${inspector.url}/api/recent`, { headers: { authorization: `Bearer ${inspector.token}` } })).status).toBe(200);
    }
    const after = await consumers(jsm);

    expect(after).toEqual(before);
    // The worker's, the reaper's, the coordinator's durable consumers, and two watches (the worker's pauses, the schedules).
    expect(total(after)).toBeLessThan(10);
    expect(after[`KV_${Topology.SCHEDULES_BUCKET}`]).toHaveLength(1);
  });

  it("a stopped client leaves no consumer of its own behind", async () => {
    const raw = await natsConnect({ servers: server().url });
    open.push({ close: () => raw.close() });
    const jsm = await jetstreamManager(raw);
    const first = await connect(server());
    // Durable consumers (work, steps, advisories) are the layout's: made once, kept.
    await first.worker({ tasks: [idle] });
    await first.coordinator();
    await first.close();
    const durable = await consumers(jsm);

    const troupe = await connect(server());
    await troupe.worker({ tasks: [idle] });
    await troupe.coordinator();
    await expect.poll(() => troupe.schedulerLeader(), { timeout: 20_000 }).toBeDefined();
    await passesFor(raw, 1_000);
    expect(total(await consumers(jsm))).toBeGreaterThan(total(durable));
    await troupe.close();
    expect(await consumers(jsm)).toEqual(durable);
  });
});
