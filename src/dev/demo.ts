/**
 * `npm run demo` / `troupe demo`: the whole system on the embedded default. Starts its own
 * nats-server, runs a worker, submits a batch with a progress bar, and prints a summary
 * and the `nats` CLI commands that show the same state.
 */
import { Effect } from "effect";
import { defineTask, Schema, Troupe, type TaskRecord } from "../index.js";
import { ProgressBar } from "../cli/progress.js";
import { consumerName, TASKS_BUCKET, TASKS_STREAM, WORKERS_BUCKET } from "../nats/topology.js";

export const add = defineTask({
  name: "math.add",
  input: Schema.Struct({ a: Schema.Number, b: Schema.Number }),
  output: Schema.Number,
  handler: async ({ a, b }) => a + b,
});

export const slugify = defineTask({
  name: "text.slugify",
  input: Schema.Struct({ title: Schema.String }),
  output: Schema.Struct({ slug: Schema.String, words: Schema.Number }),
  // A handler may return an Effect; it runs on an Effect fiber and is interrupted with the attempt.
  handler: ({ title }) =>
    Effect.succeed({
      slug: title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, ""),
      words: title.split(/\s+/).filter(Boolean).length,
    }),
});

export interface DemoOptions {
  readonly tasks?: number;
  readonly concurrency?: number;
  readonly storeDir?: string;
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;

export const runDemo = async (options: DemoOptions = {}): Promise<void> => {
  const n = options.tasks ?? 2_000;
  const out = (line = "") => process.stdout.write(`${line}\n`);
  out("Troupe demo: starting an embedded nats-server with JetStream…");
  // Its logs: the default logger's, warnings only, on stderr (TROUPE_LOG_LEVEL for more).
  const troupe = await Troupe.dev(options.storeDir === undefined ? {} : { storeDir: options.storeDir });
  try {
    out(`NATS is at ${troupe.url}`);
    const worker = await troupe.worker({ tasks: [add, slugify], concurrency: options.concurrency ?? 32 });
    out(`worker ${worker.id} runs math.add and text.slugify (concurrency ${options.concurrency ?? 32})`);

    const bar = new ProgressBar(n, "tasks");
    const started = performance.now();
    let done = 0;
    const runs = [];
    const submits = [];
    for (let i = 0; i < n; i++) {
      submits.push(
        i % 4 === 3
          ? troupe.submit(slugify, { title: `Hello Troupe number ${i}` })
          : troupe.submit(add, { a: i, b: i + 1 }),
      );
      if (submits.length === 500 || i === n - 1) {
        for (const run of await Promise.all(submits.splice(0))) {
          runs.push(run);
          void run.settledRecord().then(() => bar.update(++done));
        }
      }
    }
    const records: TaskRecord[] = await Promise.all(runs.map((r) => r.settledRecord()));
    const seconds = (performance.now() - started) / 1000;
    bar.update(n);

    const byStatus = new Map<string, number>();
    for (const r of records) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
    const latencies = records
      .map((r) => Date.parse(r.finishedAt ?? "") - Date.parse(r.createdAt))
      .filter(Number.isFinite)
      .sort((a, b) => a - b);
    const first = runs[0];
    const sample = first ? await first.result() : undefined;

    out();
    out("Summary");
    out(`  tasks:       ${n} in ${seconds.toFixed(2)} s (${Math.round(n / seconds)} tasks/s, submit → completed)`);
    out(`  statuses:    ${[...byStatus].map(([s, c]) => `${s} ${c}`).join(", ")}`);
    out(`  latency:     p50 ${percentile(latencies, 0.5)} ms, p99 ${percentile(latencies, 0.99)} ms (created → finished)`);
    out(`  first task:  math.add(0, 1) = ${sample}  (id ${first?.id})`);
    out(`  worker:      ${JSON.stringify(worker.stats)}`);
    out();
    out("This demo's server stops with it. To look around a live one, run `troupe dev` (the other");
    out("troupe commands of that directory find it; it prints its URL for NATS_URL), start workers,");
    out("and use the nats CLI:");
    const s = "--server $NATS_URL";
    out(`  nats ${s} stream info ${TASKS_STREAM}`);
    out(`  nats ${s} consumer info ${TASKS_STREAM} ${consumerName("default", "math.add")}`);
    out(`  nats ${s} kv get ${TASKS_BUCKET} <task id>          # a task's record, at any status once claimed`);
    out(`  nats ${s} kv history ${TASKS_BUCKET} <task id>      # its transitions`);
    out(`  nats ${s} stream get ${TASKS_STREAM} --last-for 'troupe.tasks.*.<task id>.>'   # a queued one`);
    out(`  nats ${s} kv ls ${WORKERS_BUCKET}`);
    out(`  nats ${s} micro stats troupe-worker`);
    out(`  nats ${s} sub 'troupe.events.>'`);
    const failed = n - (byStatus.get("COMPLETED") ?? 0);
    if (failed > 0) throw new Error(`${failed} demo tasks did not complete`);
  } finally {
    await troupe.close();
  }
};
