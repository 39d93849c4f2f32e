/**
 * A worker: pulls the task types it registered, runs each delivery as a task actor,
 * keeps its registry entry in `troupe-workers` fresh, and stops gracefully.
 */
import { hostname } from "node:os";
import { nuid } from "@nats-io/transport-node";
import { createActor, type Actor } from "xstate";
import { workerMachine } from "../../machines/worker.js";
import type { WorkerInfo } from "../../machines/records.js";
import type { Logger } from "pino";
import { InvalidDefinition } from "../errors.js";
import { Schema } from "effect";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { ensureTaskConsumer, WORKERS_TTL, type NatsHandle } from "../nats/connection.js";
import { controlSubject, eventSubject, taskSubject } from "../nats/topology.js";
import { startReaper } from "./reaper.js";
import { MicroService } from "./service.js";
import { VERSION } from "../version.js";
import { TaskHost } from "../actor/task-host.js";
import { liveFiberClock, type FiberClock } from "../actor/fiber-clock.js";
import type { TaskStore } from "../store/task-store.js";
import type { TaskDefinition } from "../task.js";
import { runDelivery, type DeliveryDeps } from "./delivery.js";
import { PullLoop, type PullSource } from "./pull.js";

/** The body of a request to a worker's `cancel` endpoint. */
export const CancelRequest = Schema.Struct({ id: Schema.String, reason: Schema.optional(Schema.String) });

/** How long the worker actor may go without hearing of tasks started and finished. */
const REPORT_MS = 50;

export interface WorkerOptions {
  /** The tasks this worker runs; it never receives other types. */
  readonly tasks: ReadonlyArray<TaskDefinition>;
  /** Tasks run at once (default 1). */
  readonly concurrency?: number;
  /** Worker id (default: a fresh unique id). */
  readonly id?: string;
  /** How long one pull request waits on the server (ms, default 5000). */
  readonly pullExpires?: number;
}

export interface StopOptions {
  /** How long running tasks may take to finish before the worker gives up on them (ms). */
  readonly timeout?: number;
}

export interface WorkerStats {
  readonly id: string;
  readonly state: string;
  readonly running: number;
  readonly processed: number;
  readonly failed: number;
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
    const host = new TaskHost({ store, clock, workerId: id, log, maxPayload: store.maxPayload, random: Math.random });
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

  /** Ensure the consumers, register, and start pulling. */
  static async start(
    nats: NatsHandle,
    store: TaskStore,
    options: WorkerOptions,
    log: Logger,
    clock: FiberClock = liveFiberClock(),
  ): Promise<Worker> {
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new InvalidDefinition({ message: `worker concurrency must be an integer ≥ 1, got ${concurrency}` });
    }
    if (options.tasks.length === 0) throw new InvalidDefinition({ message: "a worker needs at least one task" });
    const definitions = new Map<string, TaskDefinition>();
    for (const task of options.tasks) {
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
    const worker = new Worker(
      id,
      nats,
      store,
      definitions,
      consumers,
      concurrency,
      log.child({ workerId: id }),
      clock,
      options.pullExpires ?? 5_000,
    );
    await worker.run();
    return worker;
  }

  private async run(): Promise<void> {
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
        metadata: { tasks: [...this.definitions.keys()].join(","), concurrency: String(this.concurrency), pid: String(process.pid) },
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
    return { id: this.id, state: String(s.value), running: s.context.running, processed: s.context.processed, failed: s.context.failed };
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
    };
    const payload = encodeJson(entry);
    if (!this.nats.nc.isClosed()) this.nats.nc.publish(eventSubject("worker", this.id, "heartbeat"), payload);
    return this.nats.workers.put(this.id, payload).then(
      () => undefined,
      (err: unknown) => this.log.warn({ err }, "worker registry write failed"),
    );
  }

  /**
   * Stop pulling, let running tasks finish (up to `timeout`), then leave the rest to be
   * redelivered to other workers.
   */
  stop(options: StopOptions = {}): Promise<void> {
    this.stopping ??= (async () => {
      this.actor.send({ type: "STOP" });
      await this.loop.stop();
      const timeout = options.timeout ?? 30_000;
      let timer: NodeJS.Timeout | undefined;
      const drained = Promise.all(this.inFlight).then(() => true);
      const expired = new Promise<false>((r) => (timer = setTimeout(() => r(false), timeout)));
      const finished = await Promise.race([drained, expired]);
      clearTimeout(timer);
      if (!finished) {
        this.log.warn({ running: this.inFlight.size }, "stop timeout: running tasks interrupted and left to redelivery");
        this.host.interruptAll();
        await Promise.all(this.inFlight);
      }
      this.service?.stop();
      await this.reaper?.stop();
      this.report();
      this.actor.send({ type: "DRAINED" });
      this.actor.stop();
      this.log.info(this.stats, "worker stopped");
    })();
    return this.stopping;
  }
}
