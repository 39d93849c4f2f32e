/**
 * A layout an earlier version made (work subjects without task ids, record buckets that keep
 * one revision and republish nothing, TROUPE_EVENTS capturing every event): a client says
 * what to do in one line; `troupe setup --migrate` carries its queued work and records over.
 */
import { afterEach, describe, expect, it } from "vitest";
import { headers, connect as natsConnect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, RetentionPolicy } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { defineTask, LayoutOutdated, Schema, Troupe } from "../../src/index.js";
import { setupLayout, Topology } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const echo = defineTask({ name: "mig.echo", input: Schema.Struct({ text: Schema.String }), output: Schema.String, handler: async ({ text }) => text });

const record = (id: string, status: string, extra: Record<string, unknown> = {}) => ({
  id,
  task: echo.name,
  queue: "default",
  status,
  attempt: 0,
  input: { text: id },
  createdAt: new Date().toISOString(),
  ...extra,
});

/** The layout as the version before made it, with a queued task, a queued unique one and a finished one. */
const oldLayout = async (url: string) => {
  const nc = await natsConnect({ servers: url });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  await jsm.streams.add({ name: Topology.TASKS_STREAM, subjects: ["troupe.tasks.>"], retention: RetentionPolicy.Workqueue });
  await jsm.streams.add({ name: Topology.EVENTS_STREAM, subjects: ["troupe.events.>"] });
  const kvm = new Kvm(js);
  const tasks = await kvm.create(Topology.TASKS_BUCKET, { history: 1 });
  await kvm.create(Topology.WORKFLOWS_BUCKET, { history: 1 });
  await kvm.create(Topology.WORKERS_BUCKET, { history: 1, ttl: 30_000 });
  const h = (revision: number) => {
    const hs = headers();
    hs.set("Troupe-Revision", String(revision));
    return hs;
  };
  await js.publish("troupe.tasks.default.mig.echo", JSON.stringify(record("plain-1", "QUEUED")), { headers: h(0), msgID: "plain-1" });
  const unique = await tasks.create("unique-1", JSON.stringify(record("unique-1", "QUEUED")));
  await js.publish("troupe.tasks.default.mig.echo", JSON.stringify(record("unique-1", "QUEUED")), { headers: h(unique), msgID: "unique-1" });
  await tasks.put("done-1", JSON.stringify(record("done-1", "COMPLETED", { attempt: 1, output: "done-1", finishedAt: new Date().toISOString() })));
  await nc.close();
};

describe("a layout from an earlier version", () => {
  it("is refused in one line saying what to do, then carried over by troupe setup --migrate: queued work runs, records stay readable", async () => {
    await oldLayout(server().url);
    const refused = await Troupe.connect({ servers: server().url }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LayoutOutdated);
    expect((refused as LayoutOutdated).message).toContain("troupe setup --migrate");
    expect((refused as LayoutOutdated).message.split("\n")).toHaveLength(1);

    const progress: string[] = [];
    const report = await setupLayout({ servers: server().url }, false, true, (line) => progress.push(line));
    expect(report.migrated).toEqual([`stream ${Topology.TASKS_STREAM}: 2 queued tasks`, `bucket ${Topology.TASKS_BUCKET}: 2 records`]);
    expect(report.drift).toEqual([]);

    const troupe = await connect(server());
    // Readable by id before any worker: the queued ones from their work, the finished one from KV.
    expect(await troupe.get("plain-1")).toMatchObject({ status: "QUEUED" });
    expect(await troupe.get("unique-1")).toMatchObject({ status: "QUEUED" });
    expect(await troupe.get("done-1")).toMatchObject({ status: "COMPLETED", output: "done-1" });
    await troupe.worker({ tasks: [echo] });
    expect(await troupe.run(echo, "plain-1").result({ timeout: "20 seconds" })).toBe("plain-1");
    expect(await troupe.run(echo, "unique-1").result({ timeout: "20 seconds" })).toBe("unique-1");
    // The new layout: each transition kept once, in the record's history; nothing in TROUPE_EVENTS.
    expect((await troupe.history("unique-1")).map((e) => e.event)).toEqual(["queued", "started", "completed"]);
    const nats = (await import("../../src/internals.js")).connectionOf(troupe);
    const events = await nats.jsm.streams.info(Topology.EVENTS_STREAM);
    expect(events.config.subjects).toEqual([Topology.EVENTS_SUBJECTS]);
    // A new task on the migrated layout.
    expect(await (await troupe.submit(echo, { text: "new" })).result({ timeout: "20 seconds" })).toBe("new");
  });
});
