/**
 * A worker's life against real processes: signals, drain and shutdown from `troupe`, the
 * listing of workers with their executors, losing the broker, and pulling at once when it
 * comes back.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { noop, sleep } from "../fixtures/fault-tasks.js";
import { runCli, startWorkerProcess, killCliChildren, type WorkerProcess } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { startProxy } from "../helpers/proxy.js";
import { recordWhere } from "../helpers/records.js";

const FAULTS = "test/fixtures/fault-tasks.ts";
const POOL = "test/fixtures/pool-tasks.ts";
const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(async () => {
  killCliChildren();
  await closeAll();
});

const env = () => ({ NATS_URL: server().url });

describe("worker lifecycle", () => {
  it("SIGTERM drains (the running task goes on); a second signal stops at once and hands the task back", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    const a = await startWorkerProcess(server().url, FAULTS, 2);
    // Long enough to outlast any load on the machine: the test ends it with a cancel.
    const run = await troupe.submit(sleep, { ms: 120_000 });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === a.id);
    a.child.kill("SIGTERM");
    await a.waitForLog((l) => l.msg === "stopping worker; a second signal stops it at once");
    const draining = await troupe.workerStats();
    expect(draining.find((w) => w.id === a.id)).toMatchObject({ state: "draining", running: 1, runningTasks: [run.id] });
    expect(a.child.exitCode).toBeNull();
    a.child.kill("SIGTERM");
    expect(await a.exited).toBe(0);
    // Handed back: another worker takes it at once (a NAK), long before its lease would lapse.
    const b = await troupe.worker({ tasks: [sleep] });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === b.id && r.attempt === 2);
    expect((await run.cancel()).cancelled).toBe(true);
  });

  it("`troupe workers` lists a pool's executors; `troupe worker stop` drains it and it exits", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    const pool = await startWorkerProcess(server().url, POOL, null, ["--processes", "2"]);
    const listed = await runCli(["workers"], env());
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(`${pool.id}  ready`);
    expect(listed.stdout).toContain("2 processes");
    expect(listed.stdout).toMatch(/ {4}p1 {2}pid \d+ {2}idle {2}ran 0 {2}replaced 0/);
    expect(listed.stdout).toMatch(/ {4}p2 {2}pid \d+/);
    const entry = (await troupe.workerStats()).find((w) => w.id === pool.id);
    expect(entry?.isolation).toBe("process");
    expect(new Set(entry?.executors?.map((e) => e.pid)).size).toBe(2);

    const stopped = await runCli(["worker", "stop", pool.id, "--timeout", "10s"], env());
    expect(stopped.code).toBe(0);
    expect(stopped.stdout).toContain(`worker ${pool.id} draining`);
    expect(await pool.exited).toBe(0);
    const missing = await troupe.controlWorker("w-nobody", "drain").catch((e: unknown) => e);
    expect((missing as { _tag?: string })._tag).toBe("WorkerNotFound");
  });

  it("`troupe worker shutdown` stops a worker at once, handing its running task back", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    const busy = await startWorkerProcess(server().url, FAULTS, 1);
    const run = await troupe.submit(sleep, { ms: 120_000 });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === busy.id);
    const shutdown = await runCli(["worker", "shutdown", busy.id], env());
    expect(shutdown.code).toBe(0);
    expect(shutdown.stdout).toContain("1 running task(s) handed back");
    expect(await busy.exited).toBe(0);
    const other = await troupe.worker({ tasks: [sleep] });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === other.id && r.attempt === 2);
    expect((await run.cancel()).cancelled).toBe(true);
  });

  it("a worker cut off from NATS past its disconnectTimeout interrupts its tasks and exits non-zero; they complete elsewhere", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    const proxy = await startProxy({ host: "127.0.0.1", port: server().port });
    const cut: WorkerProcess = await startWorkerProcess(proxy.url, FAULTS, 2, ["--disconnect-timeout", "1s"]);
    const run = await troupe.submit(sleep, { ms: 120_000 });
    const quick = await troupe.submit(sleep, { ms: 1 });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === cut.id);
    const other = await troupe.worker({ tasks: [sleep] });
    await proxy.cut();
    expect(await cut.exited).toBe(1);
    expect(cut.lines.some((l) => typeof l.msg === "string" && l.msg.includes("could not reach NATS"))).toBe(true);
    // The long one goes to the other worker once its lease lapses; the test ends it there.
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === other.id);
    expect((await run.cancel()).cancelled).toBe(true);
    expect(await quick.result({ timeout: 30_000 })).toEqual(expect.any(Number));
  });

  it("back from a nats-server restart, a worker pulls at once", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ tasks: [noop] });
    expect(await (await troupe.submit(noop, { n: 1 })).result({ timeout: 10_000 })).toBe(1);
    await server().restart();
    // The first task after the restart starts as soon as both connections are back: not after
    // the worker's old pull requests expire, nor after writes sent while JetStream was still
    // starting wait out their 5 s ack timeout (that took 5 s and more).
    const back = Date.now();
    const run = await troupe.submit(noop, { n: 2 });
    expect(await run.result({ timeout: 10_000 })).toBe(2);
    expect(Date.parse((await run.get()).startedAt ?? "") - back).toBeLessThan(4_000);
    // Its result is heard from its write, before the worker has settled its delivery and is ready again.
    await vi.waitFor(() => expect(worker.stats.state).toBe("ready"));
  });
});
