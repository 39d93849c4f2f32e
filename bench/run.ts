/**
 * `npm run bench`: one JSON line per measurement, peers side by side in the same run on
 * the same machine (compare ratios, not absolute numbers).
 *
 * - raw JetStream publish → pull → ack;
 * - Troupe no-op tasks, submit → COMPLETED (tasks/s), in the shape a BullMQ user knows:
 *   20,000 tasks with an 80-byte input, 1,000 submissions in flight, one worker at
 *   concurrency 64, client and worker in one process, a fresh server each time; with the
 *   server operations each task cost (messages in, messages stored);
 * - the floor of this substrate (bench/floor.ts: the bare fenced protocol, three stored
 *   messages and an ack per task) on a fresh server of its own, BullMQ on the local Redis
 *   (127.0.0.1:6379) and Graphile Worker on the local PostgreSQL (127.0.0.1:5432) when they
 *   answer, in the same shape, alternated with Troupe round by round;
 * - the same Troupe run with an OpenTelemetry SDK registered (`troupe-traced`), and with an
 *   inspector streaming every event to a page (`troupe-inspected`), over the plain median;
 * - an fsync's latency here, and the rate it would bound with `sync_interval: always`;
 * - `troupe.list` among 100,000 finished tasks against 63 (BENCH_LIST_RECORDS);
 * - submit → handler start latency; a 1,000-step workflow against 1,000 plain tasks.
 *
 * BENCH_TASKS sets the task count (default 20000), BENCH_ROUNDS the rounds (default 3);
 * BENCH_ONLY=throughput stops after the alternated rounds.
 */
import { connect as tcpConnect } from "node:net";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { get as httpGet, type ClientRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { pino } from "pino";
import { context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { defineTask, defineWorkflow, NonRetryableError, Schema, Troupe, type ListOptions, type SubmitOptions } from "../src/index.js";
import { NatsServer, natsServerVersion } from "../src/dev/nats-server.js";
import { connectNats, ensureTaskConsumer, openNats } from "../src/nats/connection.js";
import { connectionOf } from "../src/sdk/troupe.js";
import { startInspector } from "../src/inspect/server.js";
import { noop, noopOptions } from "./tasks.js";
import { floorIdleStart, floorThroughput } from "./floor.js";
import type { JetStreamManager } from "@nats-io/jetstream";
import { TASKS_STREAM, taskSubject } from "../src/nats/topology.js";

const N = Number(process.env.BENCH_TASKS ?? 20_000);
/** Each system runs a quarter round first, in the same process and on the same server: every figure is measured warm. */
const WARM = Number(process.env.BENCH_WARMUP ?? Math.floor(N / 4));
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCY = 64;
const IN_FLIGHT = 1_000;
/** Makes `{"i":12345,"pad":"…"}` about 80 bytes, as the measurement. */
const PAD = "x".repeat(56);
const emit = (line: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(line)}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const round3 = (x: number) => Number(x.toFixed(3));

/** Run `start(i)` for i < n, `inFlight` at a time; resolves when every one has. */
const window = async (n: number, inFlight: number, start: (i: number) => Promise<unknown>) => {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(inFlight, n) }, async () => {
      while (next < n) await start(next++);
    }),
  );
};

/** What the server received and stored, from its monitoring endpoint and JetStream. */
const serverCounts = async (server: NatsServer, jsm: JetStreamManager) => {
  const varz = (await (await fetch(`${server.monitoringUrl}/varz`)).json()) as { in_msgs: number };
  const stored: Record<string, number> = {};
  for await (const s of jsm.streams.list()) stored[s.config.name] = s.state.last_seq;
  return { inMsgs: varz.in_msgs, stored };
};

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


/** The same no-op with a deadline and a retry policy: the failure machinery's timers armed. */
const guarded = defineTask({
  name: "bench.guarded",
  input: Schema.Struct({ i: Schema.Number, pad: Schema.String }),
  output: Schema.Number,
  timeout: "30 seconds",
  retry: { attempts: 3 },
  handler: async ({ i }) => i,
});

const keyedNoop = defineTask({ ...noopOptions("bench.keyed"), limits: { perKey: 8 } });
const cappedNoop = defineTask({ ...noopOptions("bench.capped"), limits: { concurrency: CONCURRENCY } });

/** One round of Troupe in the shape, on a fresh server: tasks/s and server operations per task. */
const troupeThroughput = async (task: typeof noop, optionsOf?: (i: number) => SubmitOptions, n = N, beside?: (troupe: Troupe) => Promise<() => Promise<void>>) => {
  const server = await NatsServer.start({ monitoring: true });
  try {
    const troupe = await Troupe.connect({ servers: server.url, logger: quiet });
    await troupe.worker({ tasks: [task], concurrency: CONCURRENCY });
    const stopBeside = await beside?.(troupe);
    const jsm = connectionOf(troupe).jsm;
    if (WARM > 0) await submitAll(troupe, task, Math.min(WARM, n), optionsOf);
    const before = await serverCounts(server, jsm);
    const cpu = { process: process.cpuUsage(), server: cpuMs(server.pid) };
    const { perSecond, correct } = await submitAll(troupe, task, n, optionsOf);
    const used = process.cpuUsage(cpu.process);
    const serverCpu = cpuMs(server.pid) - cpu.server;
    const after = await serverCounts(server, jsm);
    await stopBeside?.();
    await troupe.close();
    const storedPerTask: Record<string, number> = {};
    for (const [name, seq] of Object.entries(after.stored)) {
      const delta = seq - (before.stored[name] ?? 0);
      if (round3(delta / n) > 0) storedPerTask[name] = round3(delta / n);
    }
    const inPerTask = (after.inMsgs - before.inMsgs) / n;
    const storedTotal = Object.values(storedPerTask).reduce((a, b) => a + b, 0);
    return {
      perSecond,
      correct,
      inMsgsPerTask: round3(inPerTask),
      storedPerTask,
      // What the server received: the stored writes, and the rest (acks, pull requests).
      receivedPerTask: { stored: round3(storedTotal), other: round3(inPerTask - storedTotal) },
      // CPU time per task: this process (client and worker), and nats-server.
      cpuUsPerTask: { process: Math.round((used.user + used.system) / n), server: Math.round((serverCpu * 1000) / n) },
    };
  } finally {
    await server.stop();
  }
};

/** An inspector streaming every event to a page (its server-sent events read and counted): what watching costs. */
const inspected = async (troupe: Troupe): Promise<() => Promise<void>> => {
  const inspector = await startInspector(connectionOf(troupe));
  let events = 0;
  const opened = new Promise<ClientRequest>((resolve, reject) => {
    // As a page would, with this start's token.
    const req = httpGet(`${inspector.url}/events`, { headers: { authorization: `Bearer ${inspector.token}` } }, (res) => {
      res.on("data", (d: Buffer) => {
        const text = d.toString();
        events += text.split("\ndata: ").length - 1;
        // Its opening comment comes once the live consumer is open.
        if (text.includes(": troupe inspector")) resolve(req);
      });
    });
    req.on("error", reject);
  });
  const req = await opened;
  return async () => {
    if (events === 0) throw new Error("the inspector's page heard no event");
    req.destroy();
    await inspector.close();
  };
};

/**
 * What `sync_interval: always` would cost, estimated: nats-server 2.9 cannot fsync every
 * write, so the latency of one 1 KiB append + fdatasync in the temp dir's file system is
 * measured, and the bound it puts on a stream that waits for one per write.
 */
const fsyncLatency = async (samples = 200) => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-fsync-"));
  const file = await open(join(dir, "log"), "a");
  const block = Buffer.alloc(1024, 1);
  const us: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const t = process.hrtime.bigint();
      await file.write(block);
      await file.datasync();
      us.push(Number(process.hrtime.bigint() - t) / 1_000);
    }
  } finally {
    await file.close();
    await rm(dir, { recursive: true, force: true });
  }
  return { p50: Math.round(pct(us, 0.5)), p99: Math.round(pct(us, 0.99)) };
};

/** `run` with an OpenTelemetry SDK registered (spans kept in memory), unregistered after: what tracing costs. */
const withTracing = async <A>(run: () => Promise<A>): Promise<A & { readonly spans: number }> => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  try {
    const result = await run();
    return { ...result, spans: exporter.getFinishedSpans().length };
  } finally {
    trace.disable();
    context.disable();
    await provider.shutdown();
  }
};

/** A task whose handler notes when it started, by input `i`. */
const stampedTask = (name: string) => {
  const starts = new Map<number, number>();
  const task = defineTask({
    name,
    input: Schema.Struct({ i: Schema.Number }),
    output: Schema.Number,
    handler: async ({ i }) => {
      starts.set(i, performance.now());
      return i;
    },
  });
  return { task, starts };
};

/** Submit a no-op `n` times (N unless given), `IN_FLIGHT` at a time, and await every result: tasks/s, and whether each output is right. */
const submitAll = async (troupe: Troupe, task: typeof noop = noop, n = N, optionsOf?: (i: number) => SubmitOptions) => {
  const results: Array<Promise<number>> = new Array(n);
  const started = performance.now();
  await window(n, IN_FLIGHT, async (i) => {
    results[i] = (await troupe.submit(task, { i, pad: PAD }, optionsOf?.(i) ?? {})).result();
  });
  const outputs = await Promise.all(results);
  return { perSecond: n / ((performance.now() - started) / 1000), correct: outputs.every((r, i) => r === i) };
};

/** Listing cost: `list` over 63 finished records, then over `finished` more (real tasks), the median of `samples` calls each (ms). */
const listing = async (finished: number, samples = 15) => {
  const server = await NatsServer.start();
  try {
    const troupe = await Troupe.connect({ servers: server.url, logger: quiet });
    const flaky = defineTask({
      ...noopOptions("bench.flaky"),
      handler: async ({ i }) => {
        if (i < 3) throw new NonRetryableError("fails");
        return i;
      },
    });
    await troupe.worker({ tasks: [noop, flaky], concurrency: CONCURRENCY });
    const failing = await Promise.all([0, 1, 2].map((i) => troupe.submit(flaky, { i, pad: PAD })));
    await Promise.all(failing.map((r) => r.settledRecord()));
    // As many completed as a page takes, so that both sizes return the same.
    await submitAll(troupe, noop, 60);
    const time = async (options: ListOptions) => {
      const ms: number[] = [];
      for (let i = 0; i < samples; i++) {
        const started = performance.now();
        await troupe.list(options);
        ms.push(performance.now() - started);
      }
      return round3(median(ms));
    };
    const small = { failed: await time({ status: "FAILED" }), completed: await time({ status: "COMPLETED", limit: 50 }) };
    await submitAll(troupe, noop, finished);
    const large = { failed: await time({ status: "FAILED" }), completed: await time({ status: "COMPLETED", limit: 50 }) };
    await troupe.close();
    return { small, large };
  } finally {
    await server.stop();
  }
};

/**
 * Submit → handler start on a worker that has been idle for `idleMs` (its pull request has
 * expired and been renewed meanwhile): what a first task of the morning waits.
 */
const idleLatency = async (url: string, idleMs: number, samples: number) => {
  const { task: timed, starts } = stampedTask("bench.idle");
  const troupe = await Troupe.connect({ servers: url, logger: quiet });
  await troupe.worker({ tasks: [timed], concurrency: 8 });
  const waits: number[] = [];
  for (let i = 0; i < samples; i++) {
    await new Promise((r) => setTimeout(r, idleMs));
    const t0 = performance.now();
    await (await troupe.submit(timed, { i })).result();
    waits.push(starts.get(i)! - t0);
  }
  await troupe.close();
  return { p50: pct(waits, 0.5), max: Number(Math.max(...waits).toFixed(3)), samples: waits.map(round3) };
};

/**
 * Scale-out: this process submits and awaits, `workers` `troupe worker` processes run the
 * tasks (the same shape as the one-process measurement otherwise).
 */
const scaleOut = async (workers: number) => {
  const server = await NatsServer.start();
  const children: ChildProcess[] = [];
  try {
    const cli = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
    const tasks = fileURLToPath(new URL("./tasks.js", import.meta.url));
    for (let w = 0; w < workers; w++) {
      const child = spawn(process.execPath, [cli, "worker", tasks, "--concurrency", String(CONCURRENCY)], {
        env: { ...process.env, NATS_URL: server.url, TROUPE_LOG_LEVEL: "info" },
        stdio: ["ignore", "pipe", "ignore"],
      });
      children.push(child);
      await new Promise<void>((resolve, reject) => {
        child.stdout?.on("data", (d: Buffer) => d.toString().includes("worker started") && resolve());
        child.once("exit", (code) => reject(new Error(`worker process exited (${code})`)));
      });
    }
    const troupe = await Troupe.connect({ servers: server.url, logger: quiet });
    // Warmed as the one-process rounds are (those run in a process that ran rounds before).
    await submitAll(troupe, noop, Math.floor(N / 4));
    const measured = await submitAll(troupe);
    await troupe.close();
    return measured;
  } finally {
    for (const child of children) child.kill("SIGKILL");
    await server.stop();
  }
};

/**
 * The same no-op tasks on one worker in this process, with its handlers in process, in a pool
 * of threads, and in a pool of processes (`executors` each, one handler per executor at a
 * time, so the same concurrency for all three): what crossing into an executor costs.
 */
const ISOLATION_EXECUTORS = 4;
const isolation = async () => {
  const n = Math.max(1_000, Math.floor(N / 4));
  const tasks = fileURLToPath(new URL("./tasks.js", import.meta.url));
  const rates: Record<string, number> = {};
  for (const mode of ["none", "thread", "process"] as const) {
    const server = await NatsServer.start();
    try {
      const troupe = await Troupe.connect({ servers: server.url, logger: quiet });
      await troupe.worker(
        mode === "none"
          ? { tasks: [noop], concurrency: ISOLATION_EXECUTORS }
          : { module: tasks, isolation: mode, executors: ISOLATION_EXECUTORS, concurrency: ISOLATION_EXECUTORS },
      );
      await submitAll(troupe, noop, Math.floor(n / 4)); // warm-up
      const { perSecond, correct } = await submitAll(troupe, noop, n);
      rates[mode] = perSecond;
      emit({
        bench: "isolation",
        system: "troupe",
        isolation: mode === "none" ? "in-process" : mode,
        executors: mode === "none" ? 0 : ISOLATION_EXECUTORS,
        concurrency: ISOLATION_EXECUTORS,
        unit: "tasks/s",
        value: Math.round(perSecond),
        correct,
        tasks: n,
        ...(mode === "none" ? {} : { overInProcess: round3(perSecond / (rates.none ?? perSecond)) }),
      });
      await troupe.close();
    } finally {
      await server.stop();
    }
  }
};

/** A process's CPU time so far, user and system, in ms (Linux; 0 elsewhere). */
const cpuMs = (pid: number | undefined): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return 0;
  }
};
/** Linux's USER_HZ: /proc times are in hundredths of a second. */
const CLOCK_TICKS = 100;

/** A process's resident memory, in MiB (Linux). */
const rssMiB = async (pid: number): Promise<number> => {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return Math.round(kb / 1024);
};

/**
 * Memory while `total` tasks wait queued: this client's RSS as it submits them (nobody
 * awaits them), and a `troupe worker` process's RSS after running a while with that many
 * queued, at each mark. Opt-in (`BENCH_MEMORY=1`): a million submissions take minutes.
 */
const memory = async (marks: ReadonlyArray<number>) => {
  const server = await NatsServer.start();
  const troupe = await Troupe.connect({ servers: server.url, logger: quiet });
  const cli = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
  const tasks = fileURLToPath(new URL("./tasks.js", import.meta.url));
  try {
    let submitted = 0;
    for (const mark of marks) {
      await window(mark - submitted, IN_FLIGHT, async () => {
        await troupe.submit(noop, { i: submitted++, pad: PAD });
      });
      global.gc?.();
      const client = await rssMiB(process.pid);
      const child = spawn(process.execPath, [cli, "worker", tasks, "--concurrency", String(CONCURRENCY)], {
        env: { ...process.env, NATS_URL: server.url, TROUPE_LOG_LEVEL: "info" },
        stdio: ["ignore", "pipe", "ignore"],
      });
      await new Promise<void>((resolve) => child.stdout?.on("data", (d: Buffer) => d.toString().includes("worker started") && resolve()));
      await new Promise((r) => setTimeout(r, 3_000)); // running, with the rest still queued
      const worker = await rssMiB(child.pid!);
      child.kill("SIGKILL");
      emit({ bench: "memory", system: "troupe", submitted: mark, unit: "MiB", clientRss: client, workerRss: worker });
    }
  } finally {
    await troupe.close();
    await server.stop();
  }
};

/** Submit → handler start, a few tasks in flight at a time (latency, not load). */
const troupeLatency = async (url: string) => {
  const { task: timed, starts } = stampedTask("bench.timed");
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

/** Whether something listens on 127.0.0.1:`port` (a peer's server: Redis, PostgreSQL). */
const answers = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = tcpConnect(port, "127.0.0.1");
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
 * A peer's rounds in the throughput shape: a warm one (`WARM` jobs), then the measured one
 * (`N`): jobs added `IN_FLIGHT` at a time, each round done once the peer said each completed.
 * Jobs per second of the measured round.
 */
const timedJobs = async (add: (i: number) => Promise<unknown>, onCompleted: (completed: () => void) => void): Promise<number> => {
  let done = 0;
  let goal = 0;
  let finish = () => {};
  onCompleted(() => {
    if (++done === goal) finish();
  });
  const round = async (n: number) => {
    done = 0;
    goal = n;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const started = performance.now();
    await window(n, IN_FLIGHT, add);
    await finished;
    return n / ((performance.now() - started) / 1000);
  };
  if (WARM > 0) await round(WARM);
  return round(N);
};

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
  const starts: number[] = [];
  const worker = new Worker(
    name,
    async (job) => {
      if (job.data.t0 !== undefined) starts.push(performance.now() - job.data.t0);
      return job.data.i;
    },
    { connection, concurrency: CONCURRENCY },
  );
  await worker.waitUntilReady();
  const perSecond = await timedJobs(
    (i) => queue.add("noop", { i, pad: PAD }, { removeOnComplete: true }),
    (completed) => worker.on("completed", completed),
  );
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { perSecond };
};

/**
 * Graphile Worker (PostgreSQL) is not a dependency either: `npm run bench` installs it without
 * saving, like BullMQ. Its jobs live in a schema of their own, dropped after the round.
 */
interface GraphileWorker {
  run(options: object): Promise<{ stop(): Promise<void>; events: { on(event: "job:success", fn: () => void): void } }>;
  makeWorkerUtils(options: object): Promise<{ addJob(task: string, payload: object): Promise<unknown>; migrate(): Promise<void>; release(): Promise<void> }>;
}
const GRAPHILE = "graphile-worker";
const PG_URL = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const loadGraphile = async (): Promise<GraphileWorker | string> => {
  try {
    return (await import(GRAPHILE)) as GraphileWorker;
  } catch {
    return "graphile-worker is not installed (npm run bench installs it with `npm install --no-save graphile-worker@0.18`)";
  }
};

const graphile = async ({ run, makeWorkerUtils }: GraphileWorker) => {
  const schema = `troupe_bench_${process.pid}_${Date.now()}`;
  const utils = await makeWorkerUtils({ connectionString: PG_URL, schema });
  await utils.migrate();
  const runner = await run({
    connectionString: PG_URL,
    schema,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    pollInterval: 1_000,
    logger: undefined,
    taskList: { noop: async (payload: { i: number }) => payload.i },
  });
  const perSecond = await timedJobs(
    (i) => utils.addJob("noop", { i, pad: PAD }),
    (completed) => runner.events.on("job:success", completed),
  );
  await runner.stop();
  await utils.release();
  // The round's schema goes with it.
  const { default: pg } = (await import("pg" as string)) as { default: { Client: new (o: object) => { connect(): Promise<void>; query(q: string): Promise<unknown>; end(): Promise<void> } } };
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  await client.query(`drop schema if exists "${schema}" cascade`);
  await client.end();
  return { perSecond };
};

const main = async () => {
  const server = await NatsServer.start();
  const common = { tasks: N, node: process.version, natsServer: natsServerVersion(server.binary).join(".") };
  try {
    const raw = await rawJetStream(server.url);
    emit({ bench: "throughput", system: "jetstream-raw", unit: "msg/s", value: Math.round(raw), ...common });
    const lib = (await answers(6379)) ? await loadBullmq() : "no Redis answers on 127.0.0.1:6379";
    if (typeof lib === "string") emit({ bench: "throughput", system: "bullmq", skipped: lib });
    const gw = (await answers(5432)) ? await loadGraphile() : "no PostgreSQL answers on 127.0.0.1:5432";
    if (typeof gw === "string") emit({ bench: "throughput", system: "graphile-worker", skipped: gw });
    // Alternated round by round, so all see the same state of a noisy machine.
    const troupeRates: number[] = [];
    const ratios: number[] = [];
    const overFloor: number[] = [];
    const overFloorJs: number[] = [];
    const overGraphile: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const troupe = await troupeThroughput(noop);
      troupeRates.push(troupe.perSecond);
      emit({
        bench: "throughput",
        system: "troupe",
        round,
        unit: "tasks/s",
        value: Math.round(troupe.perSecond),
        correct: troupe.correct,
        inFlight: IN_FLIGHT,
        concurrency: CONCURRENCY,
        inMsgsPerTask: troupe.inMsgsPerTask,
        storedPerTask: troupe.storedPerTask,
        receivedPerTask: troupe.receivedPerTask,
        cpuUsPerTask: troupe.cpuUsPerTask,
        ...common,
      });
      for (const writes of ["pipelined", "js.publish"] as const) {
        const floorServer = await NatsServer.start();
        try {
          const floor = await floorThroughput(floorServer.url, { n: N, warm: WARM, inFlight: IN_FLIGHT, concurrency: CONCURRENCY, pad: PAD, writes });
          (writes === "pipelined" ? overFloor : overFloorJs).push(troupe.perSecond / floor);
          emit({ bench: "throughput", system: writes === "pipelined" ? "floor" : "floor-js.publish", round, unit: "tasks/s", value: Math.round(floor), protocol: "work + claim (expect 0) + outcome (expect claim) + ack", writes, storedPerTask: 3, ...common });
        } finally {
          await floorServer.stop();
        }
      }
      if (typeof lib !== "string") {
        const bull = await bullmq(lib);
        ratios.push(troupe.perSecond / bull.perSecond);
        emit({ bench: "throughput", system: "bullmq", round, unit: "jobs/s", value: Math.round(bull.perSecond), tasks: N, node: process.version });
      }
      if (typeof gw !== "string") {
        const g = await graphile(gw);
        overGraphile.push(troupe.perSecond / g.perSecond);
        emit({ bench: "throughput", system: "graphile-worker", round, unit: "jobs/s", value: Math.round(g.perSecond), tasks: N, node: process.version });
      }
    }
    if (process.env.BENCH_ONLY === "throughput") {
      emit({
        bench: "throughput-ratio",
        troupeOverFloor: round3(median(overFloor)),
        floorRounds: overFloor.map(round3),
        troupeOverFloorJsPublish: round3(median(overFloorJs)),
        ...(ratios.length === 0 ? {} : { troupeOverBullmq: round3(median(ratios)) }),
        ...(overGraphile.length === 0 ? {} : { troupeOverGraphileWorker: round3(median(overGraphile)) }),
      });
      return;
    }
    const armed = await troupeThroughput(guarded);
    const plain = median(troupeRates);
    emit({
      bench: "throughput",
      system: "troupe-timeout-retry",
      unit: "tasks/s",
      value: Math.round(armed.perSecond),
      correct: armed.correct,
      overPlainMedian: round3(armed.perSecond / plain),
      ...common,
    });
    // Every priority in turn: five consumers for the type, the first with work asked first.
    const prioritized = await troupeThroughput(noop, (i) => ({ priority: 1 + (i % 5) }));
    emit({
      bench: "throughput",
      system: "troupe-priorities",
      unit: "tasks/s",
      value: Math.round(prioritized.perSecond),
      correct: prioritized.correct,
      priorities: "1-5 in turn",
      overPlainMedian: round3(prioritized.perSecond / plain),
      ...common,
    });
    // Keyed tasks: 10 keys, each capped at 8 running (80 slots, more than the worker's 64).
    const keys = await troupeThroughput(keyedNoop, (i) => ({ key: `k${i % 10}` }));
    emit({
      bench: "throughput",
      system: "troupe-keys",
      unit: "tasks/s",
      value: Math.round(keys.perSecond),
      correct: keys.correct,
      keys: 10,
      perKey: 8,
      overPlainMedian: round3(keys.perSecond / plain),
      ...common,
    });
    // A type-wide concurrency limit the worker never reaches: what its limiter costs.
    const limitedN = Math.max(1_000, Math.floor(N / 4));
    const capped = await troupeThroughput(cappedNoop, undefined, limitedN);
    emit({
      bench: "throughput",
      system: "troupe-limits",
      unit: "tasks/s",
      value: Math.round(capped.perSecond),
      correct: capped.correct,
      limits: { concurrency: CONCURRENCY },
      tasks: limitedN,
      overPlainMedian: round3(capped.perSecond / plain),
      node: process.version,
    });
    // An OpenTelemetry SDK registered: a submit and an attempt span per task, exported in memory.
    const traced = await withTracing(() => troupeThroughput(noop));
    emit({
      bench: "throughput",
      system: "troupe-traced",
      unit: "tasks/s",
      value: Math.round(traced.perSecond),
      correct: traced.correct,
      spansPerTask: round3(traced.spans / N),
      cpuUsPerTask: traced.cpuUsPerTask,
      overPlainMedian: round3(traced.perSecond / plain),
      ...common,
    });
    // The inspector open on a page: every event streamed to it as it happens.
    const watched = await troupeThroughput(noop, undefined, N, inspected);
    emit({
      bench: "throughput",
      system: "troupe-inspected",
      unit: "tasks/s",
      value: Math.round(watched.perSecond),
      correct: watched.correct,
      cpuUsPerTask: watched.cpuUsPerTask,
      overPlainMedian: round3(watched.perSecond / plain),
      ...common,
    });
    // Per task the KV bucket waits for 2 acknowledged writes, the work stream for 1: with an
    // fsync before each ack (and writes to one stream in order), the bucket bounds the rate.
    const sync = await fsyncLatency();
    emit({
      bench: "durability",
      system: "fsync estimate",
      unit: "us",
      what: "1 KiB append + fdatasync, temp dir",
      p50: sync.p50,
      p99: sync.p99,
      boundTasksPerSecond: Math.round(1_000_000 / (2 * sync.p50)),
      plainTasksPerSecond: Math.round(plain),
    });
    // Finding 3 FAILED and the newest 50 COMPLETED among 100,000 finished tasks, against 63.
    const finished = Number(process.env.BENCH_LIST_RECORDS ?? 100_000);
    const listed = await listing(finished);
    for (const [query, key] of [["status FAILED (3 match)", "failed"], ["status COMPLETED, limit 50", "completed"]] as const) {
      emit({
        bench: "list",
        system: "troupe",
        query,
        unit: "ms",
        value: listed.large[key],
        finishedRecords: finished + 63,
        overSixtyThreeRecords: round3(listed.large[key] / listed.small[key]),
      });
    }
    const latency = await troupeLatency(server.url);
    emit({ bench: "submit-to-start", system: "troupe", worker: "busy", unit: "ms", p50: latency.p50, p99: latency.p99, inFlight: 4 });
    const idleMs = Number(process.env.BENCH_IDLE_MS ?? 10_000);
    const idle = await idleLatency(server.url, idleMs, 3);
    const floorIdle = await floorIdleStart(server.url, idleMs, 3);
    emit({ bench: "submit-to-start", system: "floor", worker: `idle ${idleMs} ms`, unit: "ms", p50: pct(floorIdle, 0.5), max: round3(Math.max(...floorIdle)), samples: floorIdle.map(round3) });
    emit({ bench: "submit-to-start", system: "troupe", worker: `idle ${idleMs} ms`, unit: "ms", ...idle, overFloorP50: round3(idle.p50 / pct(floorIdle, 0.5)) });
    const two = await scaleOut(2);
    emit({
      bench: "scale-out",
      system: "troupe",
      shape: "1 client process + 2 worker processes",
      unit: "tasks/s",
      value: Math.round(two.perSecond),
      correct: two.correct,
      overOneProcess: round3(two.perSecond / plain),
    });
    await isolation();
    const wf = await workflowOverhead(server.url);
    emit({ bench: "workflow", system: "troupe", steps: wf.steps, unit: "ms", value: Math.round(wf.workflowMs), shape: "1 → 998 → 1" });
    emit({
      bench: "workflow-step-overhead",
      system: "troupe",
      unit: "ms/step",
      value: round3((wf.workflowMs - wf.plainMs) / wf.steps),
      plainTasksMs: Math.round(wf.plainMs),
      workflowOverPlain: Number((wf.workflowMs / wf.plainMs).toFixed(2)),
    });
    if (process.env.BENCH_MEMORY === "1") await memory([100_000, 500_000, 1_000_000]);
    emit({
      bench: "throughput-ratio",
      troupeOverRaw: round3(plain / raw),
      troupeOverFloor: round3(median(overFloor)),
      floorRounds: overFloor.map(round3),
      troupeOverFloorJsPublish: round3(median(overFloorJs)),
      ...(ratios.length === 0 ? {} : { troupeOverBullmq: round3(median(ratios)), rounds: ratios.map(round3) }),
      ...(overGraphile.length === 0 ? {} : { troupeOverGraphileWorker: round3(median(overGraphile)), graphileRounds: overGraphile.map(round3) }),
    });
  } finally {
    await server.stop();
  }
};

await main();
process.exit(0);
