/**
 * Isolated execution against a real server and real threads and processes: hard deadlines,
 * memory limits, cancellation, spreading over executors, progress and logs through NATS.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { pino } from "pino";
import { OutOfMemory, Timeout, Troupe } from "../../src/index.js";
import { hog, spin, spinLong, steps, waits, where } from "../fixtures/pool-tasks.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { recordWhere } from "../helpers/records.js";
import { tempDirs } from "../helpers/temp.js";

const MODULE = "test/fixtures/pool-tasks.ts";
const server = useNatsServer();
const { connect, closeAll } = clients();
const opened: Troupe[] = [];
const temp = tempDirs();
afterEach(async () => {
  await Promise.all(opened.splice(0).map((t) => t.close()));
  await closeAll();
  // The marks' folders go too: nothing of a test is left in the system's temp folder.
  expect(await temp.removeAll()).toEqual([]);
});

describe.each(["thread", "process"] as const)("isolation: %s", (isolation) => {
  it("a synchronous loop past its deadline ends Timeout within the grace period; nothing of it runs on; the worker goes on", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ module: MODULE, isolation, executors: 1, gracePeriod: 200 });
    const mark = join(temp.make("troupe-spin-"), "mark");
    const run = await troupe.submit(spin, { ms: 5_000, mark });
    const error = await run.result({ timeout: 20_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Timeout);
    // The executor was replaced and the next task runs on the new one.
    const next = await troupe.submit(where, {});
    expect((await next.result({ timeout: 20_000 })).pid).toBeGreaterThan(0);
    expect(worker.stats.executors?.[0]?.replaced).toBe(1);
    // The loop was stopped: its side effect never happens, even once the loop's own end has passed.
    const record = await run.get();
    const loopEnd = Date.parse(record.startedAt ?? "") + 5_500;
    while (Date.now() < loopEnd) await (await troupe.submit(where, { ms: 100 })).result({ timeout: 20_000 });
    expect(existsSync(mark) ? readFileSync(mark, "utf8") : "").toBe("");
  });

  it("a handler over its memory limit ends OutOfMemory while another task of the worker completes", async () => {
    const troupe = await connect(server());
    await troupe.worker({ module: MODULE, isolation, executors: 2, memoryLimitMb: 48 });
    const other = await troupe.submit(where, { ms: 300 });
    const run = await troupe.submit(hog, {});
    const error = await run.result({ timeout: 30_000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutOfMemory);
    expect((await other.result({ timeout: 20_000 })).pid).toBeGreaterThan(0);
    // The executor was replaced: the worker still runs tasks.
    expect((await (await troupe.submit(where, {})).result({ timeout: 20_000 })).pid).toBeGreaterThan(0);
  });

  it("a cancelled handler stops, and its executor runs the next task", async () => {
    const troupe = await connect(server());
    await troupe.worker({ module: MODULE, isolation, executors: 1, gracePeriod: 5_000 });
    const run = await troupe.submit(waits, {});
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING");
    const result = await run.cancel("enough");
    expect(result.cancelled).toBe(true);
    expect((await run.get()).status).toBe("CANCELLED");
    expect((await (await troupe.submit(where, {})).result({ timeout: 20_000 })).pid).toBeGreaterThan(0);
  });

  it("a cancelled CPU-bound handler stops: its executor is terminated after the grace period and nothing of it runs on", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ module: MODULE, isolation, executors: 1, gracePeriod: 200 });
    const mark = join(temp.make("troupe-cancel-"), "mark");
    const run = await troupe.submit(spinLong, { ms: 5_000, mark });
    const running = await recordWhere(troupe, run.id, (r) => r.status === "RUNNING");
    const result = await run.cancel("stop spinning");
    expect(result).toMatchObject({ cancelled: true, status: "CANCELLED" });
    // The executor was replaced and runs the next task, long before the loop would have ended.
    expect((await (await troupe.submit(where, {})).result({ timeout: 20_000 })).pid).toBeGreaterThan(0);
    expect(worker.stats.executors?.[0]?.replaced).toBe(1);
    const loopEnd = Date.parse(running.startedAt ?? "") + 5_500;
    while (Date.now() < loopEnd) await (await troupe.submit(where, { ms: 100 })).result({ timeout: 20_000 });
    expect(existsSync(mark) ? readFileSync(mark, "utf8") : "").toBe("");
  });

  it("reports progress in the record and to run.progress(), and its logs reach TROUPE_LOGS", async () => {
    // Handlers log at the worker's level: info here (the worker's own lines go nowhere).
    const troupe = await Troupe.connect({ servers: server().url, logger: pino({ level: "info" }, pino.destination("/dev/null")) });
    opened.push(troupe);
    const worker = await troupe.worker({ module: MODULE, isolation, executors: 1 });
    const run = await troupe.submit(steps, { steps: 3, pauseMs: 50 });
    const seen: unknown[] = [];
    for await (const update of run.progress({ timeout: 20_000 })) seen.push(update.data);
    expect(seen.at(-1)).toEqual({ done: 3, of: 3 });
    expect(await run.result()).toBe(3);
    expect((await run.get()).progress?.data).toEqual({ done: 3, of: 3 });
    const lines: Array<Record<string, unknown>> = [];
    for await (const line of troupe.logs({ task: run.id, follow: true, timeout: 20_000 })) if (lines.push(line) === 3) break;
    expect(lines.map((l) => l.step)).toEqual([1, 2, 3]);
    expect(lines.every((l) => l.workerId === worker.id && l.taskId === run.id)).toBe(true);
  });
});

describe("isolation: options and in-process handlers", () => {
  it("refuses options that cannot work, naming them, and a module its executors cannot load", async () => {
    const troupe = await connect(server());
    const refused = async (options: Parameters<typeof troupe.worker>[0]) => (await troupe.worker(options).catch((e: unknown) => e)) as Error & { _tag?: string };
    expect((await refused({ tasks: [where], isolation: "thread" }))._tag).toBe("InvalidDefinition");
    expect((await refused({ tasks: [where], isolation: "thread" })).message).toContain("isolation needs a module");
    expect((await refused({ module: MODULE, isolation: "fiber" as never })).message).toContain('isolation must be "thread" or "process"');
    expect((await refused({ module: MODULE, isolation: "thread", executors: 1, concurrency: 2 })).message).toContain("cannot exceed executors");
    expect((await refused({ module: MODULE, isolation: "thread", memoryLimitMb: 4 })).message).toContain("memoryLimitMb");
    expect((await refused({ tasks: [where], memoryLimitMb: 64 })).message).toContain("applies to an isolated worker");
    const broken = await refused({ module: "test/fixtures/broken-tasks.ts", isolation: "thread", executors: 1 });
    expect(broken._tag).toBe("InvalidDefinition");
    expect(broken.message).toContain("this module refuses to load in an executor");
  });

  it("in process too: progress in the record and to run.progress(), ctx.log lines to TROUPE_LOGS", async () => {
    const troupe = await Troupe.connect({ servers: server().url, logger: pino({ level: "info" }, pino.destination("/dev/null")) });
    opened.push(troupe);
    const worker = await troupe.worker({ tasks: [steps] });
    const run = await troupe.submit(steps, { steps: 2, pauseMs: 20 });
    const seen: unknown[] = [];
    for await (const update of run.progress({ timeout: 20_000 })) seen.push(update.data);
    expect(seen.at(-1)).toEqual({ done: 2, of: 2 });
    expect((await run.get()).progress?.data).toEqual({ done: 2, of: 2 });
    const lines: Array<Record<string, unknown>> = [];
    for await (const line of troupe.logs({ worker: worker.id, follow: true, timeout: 20_000 })) if (lines.push(line) === 2) break;
    expect(lines.map((l) => [l.step, l.taskId, l.workerId])).toEqual([
      [1, run.id, worker.id],
      [2, run.id, worker.id],
    ]);
  });
});

describe("isolation: pools", () => {
  it("a pool of 2 processes spreads tasks over 2 pids", async () => {
    const troupe = await connect(server());
    await troupe.worker({ module: MODULE, isolation: "process", executors: 2 });
    const runs = await Promise.all(Array.from({ length: 6 }, () => troupe.submit(where, { ms: 200 })));
    const pids = new Set((await Promise.all(runs.map((r) => r.result({ timeout: 20_000 })))).map((r) => r.pid));
    expect(pids.size).toBe(2);
    expect(pids.has(process.pid)).toBe(false);
  });

  it("a killed executor's successor is in troupe.workers() at once, not at the next heartbeat; the killed pid is gone", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ module: MODULE, isolation: "process", executors: 1 });
    const entry = async () => (await troupe.workers()).find((w) => w.id === worker.id);
    const first = await entry();
    const killed = first?.executors?.[0]?.pid ?? 0;
    expect(killed).toBeGreaterThan(0);
    // Right after a heartbeat (every 10 s) is written: the next one is 10 s away.
    const beatBound = Date.now() + 20_000;
    while ((await entry())?.heartbeatAt === first?.heartbeatAt && Date.now() < beatBound) await new Promise((r) => setTimeout(r, 50));
    process.kill(killed, "SIGKILL");
    const killedAt = Date.now();
    let shown = await entry();
    while (shown?.executors?.[0]?.pid === killed && Date.now() - killedAt < 5_000) {
      await new Promise((r) => setTimeout(r, 50));
      shown = await entry();
    }
    expect(shown?.executors?.[0]?.pid).not.toBe(killed);
    expect(shown?.executors?.[0]?.replaced).toBe(1);
    // The successor runs the next task, under the pid the registry shows.
    const ran = await (await troupe.submit(where, {})).result({ timeout: 20_000 });
    expect(ran.pid).not.toBe(killed);
    expect((await entry())?.executors?.map((e) => e.pid)).toEqual([ran.pid]);
  });
});
