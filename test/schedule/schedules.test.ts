/**
 * Schedules: tick arithmetic, and against real servers and processes, schedulers that
 * elect one leader through NATS and fire one task per tick, across a leader's death.
 */
import { afterEach, describe, expect, it } from "vitest";
import { defineTask, InvalidInput, InvalidOption, Schema } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { dueTicks, ticksToFire, tickTaskId } from "../../src/schedule/scheduler.js";
import type { ScheduleEntry } from "../../machines/records.js";
import { killCliChildren, spawnCli, waitForOutput } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(async () => {
  killCliChildren();
  await closeAll();
});

const beat = defineTask({ name: "sched.beat", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: async ({ n }) => n });
/** Scheduled with no worker serving it: its ticks stay in the stream, to be counted. */
const unserved = defineTask({ name: "sched.unserved", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: async ({ n }) => n });

const entry = (over: Partial<ScheduleEntry>): ScheduleEntry => ({
  id: "s",
  task: "t",
  queue: "default",
  input: {},
  catchUp: "one",
  createdAt: new Date(0).toISOString(),
  ...over,
});

describe("schedule ticks", () => {
  it("every: whole multiples of the interval after the last tick", () => {
    expect(dueTicks(entry({ everyMs: 1_000 }), 10_500, 13_000)).toEqual([11_000, 12_000, 13_000]);
    expect(dueTicks(entry({ everyMs: 1_000 }), 13_000, 13_999)).toEqual([]);
  });

  it("cron: in its time zone", () => {
    const at = Date.parse("2026-03-01T00:00:00Z");
    const ticks = dueTicks(entry({ cron: "0 9 * * *", timezone: "Europe/Paris" }), at, at + 3 * 86_400_000);
    expect(ticks.map((t) => new Date(t).toISOString())).toEqual(["2026-03-01T08:00:00.000Z", "2026-03-02T08:00:00.000Z", "2026-03-03T08:00:00.000Z"]);
  });

  it("catchUp: none skips missed ticks, one runs the latest missed once, all runs each", () => {
    const now = 100_000;
    const missed = { everyMs: 10_000, lastTick: 50_000 };
    expect(ticksToFire(entry({ ...missed, catchUp: "none" }), now)).toEqual([100_000]);
    expect(ticksToFire(entry({ ...missed, catchUp: "one" }), now)).toEqual([90_000, 100_000]);
    expect(ticksToFire(entry({ ...missed, catchUp: "all" }), now)).toEqual([60_000, 70_000, 80_000, 90_000, 100_000]);
    expect(tickTaskId("nightly", 90_000)).toBe("nightly-90000");
  });
});

describe("schedules", () => {
  it("refuses what cannot be scheduled, naming it", async () => {
    const troupe = await connect(server());
    const bad = (options: Parameters<typeof troupe.schedule>[0]) => troupe.schedule(options).catch((e: unknown) => e);
    expect(await bad({ id: "x", task: beat, input: { n: 1 } })).toBeInstanceOf(InvalidOption);
    expect(await bad({ id: "x", task: beat, input: { n: 1 }, cron: "* * * * *", every: "1 minute" })).toBeInstanceOf(InvalidOption);
    expect(((await bad({ id: "x", task: beat, input: { n: 1 }, cron: "not cron" })) as Error).message).toContain('cron "not cron"');
    expect(await bad({ id: "x", task: beat, input: { n: 1 }, every: "10 millis" })).toBeInstanceOf(InvalidOption);
    expect(await bad({ id: "no spaces", task: beat, input: { n: 1 }, every: "1 second" })).toBeInstanceOf(InvalidOption);
    expect(await bad({ id: "x", task: beat, input: { n: "one" } as never, every: "1 second" })).toBeInstanceOf(InvalidInput);
    expect(await troupe.schedules()).toEqual([]);
  });

  it("a scheduler in this process fires ticks that workers run; unschedule stops them", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [beat], concurrency: 2 });
    troupe.scheduler();
    await troupe.schedule({ id: "fast", task: beat, input: { n: 7 }, every: "250 millis" });
    // From the index: listing a bucket's keys while a tick writes every 250 ms need not end on a loaded machine.
    const done = async () => (await troupe.list({ task: beat, status: "COMPLETED" })).tasks.filter((t) => t.id.startsWith("fast-")).length;
    while ((await done()) < 3) await new Promise((r) => setTimeout(r, 100));
    const [listed] = await troupe.schedules();
    expect(listed).toMatchObject({ id: "fast", task: "sched.beat", everyMs: 250, catchUp: "one" });
    expect(listed?.nextTick).toEqual(expect.any(String));
    expect(await troupe.unschedule("fast")).toBe(true);
    expect(await troupe.unschedule("fast")).toBe(false);
  });

  it("two schedulers in two processes: one task per tick, and still after the leader is SIGKILLed", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    const env = { NATS_URL: server().url, TROUPE_LOG_LEVEL: "info" };
    const a = spawnCli(["scheduler"], env);
    const b = spawnCli(["scheduler"], env);
    const idOf = async (child: typeof a) => String((JSON.parse(await waitForOutput(child, /"scheduler started"/)) as { scheduler: string }).scheduler);
    const ids = new Map([
      [await idOf(a), a],
      [await idOf(b), b],
    ]);
    await troupe.schedule({ id: "beat", task: unserved, input: { n: 1 }, every: "1 second", catchUp: "all" });
    const nats = connectionOf(troupe);
    const ticks = async () => {
      const found: number[] = [];
      for await (const key of await nats.tasks.keys()) if (key.startsWith("beat-")) found.push(Number(key.slice("beat-".length)));
      return found.sort((x, y) => x - y);
    };
    const waitForTicks = async (past: number) => {
      while (!(await ticks()).some((t) => t >= past)) await new Promise((r) => setTimeout(r, 200));
    };
    await waitForTicks(Date.now() + 2_000);
    let leader: string | undefined;
    while ((leader = await troupe.schedulerLeader()) === undefined) await new Promise((r) => setTimeout(r, 100));
    const killed = ids.get(leader)!;
    const survivor = [...ids.entries()].find(([id]) => id !== leader)![1];
    killed.kill("SIGKILL");
    const killedAt = Date.now();
    // The survivor takes the lease once the dead leader's expires, and fires on.
    await waitForOutput(survivor, /"scheduler leading"/, 30_000);
    await waitForTicks(killedAt + 3_000);
    const all = await ticks();
    // One tick a second from the first to the last: none missed across the change, none twice.
    expect(all.length).toBeGreaterThanOrEqual(6);
    expect(all.every((t, i) => i === 0 || t - all[i - 1]! === 1_000)).toBe(true);
    const stored = await nats.jsm.streams.info(Topology.TASKS_STREAM, { subjects_filter: Topology.taskSubject("default", "sched.unserved") });
    expect(Object.values(stored.state.subjects ?? {}).reduce((a, b) => a + b, 0)).toBe(all.length);
    expect(await troupe.schedulerLeader()).not.toBe(leader);
  });
});
