/**
 * A worker: pulls the task types it registered, runs each delivery as a task actor,
 * keeps its registry entry in `troupe-workers` fresh, and stops gracefully.
 */
import { availableParallelism, hostname } from "node:os";
import { inspect, type InspectOptionsStylized } from "node:util";
import { nuid } from "@nats-io/transport-node";
import { workerMachine, type WorkerContext, type WorkerEvent } from "../../machines/worker.js";
import { PauseEntry, type ExecutorInfo, type WorkerInfo } from "../../machines/records.js";
import { pino, type Logger } from "pino";
import { destinationOf, handlerLogLevel, lineLevel } from "../log.js";
import { InvalidDefinition, InvalidOption, NatsFailure } from "../errors.js";
import { Schema } from "effect";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { BucketWatch } from "../nats/bucket.js";
import { ensureTaskConsumer, WORKERS_TTL, type NatsHandle } from "../nats/connection.js";
import {
  consumerName,
  controlSubject,
  keySubject,
  DEFAULT_PRIORITY,
  kvSubject,
  WORKERS_BUCKET,
  PAUSES_BUCKET,
  Headers,
  statePath,
  logSubject,
  parseWorkSubject,
  prioritySubjects,
  bellSubject,
  TASKS_STREAM,
  taskSubject,
} from "../nats/topology.js";
import type { Subscription } from "@nats-io/transport-node";
import { startReaper } from "./reaper.js";
import { MicroService } from "./service.js";
import { VERSION } from "../version.js";
import { TaskHost } from "../actor/task-host.js";
import { HostedActor } from "../actor/hosted-actor.js";
import { TransitionPlans } from "../actor/transition-plans.js";
import { liveFiberClock, type FiberClock } from "../actor/fiber-clock.js";
import type { TaskStore } from "../store/task-store.js";
import type { TaskDefinition } from "../task.js";
import { durationOption, type DurationInput } from "../duration.js";
import { inspectHandle } from "../handle-inspect.js";
import { loadTasks, resolveModule } from "../tasks-module.js";
import { ExecutorPool, type Isolation } from "../pool/pool.js";
import { runDelivery, type DeliveryDeps, type LimiterHandle } from "./delivery.js";
import { Limiter } from "../limits/limiter.js";
import { PullLoop, type PullSource } from "./pull.js";
import { withPayloads } from "../store/payloads.js";
import { RpcService, rpcSettings, type RpcOptions, type RpcSubmitter } from "../rpc/service.js";
import { advertiseMethods } from "../rpc/directory.js";
import { metricsOption, type MetricsOptions } from "../metrics/server.js";
import { WorkerMetrics } from "../metrics/worker-metrics.js";

/** The body of a request to a worker's `cancel` endpoint. */
export const CancelRequest = Schema.Struct({ id: Schema.String, reason: Schema.optional(Schema.String) });

/** The output size an attempt's own check takes (`execute`): any; large ones are stored by `withPayloads`. */
const UNBOUNDED_OUTPUT = Number.MAX_SAFE_INTEGER;

/** How long a worker that gave up on NATS waits for its consumers to close before it exits. */
const LOST_CLEANUP_MS = 2_000;
/** How long a starting worker waits for the pauses in effect (`troupe-pauses`) before it gives up starting. */
const PAUSES_READ_MS = 10_000;

/** The worker machine's transitions, learned once per process and replayed by every worker. */
const plans = new TransitionPlans<WorkerSnapshot, WorkerEvent>(workerMachine, { concurrency: 1, heartbeatMs: 1 });

interface WorkerSnapshot {
  readonly value: string | Record<string, unknown>;
  readonly context: WorkerContext;
  readonly status: string;
}

/** A worker state's name as the registry shows it: its top-level state (`draining`, not its substate). */
const stateName = (value: WorkerSnapshot["value"]): string => (typeof value === "string" ? value : (Object.keys(value)[0] ?? "?"));

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
  /**
   * How long the worker may be cut off from NATS before it gives up (default 30 s; `false`:
   * never): it interrupts its tasks (other workers take them after their lease) and, with
   * `exitOnDisconnect`, exits the process non-zero so that its supervisor restarts it.
   */
  readonly disconnectTimeout?: DurationInput | false;
  /** Exit the process (code 1) when the worker gives up on NATS (default true); else `run()` rejects with `NatsFailure`. */
  readonly exitOnDisconnect?: boolean;
  /** Serve Prometheus metrics on `GET /metrics` at this port (0: a free one, see `metricsPort`). */
  readonly metrics?: MetricsOptions;
  /**
   * Serve JSON-RPC 2.0 on `troupe.rpc` (the `troupe-rpc` micro service, docs/rpc.md): on by
   * default; `false` turns it off, `{ timeout }` bounds a call's wait (default 60 s).
   */
  readonly rpc?: boolean | RpcOptions;
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
  /** The ids of the tasks it runs now. */
  readonly tasks: ReadonlyArray<string>;
  /** The pauses in effect for its tasks (`<queue>` or `<queue>.<type>`). */
  readonly paused: ReadonlyArray<string>;
}

export class Worker {
  private readonly loop: PullLoop;
  private readonly host: TaskHost;
  private service: MicroService | undefined;
  private rpc: RpcService | undefined;
  private reaper: { stop: () => Promise<void> } | undefined;
  /** The worker actor: the one owner of capacity and lifecycle. */
  private readonly actor: HostedActor<WorkerSnapshot, WorkerEvent>;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly startedAt = new Date().toISOString();
  /** The first registry write: a worker is listed once `start` resolves. */
  private registered: Promise<void> = Promise.resolve();
  /** Resolved (or rejected, when it gave up on NATS) once the worker actor reached `stopped` and everything is released. */
  private readonly ended: Promise<void>;
  private end!: (error?: unknown) => void;
  private loopStopped: Promise<void> = Promise.resolve();
  private interrupted = false;

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
    disconnectTimeoutMs: number | undefined,
    private readonly exitOnDisconnect: boolean,
  ) {
    this.ended = new Promise<void>((resolve, reject) => (this.end = (error) => (error === undefined ? resolve() : reject(error))));
    this.ended.catch(() => undefined);
    const input = { concurrency, heartbeatMs: Math.floor(WORKERS_TTL / 3), disconnectTimeoutMs };
    this.actor = new HostedActor(plans, plans.initial(input), clock, {
      register: () => (this.registered = this.writeRegistry()),
      beat: () => void this.writeRegistry(),
      deregister: () => void nats.workers.delete(id).catch(() => undefined),
      pullNow: () => this.loop.resume(),
      stopPulling: () => {
        this.pauseWatchStopped = this.pauseWatch?.stop();
        for (const sub of this.prioritySubs.splice(0)) sub.unsubscribe();
        this.loopStopped = this.loop.stop();
      },
      interruptAll: () => this.interruptAll(),
      finish: () =>
        void this.finish().catch((err: unknown) => {
          this.log.error({ err }, "worker stop failed");
          this.end(err instanceof Error ? err : new NatsFailure({ message: String(err) }));
        }),
    });
    const host = new TaskHost({
      store,
      clock,
      workerId: id,
      log,
      // Large outputs go to the object store: the record holds a reference, of any size.
      maxPayload: UNBOUNDED_OUTPUT,
      payloads: (record, run) => withPayloads(nats, record, run, clock.now),
      random: Math.random,
      pool,
      // An in-process attempt's lines go where the worker's go, and to NATS as an executor's do.
      taskLog: (bindings) => teeLogger(log, bindings, (line) => publishLog(nats, id, bindings.taskId, line)),
    });
    this.host = host;
    const limiters = new Map<string, LimiterHandle>();
    for (const t of definitions.values()) {
      if (!limitedType(t)) continue;
      const type = `${t.queue}.${t.name}`;
      limiters.set(t.name, {
        limiter: new Limiter(nats.limits, type, t.limits!, t.heartbeatTimeout),
        held: new Set(),
        refused: (ms) => this.loop.holdOff(type, ms),
        released: () => this.loop.release(type),
      });
    }
    this.limiters = limiters;
    const deliveries: DeliveryDeps = { nc: nats.nc, store, host, definitions, workerId: id, log, now: clock.now, limiters };
    this.loop = new PullLoop(nats.nc, consumers, {
      concurrency,
      // The actor's free slots: none unless it is ready.
      capacity: () => {
        const s = this.actor.snapshot;
        return s.value === "ready" ? s.context.concurrency - s.context.running : 0;
      },
      expires: pullExpires,
      log,
      onLease: (lease, consumer) => {
        this.actor.send({ type: "LEASED" });
        const leasedAt = this.metrics === undefined ? 0 : performance.now();
        const run = runDelivery(lease, deliveries)
          .catch((err) => {
            log.error({ err }, "delivery failed unexpectedly");
            return "failed" as const;
          })
          .then((outcome) => {
            this.inFlight.delete(run);
            this.actor.send({ type: "RELEASED", failed: outcome === "failed" });
            this.metrics?.attempted(lease.msg.subject, outcome, performance.now() - leasedAt);
            // A key's slot came back: that key is asked again (it may have been at its perKey limit).
            if (consumer.includes("=")) this.loop.ring(consumer);
            this.loop.wake();
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
    clock: FiberClock = liveFiberClock((err) => log.error({ err }, "a timer callback threw; the other timers go on")),
    /** The client whose `submit` JSON-RPC calls go through; without one the worker serves no RPC. */
    submitter?: RpcSubmitter,
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
    const disconnectTimeout =
      options.disconnectTimeout === false
        ? undefined
        : options.disconnectTimeout === undefined
          ? 30_000
          : durationOption("disconnectTimeout", options.disconnectTimeout, invalid);
    const metrics = options.metrics === undefined ? undefined : metricsOption(options.metrics, invalid);
    const rpc = rpcSettings(options.rpc, invalid);
    const concurrency = options.concurrency ?? (isolation === undefined ? 1 : executors);
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new InvalidDefinition({ message: `worker concurrency must be an integer ≥ 1, got ${concurrency}` });
    }
    if (isolation !== undefined && concurrency > executors) {
      throw invalid(`concurrency (${concurrency}) cannot exceed executors (${executors}): each executor runs one handler at a time`);
    }
    // The module as this process resolves it (`./tasks.js` is `tasks.ts` under tsx): its executors load that file.
    let module: string | undefined;
    try {
      module = options.module === undefined ? undefined : resolveModule(options.module);
    } catch (e) {
      throw invalid(e instanceof Error ? e.message : String(e));
    }
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
    // Each type's consumer at the default priority, and those of the other priorities that
    // have work waiting; a priority first published later is added when its work is.
    const consumers = (
      await Promise.all(
        [...definitions.values()].map(async (t) => {
          const waiting = await waitingSources(nats, t);
          return Promise.all([{}, ...waiting].map((at) => workSource(nats, t, at)));
        }),
      )
    ).flat();
    const id = options.id ?? `w-${nuid.next()}`;
    const workerLog = log.child({ workerId: id });
    let started: Worker | undefined;
    const executorLines = localLines(workerLog);
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
            maxPayload: UNBOUNDED_OUTPUT,
            // An executor's line: where this worker's lines go (at its level), and to NATS.
            onLog: (taskId, line) => {
              executorLines(line);
              publishLog(nats, id, taskId, line);
            },
            // A replaced executor: the registry shows its successor's pid now, not at the next beat.
            onChange: () => started?.executorsChanged(),
          });
    const worker = new Worker(
      id,
      nats,
      store,
      definitions,
      consumers,
      concurrency,
      workerLog,
      clock,
      options.pullExpires ?? 5_000,
      pool,
      disconnectTimeout,
      options.exitOnDisconnect ?? true,
    );
    started = worker;
    try {
      await worker.begin(metrics, rpc === undefined || submitter === undefined ? undefined : { submitter, ...rpc });
    } catch (e) {
      // Nothing of a worker that failed to start keeps running: its executors, service, watches.
      await worker.abandon();
      throw e;
    }
    return worker;
  }

  private async begin(metrics: MetricsOptions | undefined, rpc?: { readonly submitter: RpcSubmitter; readonly timeoutMs: number }): Promise<void> {
    // First: a port that cannot be listened on fails the start before the worker registers.
    if (metrics !== undefined) {
      this.metrics = await WorkerMetrics.start(metrics, {
        jsm: this.nats.jsm,
        tasks: this.definitions.values(),
        running: () => this.actor.snapshot.context.running,
        concurrency: this.concurrency,
        log: this.log,
      });
    }
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
    this.reaper = await startReaper(this.nats, this.store, this.log);
    await this.watchPauses();
    this.renewLimits();
    this.loop.start();
    this.listenForPriorities();
    // Each task as a JSON-RPC method, for the RPC instances that do not run it.
    await advertiseMethods(this.nats.methods, this.definitions.values(), this.id).catch((err: unknown) =>
      this.log.warn({ err }, "methods not advertised in troupe-methods"),
    );
    if (rpc !== undefined) this.rpc = RpcService.start(this.nats, rpc.submitter, this.id, this.definitions, rpc.timeoutMs, this.log);
    // Last: a drain or shutdown asked for through it finds everything it stops started.
    this.service.start();
    void (async () => {
      for await (const status of this.nats.nc.status()) {
        if (status.type === "disconnect") this.actor.send({ type: "DISCONNECTED" });
        if (status.type === "reconnect") this.actor.send({ type: "RECONNECTED" });
      }
    })().catch(() => undefined);
    await this.registered;
    this.log.info({ tasks: [...this.definitions.keys()], concurrency: this.concurrency, isolation: this.pool?.options.isolation, metricsPort: this.metrics?.port }, "worker started");
  }

  /** The Prometheus endpoint (`metrics`), when asked for. */
  private metrics: WorkerMetrics | undefined;

  /** The port its metrics are served on (`metrics: { port }`; the one picked for port 0). */
  get metricsPort(): number | undefined {
    return this.metrics?.port;
  }

  /** The limiters of this worker's limited types, by task name. */
  private readonly limiters: ReadonlyMap<string, LimiterHandle>;
  private renewTimer: NodeJS.Timeout | undefined;

  /** The slots this worker's attempts hold keep their leases while they run. */
  private renewLimits(): void {
    if (this.limiters.size === 0) return;
    const every = Math.min(...[...this.definitions.values()].filter(limitedType).map((t) => t.heartbeatTimeout)) / 3;
    this.renewTimer = setInterval(() => {
      for (const { limiter, held } of this.limiters.values()) {
        void limiter.renew([...held]).catch((err: unknown) => this.log.warn({ err, limiter: limiter.key }, "limit slots not renewed"));
      }
    }, every);
    this.renewTimer.unref();
  }

  /** Pauses in effect, by key (`<queue>` or `<queue>.<type>`), from `troupe-pauses`. */
  private readonly pauses = new Map<string, PauseEntry>();
  private pauseWatch: BucketWatch | undefined;
  private pauseWatchStopped: Promise<void> | undefined;

  /**
   * Follow `troupe-pauses`: the pull loop starts none of the paused work (within the watch's
   * delivery, milliseconds), and is told again on every change.
   */
  private async watchPauses(): Promise<void> {
    // One consumer for the worker's life: the pauses there now, then every change.
    let loaded = false;
    this.pauseWatch = await BucketWatch.open(this.nats.js, PAUSES_BUCKET, (key, entry) => {
      const decoded = entry === undefined ? undefined : decodeWith(PauseEntry, entry.value, "pause entry");
      if (decoded?.ok) this.pauses.set(key, decoded.value);
      else this.pauses.delete(key);
      if (loaded) this.applyPauses();
    });
    await this.pauseWatch.loaded(PAUSES_READ_MS);
    loaded = true;
    this.applyPauses();
  }

  private applyPauses(): void {
    this.loop.setPaused(
      this.pauses.size === 0 ? undefined : (group) => this.pauses.has(group) || this.pauses.has(group.slice(0, group.indexOf("."))),
    );
    const paused = this.pausedHere();
    if (paused.length > 0) this.log.info({ paused }, "paused work is not started");
    else this.log.debug("no work paused");
    if (this.service !== undefined) void this.writeRegistry();
  }

  /** Its pool's executors changed (one replaced, or its successor ready): the registry entry is written again, while the worker is registered. */
  private executorsChanged(): void {
    if (this.service !== undefined && stateName(this.actor.snapshot.value) !== "stopped") void this.writeRegistry();
  }

  /** The pauses that apply to this worker's tasks. */
  private pausedHere(): string[] {
    const here = new Set<string>();
    for (const t of this.definitions.values()) {
      if (this.pauses.has(t.queue)) here.add(t.queue);
      if (this.pauses.has(`${t.queue}.${t.name}`)) here.add(`${t.queue}.${t.name}`);
    }
    return [...here];
  }

  /** Priority consumers already read, by name, and those being ensured. */
  private readonly priorityConsumers = new Map<string, Promise<void>>();
  private readonly prioritySubs: Subscription[] = [];

  /**
   * Work published at a priority other than the default rings here (its bell, `troupe.bells.<queue>.*.<type>.*`,
   * core NATS: nothing arrives while no one uses priorities): a consumer read already is
   * asked at once; a priority seen for the first time gets its consumer, read from then on.
   */
  private listenForPriorities(): void {
    for (const t of this.definitions.values()) {
      const sub = this.nats.nc.subscribe(bellSubject(prioritySubjects(t.queue, t.name)), {
        callback: (_error, msg) => {
          const work = parseWorkSubject(msg.subject);
          if (work === undefined || (work.priority === DEFAULT_PRIORITY && work.key === undefined)) return;
          const { priority, key } = work;
          const name = consumerName(t.queue, t.name, priority, key);
          if (this.loop.has(name)) return this.loop.ring(name);
          if (this.priorityConsumers.has(name)) return;
          const added = workSource(this.nats, t, key === undefined ? { priority } : { key }).then(
            (source) => this.loop.addSource(source),
            (err: unknown) => {
              this.priorityConsumers.delete(name);
              this.log.warn({ err, task: t.name, priority }, "could not read a priority's consumer; tried again on its next message");
            },
          );
          this.priorityConsumers.set(name, added);
        },
      });
      this.prioritySubs.push(sub);
    }
  }

  /** `Worker { id: 'w-…', state: 'ready', tasks: [ 'add' ], running: 0 }` (and its `isolation`): what `console.log(worker)` prints. */
  [inspect.custom](depth: number, options: InspectOptionsStylized, inspectFn: typeof inspect): string {
    const s = this.actor.snapshot;
    const fields = {
      id: this.id,
      state: stateName(s.value),
      tasks: [...this.definitions.keys()],
      running: s.context.running,
      ...(this.pool === undefined ? {} : { isolation: this.pool.options.isolation }),
    };
    return inspectHandle("Worker", fields, depth, options, inspectFn);
  }

  get stats(): WorkerStats {
    const s = this.actor.snapshot;
    const stats = {
      id: this.id,
      state: stateName(s.value),
      running: s.context.running,
      processed: s.context.processed,
      failed: s.context.failed,
      tasks: this.host.runningIds(),
      paused: this.pausedHere(),
    };
    return this.pool === undefined ? stats : { ...stats, isolation: this.pool.options.isolation, executors: this.pool.info() };
  }

  private writeRegistry(): Promise<void> {
    const s = this.actor.snapshot;
    const entry: WorkerInfo = {
      id: this.id,
      state: stateName(s.value),
      hostname: hostname(),
      pid: process.pid,
      tasks: [...this.definitions.values()].map((t) => ({ name: t.name, queue: t.queue })),
      concurrency: this.concurrency,
      running: s.context.running,
      processed: s.context.processed,
      failed: s.context.failed,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      paused: this.pausedHere(),
      ...(this.pool === undefined ? {} : { isolation: this.pool.options.isolation, executors: this.pool.info() }),
    };
    const payload = encodeJson(entry);
    if (this.nats.nc.isClosed()) return Promise.resolve();
    // The registry write is the worker's event: its bucket keeps its last beats and
    // republishes each (`troupe.events.worker.<id>`), with the actor's state path.
    const headers = { [Headers.state]: statePath(s.value) };
    return this.nats.publisher.publish(kvSubject(WORKERS_BUCKET, this.id), payload, { headers }).then(
      () => undefined,
      // Its client closing while the last beat was on its way: nothing to tell.
      (err: unknown) => (this.nats.publisher.closed ? undefined : this.log.warn({ err }, "worker registry write failed")),
    );
  }

  /**
   * Run until SIGTERM or SIGINT, then stop gracefully (`stop(options)`); a second signal
   * stops at once, handing running tasks back. Resolves once the worker has stopped; rejects
   * with `NatsFailure` when it gave up on NATS (and `exitOnDisconnect` is off).
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
        this.actor.send({ type: "HURRY" });
      }
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      await this.ended;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  }

  /**
   * Stop pulling, let running tasks finish (up to `timeout`), then interrupt the rest (an
   * executor's handler within its grace period, or its executor terminated) and hand them
   * back to other workers. Asked again with `timeout: 0` while stopping, it stops at once.
   */
  stop(options: StopOptions = {}): Promise<void> {
    const timeoutMs =
      options.timeout === undefined ? 30_000 : durationOption("timeout", options.timeout, (message) => new InvalidOption({ message: `worker.stop: ${message}` }));
    const state = stateName(this.actor.snapshot.value);
    if (state === "draining" || state === "lost") {
      if (timeoutMs === 0) this.actor.send({ type: "HURRY" });
    } else {
      this.actor.send({ type: "STOP", timeoutMs });
    }
    // A worker that gave up on NATS has stopped too: `stop` resolves; `run` says why.
    return this.ended.catch(() => undefined);
  }

  /** The first time, every running attempt is interrupted; again (a hurry), busy executors are terminated now. */
  private interruptAll(): void {
    if (this.interrupted) {
      void this.pool?.stop();
      return;
    }
    this.interrupted = true;
    if (this.inFlight.size > 0) this.log.warn({ running: this.inFlight.size }, "running tasks interrupted and left to redelivery");
    this.host.interruptAll();
  }

  /** A start that failed half-way: release what it had started. */
  async abandon(): Promise<void> {
    await this.pauseWatch?.stop();
    for (const sub of this.prioritySubs.splice(0)) sub.unsubscribe();
    clearInterval(this.renewTimer);
    await this.loop.stop().catch(() => undefined);
    this.service?.stop();
    await this.rpc?.stop();
    await this.reaper?.stop().catch(() => undefined);
    await this.pool?.stop();
    await this.metrics?.stop();
    this.actor.stop();
  }

  /** The actor reached `stopped`: release the executors, the service, the reaper. */
  private async finish(): Promise<void> {
    clearInterval(this.renewTimer);
    const lost = this.actor.snapshot.context.lost;
    // Each part stopped on its own: one that fails (logged) keeps none of the others running, nor `stop()` waiting.
    const step = (what: string, part: () => unknown) =>
      Promise.resolve()
        .then(part)
        .catch((err: unknown) => this.log.error({ err }, `worker stop: ${what} failed`));
    const released = (async () => {
      await step("the pull loop", () => this.loopStopped);
      await step("the pauses' watch", () => this.pauseWatchStopped);
      await step("the running tasks", () => Promise.all(this.inFlight));
      await step("the executors", () => this.pool?.stop());
      await step("the micro service", () => this.service?.stop());
      await step("the JSON-RPC service", () => this.rpc?.stop());
      await step("the reaper", () => this.reaper?.stop());
      await step("the metrics endpoint", () => this.metrics?.stop());
    })();
    // Cut off from NATS, the consumers cannot be closed cleanly: the worker does not wait long for them.
    if (lost) await Promise.race([released, new Promise((resolve) => setTimeout(resolve, LOST_CLEANUP_MS).unref())]);
    else await released;
    this.actor.stop();
    this.log.info(this.stats, "worker stopped");
    if (!lost) return this.end();
    const timeout = this.actor.snapshot.context.disconnectTimeoutMs;
    const message = `worker ${this.id} could not reach NATS for ${timeout} ms: its tasks were interrupted and are left to other workers`;
    this.log.error({ disconnectTimeoutMs: timeout }, message);
    if (this.exitOnDisconnect) process.exit(1);
    this.end(new NatsFailure({ message }));
  }
}

/** The body of a `drain` request: how long running tasks may take, in ms (default 30 s). */
const StopRequest = Schema.Struct({ timeout: Schema.optional(Schema.Number) });

/** A type with limits its limiter enforces (`concurrency`, `rate`): its consumers count no deliveries. */
const limitedType = (t: TaskDefinition) => t.limits?.concurrency !== undefined || t.limits?.rate !== undefined;

/** The pull source of one priority, or one key, of a task type, its consumer ensured. */
const workSource = async (nats: NatsHandle, t: TaskDefinition, at: { readonly priority?: number; readonly key?: string }): Promise<PullSource> => {
  const limited = limitedType(t);
  const settings = {
    ackWaitMs: t.heartbeatTimeout,
    // A limited type's deliveries handed back while its limit is reached are not lost
    // attempts: its consumer counts none, and the delivery path counts lost attempts.
    maxDeliver: limited ? -1 : t.maxDeliveries,
    ...(at.key !== undefined && t.limits?.perKey !== undefined ? { maxAckPending: t.limits.perKey } : {}),
  };
  const priority = at.priority ?? DEFAULT_PRIORITY;
  const maxBatch = limited ? Math.min(16, t.limits?.concurrency ?? 16, t.limits?.rate?.limit ?? 16) : undefined;
  return {
    consumer: await ensureTaskConsumer(nats.jsm, t.queue, t.name, settings, priority, at.key),
    subject: at.key === undefined ? taskSubject(t.queue, t.name, priority) : keySubject(t.queue, t.name, at.key),
    // Each key is its own group: keys are asked round robin.
    group: at.key === undefined ? `${t.queue}.${t.name}` : `${t.queue}.${t.name}=${at.key}`,
    priority,
    maxDeliver: settings.maxDeliver,
    ...(maxBatch === undefined ? {} : { maxBatch }),
  };
};

/** The priorities other than the default, and the keys, with messages waiting for this type (the stream's subjects, one per task). */
const waitingSources = async (nats: NatsHandle, t: TaskDefinition): Promise<Array<{ priority?: number; key?: string }>> => {
  const info = await nats.jsm.streams.info(TASKS_STREAM, { subjects_filter: prioritySubjects(t.queue, t.name) });
  const lanes = new Map<string, { priority?: number; key?: string }>();
  for (const subject of Object.keys(info.state.subjects ?? {})) {
    const p = parseWorkSubject(subject);
    if (p === undefined || (p.key === undefined && p.priority === DEFAULT_PRIORITY)) continue;
    lanes.set(p.key !== undefined ? `=${p.key}` : `@${p.priority}`, p.key !== undefined ? { key: p.key } : { priority: p.priority });
  }
  return [...lanes.values()];
};

/**
 * A logger for one attempt: each line at `log`'s level is written to `log`'s own destination,
 * and each at `info` or above (or `log`'s level, when lower) is given to `publish`, with the
 * attempt's ids bound.
 */
const teeLogger = (log: Logger, bindings: Record<string, unknown>, publish: (line: string) => void): Logger => {
  const local = localLines(log);
  return pino(
    { level: handlerLogLevel(log), base: { ...(log as unknown as { bindings(): Record<string, unknown> }).bindings(), ...bindings } },
    {
      write: (line: string) => {
        local(line);
        publish(line);
      },
    },
  );
};

/** Writes a pino line to `log`'s destination when it is at `log`'s level. */
const localLines = (log: Logger): ((line: string) => void) => {
  const destination = destinationOf(log);
  return (line) => {
    if (lineLevel(line) >= log.levelVal) destination?.write(line.endsWith("\n") ? line : `${line}\n`);
  };
};

/** A handler's log line to `troupe.logs.<workerId>.<taskId>` (TROUPE_LOGS). */
const publishLog = (nats: NatsHandle, workerId: string, taskId: string, line: string): void => {
  if (nats.nc.isClosed()) return;
  try {
    nats.nc.publish(logSubject(workerId, taskId), line.endsWith("\n") ? line.slice(0, -1) : line);
  } catch {
    // A connection closing: the line is dropped (its worker's own log keeps it at its level).
  }
};
