/** Stats and metrics against a real server: `troupe.stats()`, `/metrics` of workers and coordinators, `troupe stats --json`. */
import { afterEach, describe, expect, it } from "vitest";
import { register as globalRegistry } from "prom-client";
import { defineTask, defineWorkflow, InvalidDefinition, InvalidOption, NonRetryableError, Schema, type TaskRun, type TroupeStats } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { killCliChildren, runCli } from "../helpers/cli.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(async () => {
  killCliChildren();
  await closeAll();
});

/** A task that fails (without retries) when asked to. */
const work = (name: string) =>
  defineTask({
    name,
    input: Schema.Struct({ fail: Schema.Boolean }),
    output: Schema.Boolean,
    handler: async ({ fail }) => {
      if (fail) throw new NonRetryableError("asked to fail");
      return true;
    },
  });

/** Polls until `read` gives a value `accept` takes (never a fixed sleep); the last value otherwise, for the assertion to show. */
const until = async <T>(read: () => Promise<T>, accept: (value: T) => boolean, timeoutMs = 20_000): Promise<T> => {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (accept(value) || Date.now() > end) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
};

const typeOf = (stats: TroupeStats, task: string) => stats.types.find((t) => t.task === task && t.queue === "default");

const scrape = async (port: number | undefined) => {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
};

/** The value of one series in a scrape (labels in any order), or `undefined`. */
const value = (text: string, name: string, labels: Record<string, string>): number | undefined => {
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
};

describe("troupe.stats()", () => {
  it("counts waiting tasks of a type no worker runs, then completed and failed ones once a worker ran them", async () => {
    const troupe = await connect(server());
    const task = work("stats.work");
    const runs = await Promise.all([false, false, false, true, true].map((fail) => troupe.submit(task, { fail })));

    const before = await troupe.stats();
    expect(typeOf(before, "stats.work")).toMatchObject({ waiting: 5, running: 0, completed: 0, failed: 0, workers: 0, perMinute: { completed: 0, failed: 0 } });
    expect(before.totals.waiting).toBeGreaterThanOrEqual(5);

    const worker = await troupe.worker({ tasks: [task], concurrency: 2 });
    const settled = await Promise.allSettled(runs.map((r) => r.result({ timeout: 30_000 })));
    expect(settled.map((s) => s.status)).toEqual(["fulfilled", "fulfilled", "fulfilled", "rejected", "rejected"]);

    const after = await until(
      () => troupe.stats(),
      (s) => typeOf(s, "stats.work")?.completed === 3 && typeOf(s, "stats.work")?.failed === 2 && typeOf(s, "stats.work")?.running === 0,
    );
    expect(typeOf(after, "stats.work")).toMatchObject({
      waiting: 0,
      running: 0,
      completed: 3,
      failed: 2,
      cancelled: 0,
      workers: 1,
      perMinute: { completed: 3, failed: 2 },
    });
    expect(after.totals).toMatchObject({ workers: 1 });
    expect(after.totals.completed).toBeGreaterThanOrEqual(3);
    expect(after.workers.map((w) => w.id)).toEqual([worker.id]);
    // Without rates, no entry is read and `perMinute` is absent.
    expect(typeOf(await troupe.stats({ rates: false }), "stats.work")?.perMinute).toBeUndefined();
  });

  it("does not count a cancelled task that no worker served as waiting: its work message is removed", async () => {
    const troupe = await connect(server());
    const task = work("stats.cancelled");
    const [kept, cancelled, unique] = await Promise.all([
      troupe.submit(task, { fail: false }),
      troupe.submit(task, { fail: false }),
      // A unique task: its record exists before its work message.
      troupe.submit(task, { fail: false }, { idempotencyKey: "stats-cancelled-unique" }),
    ]);
    expect(typeOf(await troupe.stats(), "stats.cancelled")).toMatchObject({ waiting: 3 });

    expect(await cancelled.cancel("not wanted")).toMatchObject({ cancelled: true, status: "CANCELLED" });
    expect(await unique.cancel("not wanted")).toMatchObject({ cancelled: true, status: "CANCELLED" });
    const stats = await troupe.stats();
    expect(typeOf(stats, "stats.cancelled")).toMatchObject({ waiting: 1, running: 0, cancelled: 2 });
    const jsm = connectionOf(troupe).jsm;
    const waiting = Object.keys((await jsm.streams.info(Topology.TASKS_STREAM, { subjects_filter: "troupe.tasks.default.*.stats.cancelled" })).state.subjects ?? {});
    expect(waiting).toEqual([Topology.workSubject("default", "stats.cancelled", kept.id)]);

    // Run again, it waits again; a worker then runs it and the one left.
    const again = (await troupe.retry(cancelled.id)) as TaskRun<boolean>;
    expect(typeOf(await troupe.stats(), "stats.cancelled")).toMatchObject({ waiting: 2 });
    await troupe.worker({ tasks: [task] });
    expect(await kept.result({ timeout: 30_000 })).toBe(true);
    expect(await again.result({ timeout: 30_000 })).toBe(true);
    expect((await troupe.get(unique.id))?.status).toBe("CANCELLED");
  });
});

describe("Prometheus metrics", () => {
  it("a worker serves its attempts, their durations and its queues' depth on /metrics, from a registry of its own", async () => {
    const troupe = await connect(server());
    const task = work("metrics.work");
    const worker = await troupe.worker({ tasks: [task], concurrency: 2, metrics: { port: 0, host: "127.0.0.1" } });
    expect(worker.metricsPort).toBeGreaterThan(0);
    for (const fail of [false, false, true]) await (await troupe.submit(task, { fail })).settledRecord({ timeout: 30_000 });
    // Paused, three wait: the depth gauge reads them at scrape time.
    await troupe.pause(task);
    await until(async () => worker.stats.paused, (p) => p.length === 1);
    for (let i = 0; i < 3; i++) await troupe.submit(task, { fail: false });

    const labels = { task: "metrics.work", queue: "default" };
    const { status, type, text } = await until(
      () => scrape(worker.metricsPort),
      (s) => value(s.text, "troupe_queue_depth", labels) === 3,
    );
    expect(status).toBe(200);
    expect(type).toContain("text/plain");
    expect(value(text, "troupe_task_attempts_total", { ...labels, outcome: "completed" })).toBe(2);
    expect(value(text, "troupe_task_attempts_total", { ...labels, outcome: "failed" })).toBe(1);
    expect(value(text, "troupe_task_attempt_duration_seconds_count", { ...labels, outcome: "completed" })).toBe(2);
    expect(value(text, "troupe_task_attempt_duration_seconds_bucket", { ...labels, outcome: "completed", le: "+Inf" })).toBe(2);
    expect(value(text, "troupe_task_attempt_duration_seconds_bucket", { ...labels, outcome: "completed", le: "600" })).toBe(2);
    expect(value(text, "troupe_queue_depth", labels)).toBe(3);
    expect(text).toMatch(/^troupe_tasks_running 0$/m);
    expect(text).toMatch(/^troupe_worker_concurrency 2$/m);
    expect(text).toContain("process_cpu_user_seconds_total");
    expect(globalRegistry.getMetricsAsArray()).toEqual([]);
    expect((await fetch(`http://127.0.0.1:${worker.metricsPort}/other`)).status).toBe(404);

    const port = worker.metricsPort;
    await worker.stop();
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
  });

  it("a coordinator serves the steps it applied and the runs they finished; bad ports are refused", async () => {
    const troupe = await connect(server());
    const step = defineTask({ name: "metrics.step", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: async ({ n }) => n + 1 });
    const flow = defineWorkflow({
      name: "metrics.flow",
      input: Schema.Struct({ n: Schema.Number }),
      steps: {
        a: { task: step, input: { n: "${input.n}" } },
        b: { task: step, after: ["a"], input: { n: "${a}" } },
      },
    });
    const coordinator = await troupe.coordinator({ metrics: { port: 0 }, reconcileEvery: 0, scheduler: false });
    await troupe.worker({ tasks: [step] });
    await (await troupe.start(flow, { n: 1 })).result({ timeout: 30_000 });

    const { text } = await until(
      () => scrape(coordinator.metricsPort),
      (s) => value(s.text, "troupe_workflow_runs_finished_total", { workflow: "metrics.flow", outcome: "completed" }) === 1,
    );
    expect(value(text, "troupe_workflow_runs_finished_total", { workflow: "metrics.flow", outcome: "completed" })).toBe(1);
    expect(value(text, "troupe_workflow_steps_applied_total", { workflow: "metrics.flow" })).toBe(2);
    expect(value(text, "troupe_queue_depth", { task: "metrics.step", queue: "default" })).toBe(0);

    await expect(troupe.worker({ tasks: [step], metrics: { port: -1 } })).rejects.toBeInstanceOf(InvalidDefinition);
    await expect(troupe.coordinator({ metrics: { port: coordinator.metricsPort!, host: "127.0.0.1" } })).rejects.toBeInstanceOf(InvalidOption);
  });
});

describe("troupe stats", () => {
  it("prints the stats as JSON", async () => {
    const troupe = await connect(server());
    const task = work("stats.cli");
    for (let i = 0; i < 2; i++) await troupe.submit(task, { fail: false });
    const out = await runCli(["stats", "--json"], { NATS_URL: server().url });
    expect(out.code, out.stderr).toBe(0);
    const stats = JSON.parse(out.stdout) as TroupeStats;
    expect(typeOf(stats, "stats.cli")).toMatchObject({ waiting: 2, running: 0, completed: 0, workers: 0, perMinute: { completed: 0, failed: 0 } });
    expect(stats.totals.waiting).toBeGreaterThanOrEqual(2);
  }, 120_000);
});
