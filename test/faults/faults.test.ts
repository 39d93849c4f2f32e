/**
 * Fault tests against real processes: workers are `troupe worker` children that get
 * SIGKILLed and SIGSTOPped, the nats-server is restarted mid-run. Each checks the
 * invariants: every accepted task reaches exactly one terminal state, a terminal state
 * never changes, nothing accepted is lost, and a handler runs twice only when a worker
 * died or lost its lease.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { Execution, Troupe, WorkerLost, type TaskRecord } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { TerminalStatuses } from "../../machines/task.js";
import { alwaysThrows, crash, noop, sleep } from "../fixtures/fault-tasks.js";
import { spawnCli, startWorkerProcess, waitForOutput, type WorkerProcess } from "../helpers/cli.js";
import { defineTask, defineWorkflow, Schema } from "../../src/index.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { eventCount, recordWhere } from "../helpers/records.js";

const MODULE = "test/fixtures/fault-tasks.ts";
const LEASE = 1_500;
const server = useNatsServer();
const { connect, closeAll } = clients();
const children: WorkerProcess[] = [];
afterEach(async () => {
  for (const w of children.splice(0)) {
    w.child.kill("SIGCONT");
    w.child.kill("SIGKILL");
  }
  await closeAll();
});

const worker = async (concurrency = 4) => {
  const w = await startWorkerProcess(server().url, MODULE, concurrency);
  children.push(w);
  return w;
};


/** Every transition the task went through: its record's revisions, its QUEUED state first. */
const history = async (troupe: Troupe, id: string): Promise<TaskRecord[]> => (await troupe.history(id)).map((e) => e.record as TaskRecord);

const terminalTransitions = (events: TaskRecord[]) => events.filter((e) => TerminalStatuses.has(e.status));

describe("faults", () => {
  it("a worker SIGKILLed mid-task loses it to another worker within its lease", async () => {
    const troupe = await connect(server());
    const a = await worker();
    const run = await troupe.submit(sleep, { ms: 2_000 });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === a.id);
    const b = await troupe.worker({ tasks: [sleep] });
    const killedAt = Date.now();
    a.child.kill("SIGKILL");
    await a.exited;

    const restarted = await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === b.id);
    expect(Date.parse(restarted.startedAt!) - killedAt).toBeLessThan(LEASE + 2_000);
    expect(await run.result()).toBe(process.pid); // the in-process worker finished it
    const final = await run.get();
    expect(final).toMatchObject({ status: "COMPLETED", attempt: 2, lostAttempts: 1, workerId: b.id });
    const events = await history(troupe, run.id);
    expect(events.filter((e) => e.status === "RUNNING").map((e) => e.workerId)).toEqual([a.id, b.id]);
    expect(terminalTransitions(events)).toHaveLength(1);
  });

  it("a worker SIGSTOPped past its lease has its late result rejected when it wakes", async () => {
    const troupe = await connect(server());
    const a = await worker();
    const run = await troupe.submit(sleep, { ms: 2_500 });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === a.id);
    a.child.kill("SIGSTOP");
    const b = await troupe.worker({ tasks: [sleep] });
    const done = await recordWhere(troupe, run.id, (r) => r.status === "COMPLETED");
    expect(done).toMatchObject({ workerId: b.id, attempt: 2 });
    const revision = (await connectionOf(troupe).tasks.get(run.id))!.revision;

    a.child.kill("SIGCONT");
    // The frozen attempt finishes its sleep, tries to write COMPLETED over a newer revision, and is fenced.
    await a.waitForLog((l) => l.msg === "attempt lost its lease; its outcome is discarded" && l.taskId === run.id);
    const after = await connectionOf(troupe).tasks.get(run.id);
    expect(after!.revision).toBe(revision);
    expect(after!.json<TaskRecord>()).toMatchObject({ status: "COMPLETED", workerId: b.id });
    expect(terminalTransitions(await history(troupe, run.id))).toHaveLength(1);
    expect(a.child.exitCode).toBeNull(); // it carries on working
  });

  it("loses no accepted task when the nats-server restarts during a run of 2,000", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [noop], concurrency: 32 });
    const accepted: Array<Awaited<ReturnType<typeof troupe.submit<typeof noop>>>> = [];
    let rejected = 0;
    let restart: Promise<void> | undefined;
    for (let i = 0; i < 2_000; i += 100) {
      if (i === 600) restart = server().restart();
      const batch = await Promise.allSettled(Array.from({ length: 100 }, (_, j) => troupe.submit(noop, { n: i + j })));
      for (const r of batch) {
        if (r.status === "fulfilled") accepted.push(r.value);
        else rejected++;
      }
    }
    await restart;
    const results = await Promise.all(accepted.map((r) => r.result()));
    expect(results).toHaveLength(accepted.length);
    expect(accepted.length + rejected).toBe(2_000);
    expect(accepted.length).toBeGreaterThan(1_000);
    const records = await Promise.all(accepted.map((r) => r.get()));
    expect(records.filter((r) => r.status === "COMPLETED")).toHaveLength(accepted.length);
    expect(records.every((r, i) => r.output === results[i])).toBe(true);
  }, 180_000);

  it("a handler that always throws and one that kills its process both end FAILED while other tasks flow", async () => {
    const troupe = await connect(server());
    // A supervisor: a worker that dies is replaced, as a process manager would.
    let stopping = false;
    const spawning = new Set<Promise<void>>();
    const supervise = (): Promise<void> => {
      const started = worker(2).then((w) => {
        void w.exited.then(() => {
          if (!stopping) void supervise();
        });
      });
      spawning.add(started);
      void started.finally(() => spawning.delete(started));
      return started;
    };
    try {
      await Promise.all([supervise(), supervise()]);

      const throws = await troupe.submit(alwaysThrows, {});
      const dies = await troupe.submit(crash, {});
      const others = await Promise.all(Array.from({ length: 50 }, (_, n) => troupe.submit(noop, { n })));

      expect(await throws.result().catch((e: unknown) => e)).toBeInstanceOf(Execution);
      // Its two attempts, besides one the other task's crash may have taken with its worker (counted as lost).
      const thrown = await throws.get();
      expect(thrown.status).toBe("FAILED");
      expect(thrown.attempt - (thrown.lostAttempts ?? 0)).toBe(2);
      expect(await Promise.all(others.map((r) => r.result()))).toEqual(others.map((_, n) => n));

      const error = await dies.result().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(WorkerLost);
      expect(await dies.get()).toMatchObject({ status: "FAILED", error: { _tag: "WorkerLost" } });
      // The message left the work stream: nothing is redelivered any more.
      await vi.waitFor(async () => {
        const info = await connectionOf(troupe).jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", "fault.crash"));
        expect(info.num_pending + info.num_ack_pending).toBe(0);
      });
    } finally {
      // Even when an assertion failed: no replacement outlives the test (it would take the next test's work).
      stopping = true;
      await Promise.all(spawning);
    }
  }, 120_000);

  it("malformed messages on the task subjects never crash or stall a worker process", async () => {
    const troupe = await connect(server());
    const w = await worker();
    const bodies = ["", "{", "[]", "null", '{"id":1}', JSON.stringify({ id: "x", task: "fault.noop", status: "QUEUED", attempt: "one" })];
    for (const [i, body] of bodies.entries()) {
      await connectionOf(troupe).js.publish(Topology.workSubject("default", "fault.noop", `bad-${i}`), body);
      await connectionOf(troupe).js.publish(Topology.workSubject("default", "fault.sleep", `bad-${i}`), body);
    }
    const run = await troupe.submit(noop, { n: 7 });
    expect(await run.result()).toBe(7);
    await vi.waitFor(async () => expect(await eventCount(troupe, `troupe.events.worker.${w.id}.rejected`)).toBe(bodies.length * 2), {
      timeout: 20_000,
    });
    // The log lines travel on the child's stderr, which may lag behind its NATS publishes.
    await vi.waitFor(() => expect(w.lines.filter((l) => l.msg === "malformed work message terminated")).toHaveLength(bodies.length * 2), {
      timeout: 20_000,
    });
    expect(w.child.exitCode).toBeNull();
    // The terminations travel on the worker's connection: wait until the server has them.
    await vi.waitFor(async () => {
      for (const type of ["fault.noop", "fault.sleep"]) {
        const info = await connectionOf(troupe).jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", type));
        expect(info.num_pending + info.num_ack_pending).toBe(0);
      }
    });
  });

  it("a coordinator SIGKILLed mid-workflow: a second one finishes it, every step run once", async () => {
    const runs = new Map<string, number>();
    const step = defineTask({
      name: "chain.step",
      input: Schema.Struct({ n: Schema.Number }),
      output: Schema.Number,
      handler: async ({ n }, ctx) => {
        runs.set(ctx.taskId, (runs.get(ctx.taskId) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, 150));
        return n + 1;
      },
    });
    const wf = defineWorkflow({
      name: "chain",
      input: Schema.Struct({ n: Schema.Number }),
      steps: {
        s1: { task: step, input: { n: "${input.n}" } },
        s2: { task: step, after: ["s1"], input: { n: "${s1}" } },
        f1: { task: step, after: ["s2"], input: { n: "${s2}" } },
        f2: { task: step, after: ["s2"], input: { n: "${s2}" } },
        s3: { task: step, after: ["s2"], input: { n: "${s2}" } },
        s4: { task: step, after: ["s3"], input: { n: "${s3}" } },
        end: { task: step, after: ["s4", "f1", "f2"], input: { n: "${s4}" } },
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [step], concurrency: 4 });
    const a = spawnCli(["coordinator"], { NATS_URL: server().url, TROUPE_LOG_LEVEL: "info" });
    const exited = new Promise((r) => a.on("exit", r));
    await waitForOutput(a, /coordinator started/);
    const run = await troupe.start(wf, { n: 0 });
    await recordWhere(troupe, `${run.id}-s2`, (r) => r.status === "COMPLETED");
    a.kill("SIGKILL");
    await exited;
    await troupe.coordinator();
    const out = await run.result();
    expect(out.end).toBe(5);
    expect(out.f1).toBe(3);
    expect(runs.size).toBe(7);
    expect([...runs.values()].every((n) => n === 1)).toBe(true);
  }, 90_000);
});
