/** Priorities against a real server: higher first among a type's waiting tasks, FIFO within one. */
import { afterEach, describe, expect, it, vi } from "vitest";
import { defineTask, InvalidOption, Schema } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

/** A task that notes the order its handlers start in. */
const ordered = (name: string) => {
  const started: number[] = [];
  const task = defineTask({
    name,
    input: Schema.Struct({ i: Schema.Number }),
    output: Schema.Number,
    handler: async ({ i }) => {
      started.push(i);
      return i;
    },
  });
  return { task, started };
};

describe("priorities", () => {
  it("runs 10 high-priority tasks before the 100 low ones queued before them, each priority in order", async () => {
    const troupe = await connect(server());
    const { task, started } = ordered("prio.order");
    const low = await Promise.all(Array.from({ length: 100 }, (_, i) => troupe.submit(task, { i }, { priority: 5 })));
    const high = await Promise.all(Array.from({ length: 10 }, (_, i) => troupe.submit(task, { i: 1_000 + i }, { priority: 1 })));
    await troupe.worker({ tasks: [task], concurrency: 1 });
    await Promise.all([...low, ...high].map((r) => r.result({ timeout: 30_000 })));
    expect(started.slice(0, 10)).toEqual(Array.from({ length: 10 }, (_, i) => 1_000 + i));
    expect(started.slice(10)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    // In the record and its history; the work message on the priority's own subject.
    expect((await high[0]!.get()).priority).toBe(1);
    expect((await low[0]!.get()).priority).toBe(5);
    const queued = (await troupe.history(high[0]!.id))[0];
    expect(queued).toMatchObject({ event: "queued", record: { status: "QUEUED", priority: 1 } });
    expect(Topology.workSubject("default", "prio.order", high[0]!.id, 1)).toBe(`troupe.tasks.default.${high[0]!.id}.prio.order.@1`);
    expect(Topology.taskSubject("default", "prio.order", 1)).toBe("troupe.tasks.default.*.prio.order.@1");
  });

  it("an idle worker takes a priority it sees for the first time at once, and loses nothing doing so", async () => {
    const troupe = await connect(server());
    const { task, started } = ordered("prio.late");
    // Its waiting pull requests last 30 s: work that had to wait for one to end would take that long.
    const worker = await troupe.worker({ tasks: [task], concurrency: 1, pullExpires: 30_000 });
    expect(await (await troupe.submit(task, { i: 0 })).result({ timeout: 10_000 })).toBe(0);
    // The worker is idle: its one slot waits in a pull request on the default priority's
    // consumer. Work at a new priority withdraws that request and is taken at once...
    const urgent = await troupe.submit(task, { i: 1 }, { priority: 2 });
    expect(await urgent.result({ timeout: 10_000 })).toBe(1);
    // ...and nothing is lost to the withdrawn request: default work still runs at once
    // (a message sent to it would wait out its 30 s lease).
    expect(await (await troupe.submit(task, { i: 2 })).result({ timeout: 10_000 })).toBe(2);
    expect(await (await troupe.submit(task, { i: 3 }, { priority: 2 })).result({ timeout: 10_000 })).toBe(3);
    expect(started).toEqual([0, 1, 2, 3]);
    // Its result is heard from its write, before the worker has settled (and counted) its delivery.
    await vi.waitFor(() => expect(worker.stats.processed).toBe(4));
  });

  it("refuses a priority outside 1..5 with InvalidOption, publishing nothing", async () => {
    const troupe = await connect(server());
    const { task } = ordered("prio.bad");
    for (const priority of [0, 6, 2.5, Number.NaN]) {
      const error = await troupe.submit(task, { i: 1 }, { priority }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidOption);
      expect((error as InvalidOption).message).toContain("priority must be an integer from 1 (first) to 5 (last)");
    }
  });
});
