/**
 * A worker: pulls the task types it registered, runs each delivery as a task actor,
 * keeps its registry entry in `troupe-workers` fresh, and stops gracefully.
 */
import { availableParallelism, hostname } from "node:os";
import { nuid } from "@nats-io/transport-node";
import { createActor, type Actor } from "xstate";
import { workerMachine } from "../../machines/worker.js";
import type { ExecutorInfo, WorkerInfo } from "../../machines/records.js";
import type { Logger } from "pino";
import { InvalidDefinition, InvalidOption } from "../errors.js";
import { Schema } from "effect";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { ensureTaskConsumer, WORKERS_TTL, type NatsHandle } from "../nats/connection.js";
import { controlSubject, eventSubject, logSubject, taskSubject } from "../nats/topology.js";
import { startReaper } from "./reaper.js";
import { MicroService } from "./service.js";
import { VERSION } from "../version.js";
import { TaskHost } from "../actor/task-host.js";
import { liveFiberClock, type FiberClock } from "../actor/fiber-clock.js";
import type { TaskStore } from "../store/task-store.js";
import type { TaskDefinition } from "../task.js";
import { durationOption, parseDuration, type DurationInput } from "../duration.js";
import { loadTasks, moduleUrl } from "../tasks-module.js";
import { ExecutorPool, type Isolation } from "../pool/pool.js";
import { runDelivery, type DeliveryDeps } from "./delivery.js";
import { PullLoop, type PullSource } from "./pull.js";

/** The body of a request to a worker's `cancel` endpoint. */
export const CancelRequest = Schema.Struct({ id: Schema.String, reason: Schema.optional(Schema.String) });

/** How long the worker actor may go without hearing of tasks started and finished. */
const REPORT_MS = 50;

export interface WorkerOptions {
  /** The tasks this worker runs, in this process; it never receives other types. */
  readonly tasks?: ReadonlyArray<TaskDefinition>;
  /**
   * A module (a path or a URL) whose exported tasks this worker runs: in this process, or
   * with `isolation` in executors that each load it.
   */
  readonly module?: string | URL;
  /** Run handlers in `executors` worker threads or child processes (needs `module`). */
  readonly isolation?: Isolation;
  /** Threads or processes of an isolated worker (default: the machine's cores). */
  readonly executors?: number;
  /** An executor's heap limit in MB; over it the attempt fails `OutOfMemory` and the executor is replaced. */
  readonly memoryLimitMb?: number;
  /**
   * How long an isolated handler has, once aborted (deadline, cancel, shutdown), to end
   * before its executor is terminated (default 5 s).
   */
  readonly gracePeriod?: DurationInput;
  /** Tasks run at once (default 1; an isolated worker's default and maximum: its executors). */
  readonly concurrency?: number;
  /** Worker id (default: a fresh unique id). */
  readonly id?: string;
  /** How long one pull request waits on the server (ms, default 5000). */
  readonly pullExpires?: number;
}

export interface StopOptions {
  /**
   * How long running tasks may take to finish before they are interrupted and handed back
   * to other workers (default 30 s; 0 interrupts them at once).
   */
  readonly timeout?: DurationInput;
}

export interface WorkerStats {
  readonly id: string;
  readonly state: string;
  readonly running: number;
  readonly processed: number;
  readonly failed: number;
  /** `thread` or `process` for an isolated worker. */
  readonly isolation?: Isolation;
  readonly executors?: ReadonlyArray<ExecutorInfo>;
}

export class Worker {
  private readonly loop: PullLoop;
  private readonly host: TaskHost;
  private service: MicroService | undefined;
  private reaper: { stop: () => Promise<void> } | undefined;
  private readonly actor: Actor<typeof workerMachine>;
  private readonly inFlight = new Set<Promise<unknown>>();
  private stopping: Promise<void> | undefined;
  private readonly startedAt = new Date().toISOString();
  /** Tasks started and finished since the actor last heard: reported every few milliseconds, not per task. */
  private readonly unreported = { started: 0, finished: 0, failed: 0 };
  private reportQueued = false;
  /** The first registry write: a worker is listed once `start` resolves. */
  private registered: Promise<void> = Promise.resolve();
  /** Set when stop must not wait any longer (a second signal). */
  private hurry: (() => void) | undefined;

  private constructor(
    readonly id: string,
    private readonly nats: NatsHandle,
    private readonly store: TaskStore,
    private readonly definitions: ReadonlyMap<string, TaskDefinition>,
    consumers: ReadonlyArray<PullSource>,
    private readonly concurrency: number,
    private readonly log: Logger,
    clock: FiberClock,
    pullExpires: number,
    private readonly pool: ExecutorPool | undefined,
  ) {
    this.actor = createActor(
      workerMachine.provide({
        actions: {
          // After the transition, so the entry shows the state it leads to.
          register: () => queueMicrotask(() => (this.registered = this.writeRegistry())),
          beat: () => queueMicrotask(() => void this.writeRegistry()),
          deregister: () => {
            void nats.workers.delete(id).catch(() => undefined);
          },
        },
      }),
      { input: { concurrency, heartbeatMs: Math.floor(WORKERS_TTL / 3) }, clock },
    );
    const host = new TaskHost({ store, clock, workerId: id, log, maxPayload: store.maxPayload, random: Math.random, pool });
    this.host = host;
    const deliveries: DeliveryDeps = { nc: nats.nc, store, host, definitions, workerId: id, log, now: clock.now };
    this.loop = new PullLoop(nats.nc, consumers, {
      concurrency,
      expires: pullExpires,
      log,
      onLease: (lease) => {
        this.count(1, 0, 0);
        const run = runDelivery(lease, deliveries)
          .catch((err) => {
            log.error({ err }, "delivery failed unexpectedly");
            return "failed" as const;
          })
          .then((outcome) => {
            this.inFlight.delete(run);
            this.count(0, 1, outcome === "failed" ? 1 : 0);
            this.loop.release();
          });
        this.inFlight.add(run);
      },
    });
  }

  /** Ensure the consumers, start the executors (an isolated worker), register, and start pulling. */
  static async start(
    nats: NatsHandle,
    store: TaskStore,
    options: WorkerOptions,
    log: Logger,
    clock: FiberClock = liveFiberClock(),
  ): Promise<Worker> {
    const invalid = (message: string) => new InvalidDefinition({ message: `worker: ${message}` });
    const isolation = options.isolation;
    if (isolation !== undefined && isolation !== "thread" && isolation !== "process") {
      throw invalid(`isolation must be "thread" or "process", got ${JSON.stringify(isolation)}`);
    }
    if (options.tasks !== undefined && options.module !== undefined) throw invalid("give tasks or a module, not both");
    if (isolation !== undefined && options.module === undefined) {
      throw invalid("isolation needs a module (a path or URL) that executors load; handlers cannot be sent to them");
    }
    if (isolation === undefined) {
      for (const key of ["executors", "memoryLimitMb", "gracePeriod"] as const) {
        if (options[key] !== undefined) throw invalid(`${key} applies to an isolated worker (isolation: "thread" or "process")`);
      }
    }
    const executors = options.executors ?? availableParallelism();
    if (!Number.isInteger(executors) || executors < 1) throw invalid(`executors must be an integer ≥ 1, got ${String(options.executors)}`);
    const memoryLimitMb = options.memoryLimitMb;
    if (memoryLimitMb !== undefined && (!Number.isInteger(memoryLimitMb) || memoryLimitMb < 16)) {
      throw invalid(`memoryLimitMb must be an integer of at least 16, got ${String(memoryLimitMb)}`);
    }
    const gracePeriod = options.gracePeriod === undefined ? 5_000 : durationOption("gracePeriod", options.gracePeriod, invalid);
    const concurrency = options.concurrency ?? (isolation === undefined ? 1 : executors);
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new InvalidDefinition({ message: `worker concurrency must be an integer ≥ 1, got ${concurrency}` });
    }
    if (isolation !== undefined && concurrency > executors) {
      throw invalid(`concurrency (${concurrency}) cannot exceed executors (${executors}): each executor runs one handler at a time`);
    }
    const module = options.module === undefined ? undefined : moduleUrl(options.module);
    const tasks = module === undefined ? (options.tasks ?? []) : await loadTasks(module).catch((e: unknown) => {
      throw invalid(`cannot load ${module}: ${e instanceof Error ? e.message : String(e)}`);
    });
    if (tasks.length === 0) {
      throw new InvalidDefinition({ message: module === undefined ? "a worker needs at least one task" : `${module} exports no task definitions (defineTask)` });
    }
    const definitions = new Map<string, TaskDefinition>();
    for (const task of tasks) {
      const other = definitions.get(task.name);
      if (other !== undefined && other !== task) {
        throw new InvalidDefinition({ message: `two different definitions of task "${task.name}" given to one worker` });
      }
      definitions.set(task.name, task);
    }
    const consumers = await Promise.all(
      [...definitions.values()].map(async (t) => ({
        consumer: await ensureTaskConsumer(nats.jsm, t.queue, t.name, { ackWaitMs: t.heartbeatTimeout, maxDeliver: t.maxDeliveries }),
        subject: taskSubject(t.queue, t.name),
      })),
    );
    const id = options.id ?? `w-${nuid.next()}`;
    const workerLog = log.child({ workerId: id });
    const pool =
      isolation === undefined || module === undefined
        ? undefined
        : await ExecutorPool.start({
            module,
            isolation,
            executors,
            memoryLimitMb,
            gracePeriod,
            workerId: id,
            log: workerLog,
            maxPayload: store.maxPayload,
            onLog: (taskId, line) => publishLog(nats, id, taskId, line),
          });
    const worker = new Worker(id, nats, store, definitions, consumers, concurrency, workerLog, clock, options.pullExpires ?? 5_000, pool);
    await worker.begin();
    return worker;
  }

  private async begin(): Promise<void> {
    this.actor.start();
    this.actor.send({ type: "STARTED" });
    // One micro service per worker: `nats micro ls/info/stats troupe-worker`. Its `cancel`
    // endpoint is how `troupe.cancel` asks the worker holding a task to interrupt it.
    this.service = new MicroService(
      this.nats.nc,
      {
        name: "troupe-worker",
        id: this.id,
        version: VERSION,
        description: `Troupe worker running ${[...this.definitions.keys()].join(", ")}`,
        metadata: {
          tasks: [...this.definitions.keys()].join(","),
          concurrency: String(this.concurrency),
          pid: String(process.pid),
          isolation: this.pool?.options.isolation ?? "none",
        },
      },
      [
        {
          name: "cancel",
          subject: controlSubject(this.id, "cancel"),
          handler: async (msg) => {
            const body = decodeWith(CancelRequest, msg.data, "cancel request");
            if (!body.ok) throw body.error;
            const record = await this.host.cancel(body.value.id, body.value.reason ?? "cancelled");
            return record === undefined ? { running: false } : { running: true, record };
          },
        },
        { name: "stats", subject: controlSubject(this.id, "stats"), handler: async () => this.stats, data: () => this.stats },
        {
          // Stop taking work and finish what runs; the worker then stops (its process, under `run()`, exits).
          name: "drain",
          subject: controlSubject(this.id, "drain"),
          handler: async (msg) => {
            const body = decodeWith(StopRequest, msg.data.length === 0 ? new TextEncoder().encode("{}") : msg.data, "drain request");
            if (!body.ok) throw body.error;
            this.log.info({ timeout: body.value.timeout }, "drain requested");
            void this.stop(body.value.timeout === undefined ? {} : { timeout: body.value.timeout });
            return { draining: true, running: this.stats.running };
          },
        },
        {
          // Stop now: running tasks are interrupted and handed back to other workers.
          name: "shutdown",
          subject: controlSubject(this.id, "shutdown"),
          handler: async () => {
            this.log.info("shutdown requested");
            const running = this.stats.running;
            void this.stop({ timeout: 0 });
            return { stopping: true, running };
          },
        },
      ],
    );
    this.service.start();
    this.reaper = await startReaper(this.nats, this.store, this.log);
    this.loop.start();
    void (async () => {
      for await (const status of this.nats.nc.status()) {
        if (status.type === "disconnect") this.actor.send({ type: "DISCONNECTED" });
        if (status.type === "reconnect") this.actor.send({ type: "RECONNECTED" });
      }
    })().catch(() => undefined);
    await this.registered;
    this.log.info({ tasks: [...this.definitions.keys()], concurrency: this.concurrency }, "worker started");
  }

  /** Note tasks started and finished; the worker actor hears them within `REPORT_MS` (at once when its stats are read). */
  private count(started: number, finished: number, failed: number): void {
    this.unreported.started += started;
    this.unreported.finished += finished;
    this.unreported.failed += failed;
    if (this.reportQueued) return;
    this.reportQueued = true;
    setTimeout(() => this.report(), REPORT_MS).unref();
  }

  private report(): void {
    this.reportQueued = false;
    const { started, finished, failed } = this.unreported;
    if (started === 0 && finished === 0) return;
    this.unreported.started = this.unreported.finished = this.unreported.failed = 0;
    this.actor.send({ type: "TASKS", started, finished, failed });
  }

  get stats(): WorkerStats {
    this.report();
    const s = this.actor.getSnapshot();
    const stats = { id: this.id, state: String(s.value), running: s.context.running, processed: s.context.processed, failed: s.context.failed };
    return this.pool === undefined ? stats : { ...stats, isolation: this.pool.options.isolation, executors: this.pool.info() };
  }

  private writeRegistry(): Promise<void> {
    this.report();
    const s = this.actor.getSnapshot();
    const entry: WorkerInfo = {
      id: this.id,
      state: String(s.value),
      hostname: hostname(),
      pid: process.pid,
      tasks: [...this.definitions.values()].map((t) => ({ name: t.name, queue: t.queue })),
      concurrency: this.concurrency,
      running: s.context.running,
      processed: s.context.processed,
      failed: s.context.failed,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      ...(this.pool === undefined ? {} : { isolation: this.pool.options.isolation, executors: this.pool.info() }),
    };
    const payload = encodeJson(entry);
    if (!this.nats.nc.isClosed()) this.nats.nc.publish(eventSubject("worker", this.id, "heartbeat"), payload);
    return this.nats.workers.put(this.id, payload).then(
      () => undefined,
      (err: unknown) => this.log.warn({ err }, "worker registry write failed"),
    );
  }

  /**
   * Run until SIGTERM or SIGINT, then stop gracefully (`stop(options)`); a second signal
   * stops at once, handing running tasks back. Resolves once the worker has stopped.
   */
  async run(options: StopOptions = {}): Promise<void> {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      signals++;
      if (signals === 1) {
        this.log.info({ signal }, "stopping worker; a second signal stops it at once");
        void this.stop(options);
      } else {
        this.log.warn({ signal }, "second signal: stopping at once");
        this.hurry?.();
      }
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      await new Promise<void>((resolve) => {
        this.stopped = resolve;
        if (this.stopping !== undefined) void this.stopping.then(resolve);
      });
      await this.stopping;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  }

  /** Resolves `run()` once a stop has finished, however it was asked for. */
  private stopped: (() => void) | undefined;

  /**
   * Stop pulling, let running tasks finish (up to `timeout`), then interrupt the rest (an
   * executor's handler within its grace period, or its executor terminated) and hand them
   * back to other workers.
   */
  stop(options: StopOptions = {}): Promise<void> {
    if (this.stopping !== undefined) {
      // Asked again with a shorter timeout (a shutdown after a drain): hurry up.
      if (options.timeout !== undefined && (parseDuration(options.timeout) ?? 1) === 0) this.hurry?.();
      return this.stopping;
    }
    const timeout = options.timeout === undefined ? 30_000 : durationOption("timeout", options.timeout, (message) => new InvalidOption({ message: `worker.stop: ${message}` }));
    this.stopping = (async () => {
      this.actor.send({ type: "STOP" });
      await this.loop.stop();
      let timer: NodeJS.Timeout | undefined;
      const drained = Promise.all(this.inFlight).then(() => true);
      const expired = new Promise<false>((resolve) => {
        this.hurry = () => resolve(false);
        timer = setTimeout(() => resolve(false), timeout);
      });
      const finished = await Promise.race([drained, expired]);
      clearTimeout(timer);
      if (!finished) {
        this.log.warn({ running: this.inFlight.size }, "stop timeout: running tasks interrupted and left to redelivery");
        this.host.interruptAll();
        // Executors that are still busy are terminated now rather than after their grace period.
        const pool = this.pool;
        if (pool !== undefined) {
          this.hurry = () => void pool.stop();
          if (timeout === 0) void pool.stop();
        }
        await Promise.all(this.inFlight);
      }
      await this.pool?.stop();
      this.service?.stop();
      await this.reaper?.stop();
      this.report();
      this.actor.send({ type: "DRAINED" });
      this.actor.stop();
      this.log.info(this.stats, "worker stopped");
    })();
    void this.stopping.then(() => this.stopped?.());
    return this.stopping;
  }
}

/** The body of a `drain` request: how long running tasks may take, in ms (default 30 s). */
const StopRequest = Schema.Struct({ timeout: Schema.optional(Schema.Number) });

/** A handler's log line, to `troupe.logs.<workerId>.<taskId>` (TROUPE_LOGS) and this process's stdout. */
const publishLog = (nats: NatsHandle, workerId: string, taskId: string, line: string): void => {
  process.stdout.write(line.endsWith("\n") ? line : `${line}\n`);
  if (nats.nc.isClosed()) return;
  try {
    nats.nc.publish(logSubject(workerId, taskId), line.endsWith("\n") ? line.slice(0, -1) : line);
  } catch {
    // A connection closing: the line is on stdout.
  }
};
