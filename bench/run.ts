/**
 * `npm run bench`: one JSON line per measurement, peers side by side in the same run on
 * the same machine (compare ratios, not absolute numbers).
 *
 * - raw JetStream publish → pull → ack, on the same server Troupe uses;
 * - Troupe no-op tasks, submit → COMPLETED (tasks/s), and submit → handler start latency;
 * - BullMQ on the local Redis (127.0.0.1:6379) when one answers.
 *
 * BENCH_TASKS sets the batch size (default 10000).
 */
import { connect as tcpConnect } from "node:net";
import { jetstream } from "@nats-io/jetstream";
import { pino } from "pino";
import { defineTask, defineWorkflow, Schema, Troupe } from "../src/index.js";
import { NatsServer, natsServerVersion } from "../src/dev/nats-server.js";
import { connectNats, ensureTaskConsumer, openNats } from "../src/nats/connection.js";
import { TASKS_STREAM, taskSubject } from "../src/nats/topology.js";

const N = Number(process.env.BENCH_TASKS ?? 10_000);
const CONCURRENCY = 64;
const emit = (line: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(line)}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Number((s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? 0).toFixed(3));
};
const quiet = pino({ level: "silent" });

/** Raw JetStream in one process: pipelined publishes, then pull + ack. */
const rawJetStream = async (url: string) => {
  const nc = await connectNats({ servers: url });
  const nats = await openNats(nc);
  const consumer = await ensureTaskConsumer(nats.jsm, "bench", "raw", { ackWaitMs: 30_000 });
  const js = jetstream(nc);
  const started = performance.now();
  for (let i = 0; i < N; i += 1_000) {
    await Promise.all(Array.from({ length: Math.min(1_000, N - i) }, () => nats.publisher.publish(taskSubject("bench", "raw"), new Uint8Array(64))));
  }
  const c = await js.consumers.get(TASKS_STREAM, consumer);
  let got = 0;
  const messages = await c.consume({ max_messages: CONCURRENCY * 4 });
  for await (const m of messages) {
    m.ack();
    if (++got === N) break;
  }
  const seconds = (performance.now() - started) / 1000;
  nats.publisher.close();
  await nc.close();
  return N / seconds;
};

const noop = defineTask({
  name: "bench.noop",
  input: Schema.Struct({ i: Schema.Number, at: Schema.Number }),
  output: Schema.Number,
  handler: async ({ i }) => i,
});

/** The same no-op with a deadline and a retry policy: the failure machinery's timers armed. */
const guarded = defineTask({
  name: "bench.guarded",
  input: Schema.Struct({ i: Schema.Number, at: Schema.Number }),
  output: Schema.Number,
  timeout: "30 seconds",
  retry: { attempts: 3 },
  handler: async ({ i }) => i,
});

const troupeThroughput = async (url: string, task: typeof noop) => {
  const troupe = await Troupe.connect({ servers: url, logger: quiet });
  await troupe.worker({ tasks: [task], concurrency: CONCURRENCY });
  const started = performance.now();
  const runs = [];
  for (let i = 0; i < N; i += 1_000) {
    runs.push(...(await Promise.all(Array.from({ length: Math.min(1_000, N - i) }, (_, j) => troupe.submit(task, { i: i + j, at: 0 })))));
  }
  const results = await Promise.all(runs.map((r) => r.result()));
  const seconds = (performance.now() - started) / 1000;
  const correct = results.every((r, i) => r === i);
  await troupe.close();
  return { perSecond: N / seconds, correct };
};

/** Submit → handler start, a few tasks in flight at a time (latency, not load). */
const troupeLatency = async (url: string) => {
  const starts = new Map<number, number>();
  const timed = defineTask({
    name: "bench.timed",
    input: Schema.Struct({ i: Schema.Number }),
    output: Schema.Number,
    handler: async ({ i }) => {
      starts.set(i, performance.now());
      return i;
    },
  });
  const troupe = await Troupe.connect({ servers: url, logger: quiet });
  await troupe.worker({ tasks: [timed], concurrency: 8 });
  const samples: number[] = [];
  const total = Math.min(2_000, N);
  let next = 0;
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < total) {
        const i = next++;
        const t0 = performance.now();
        const run = await troupe.submit(timed, { i });
        await run.result();
        samples.push((starts.get(i) ?? t0) - t0);
      }
    }),
  );
  await troupe.close();
  return { p50: pct(samples, 0.5), p99: pct(samples, 0.99) };
};

/**
 * A 1,000-step workflow (one root, 998 parallel steps, one fan-in) against the same 1,000
 * tasks submitted plainly, with the same worker: the difference is the per-step cost of
 * coordination (KV compare-and-set on the run, step dispatch, completion stream).
 */
const workflowOverhead = async (url: string) => {
  const steps = 1_000;
  const part = defineTask({
    name: "bench.part",
    input: Schema.Struct({ i: Schema.Number }),
    output: Schema.Number,
    handler: async ({ i }) => i,
  });
  const sum = defineTask({
    name: "bench.sum",
    input: Schema.Struct({ parts: Schema.Array(Schema.Number) }),
    output: Schema.Number,
    handler: async ({ parts }) => parts.reduce((a, b) => a + b, 0),
  });
  const defs: Record<string, { task: typeof part | typeof sum; after?: string[]; input: unknown }> = { root: { task: part, input: { i: 0 } } };
  for (let i = 0; i < steps - 2; i++) defs[`p${i}`] = { task: part, after: ["root"], input: { i } };
  defs.sum = { task: sum, after: Object.keys(defs).filter((k) => k !== "root"), input: { parts: Array.from({ length: steps - 2 }, (_, i) => `\${p${i}}`) } };
  const wf = defineWorkflow({ name: "bench.fan", input: Schema.Struct({}), steps: defs });
  const troupe = await Troupe.connect({ servers: url, logger: quiet });
  await troupe.worker({ tasks: [part, sum], concurrency: CONCURRENCY });
  await troupe.coordinator();
  const t0 = performance.now();
  await Promise.all((await Promise.all(Array.from({ length: steps }, (_, i) => troupe.submit(part, { i })))).map((r) => r.result()));
  const plainMs = performance.now() - t0;
  const t1 = performance.now();
  await (await troupe.start(wf, {})).result();
  const workflowMs = performance.now() - t1;
  await troupe.close();
  return { steps, workflowMs, plainMs };
};

const redisAnswers = () =>
  new Promise<boolean>((resolve) => {
    const s = tcpConnect(6379, "127.0.0.1");
    s.setTimeout(500);
    s.once("connect", () => {
      s.end();
      resolve(true);
    });
    s.once("error", () => resolve(false));
    s.once("timeout", () => {
      s.destroy();
      resolve(false);
    });
  });

/**
 * BullMQ is not a dependency (one of its optional native packages is missing from some
 * registries, which breaks `npm ci`): `npm run bench` installs it without saving first.
 */
interface BullMQ {
  Queue: new (name: string, opts: object) => {
    add(name: string, data: object, opts: object): Promise<unknown>;
    obliterate(opts: object): Promise<void>;
    close(): Promise<void>;
  };
  Worker: new (name: string, handler: (job: { data: { i: number; t0?: number } }) => Promise<unknown>, opts: object) => {
    on(event: "completed", fn: () => void): void;
    waitUntilReady(): Promise<unknown>;
    close(): Promise<void>;
  };
}
const BULLMQ = "bullmq";
const loadBullmq = async (): Promise<BullMQ | string> => {
  try {
    return (await import(BULLMQ)) as BullMQ;
  } catch {
    return "bullmq is not installed (npm run bench installs it with `npm install --no-save bullmq@5`)";
  }
};

const bullmq = async ({ Queue, Worker }: BullMQ) => {
  const connection = { host: "127.0.0.1", port: 6379, maxRetriesPerRequest: null };
  const name = `troupe-bench-${process.pid}-${Date.now()}`;
  const queue = new Queue(name, { connection });
  let done = 0;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  const starts: number[] = [];
  const worker = new Worker(
    name,
    async (job) => {
      if (job.data.t0 !== undefined) starts.push(performance.now() - job.data.t0);
      return job.data.i;
    },
    { connection, concurrency: CONCURRENCY },
  );
  worker.on("completed", () => {
    if (++done === N) finish();
  });
  await worker.waitUntilReady();
  const started = performance.now();
  for (let i = 0; i < N; i += 1_000) {
    await Promise.all(Array.from({ length: Math.min(1_000, N - i) }, (_, j) => queue.add("noop", { i: i + j }, { removeOnComplete: true })));
  }
  await finished;
  const perSecond = N / ((performance.now() - started) / 1000);
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { perSecond };
};

const main = async () => {
  const server = await NatsServer.start();
  const common = { tasks: N, node: process.version, natsServer: natsServerVersion(server.binary).join(".") };
  try {
    const raw = await rawJetStream(server.url);
    emit({ bench: "throughput", system: "jetstream-raw", unit: "msg/s", value: Math.round(raw), ...common });
    const troupe = await troupeThroughput(server.url, noop);
    emit({ bench: "throughput", system: "troupe", unit: "tasks/s", value: Math.round(troupe.perSecond), correct: troupe.correct, ...common });
    const armed = await troupeThroughput(server.url, guarded);
    emit({
      bench: "throughput",
      system: "troupe-timeout-retry",
      unit: "tasks/s",
      value: Math.round(armed.perSecond),
      correct: armed.correct,
      overPlain: Number((armed.perSecond / troupe.perSecond).toFixed(3)),
      ...common,
    });
    const latency = await troupeLatency(server.url);
    emit({ bench: "submit-to-start", system: "troupe", unit: "ms", p50: latency.p50, p99: latency.p99, inFlight: 4 });
    const wf = await workflowOverhead(server.url);
    emit({ bench: "workflow", system: "troupe", steps: wf.steps, unit: "ms", value: Math.round(wf.workflowMs), shape: "1 → 998 → 1" });
    emit({
      bench: "workflow-step-overhead",
      system: "troupe",
      unit: "ms/step",
      value: Number(((wf.workflowMs - wf.plainMs) / wf.steps).toFixed(3)),
      plainTasksMs: Math.round(wf.plainMs),
      workflowOverPlain: Number((wf.workflowMs / wf.plainMs).toFixed(2)),
    });
    let bull: { perSecond: number } | undefined;
    const lib = (await redisAnswers()) ? await loadBullmq() : "no Redis answers on 127.0.0.1:6379";
    if (typeof lib === "string") {
      emit({ bench: "throughput", system: "bullmq", skipped: lib });
    } else {
      bull = await bullmq(lib);
      emit({ bench: "throughput", system: "bullmq", unit: "jobs/s", value: Math.round(bull.perSecond), tasks: N, node: process.version });
    }
    emit({
      bench: "throughput-ratio",
      troupeOverRaw: Number((troupe.perSecond / raw).toFixed(3)),
      ...(bull === undefined ? {} : { troupeOverBullmq: Number((troupe.perSecond / bull.perSecond).toFixed(3)) }),
    });
  } finally {
    await server.stop();
  }
};

await main();
process.exit(0);
