/**
 * The client: `Troupe.connect` / `Troupe.dev`, `submit`, `get`, `run`, `worker`, `close`.
 * Promises at the boundary, typed errors inside them.
 */
import { createHash } from "node:crypto";
import { Cause, Effect, Exit } from "effect";
import { nuid, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { TerminalStatuses, type TaskRecord, type TaskStatus } from "../../machines/task.js";
import { NatsFailure, Serialization, TaskNotFound } from "../errors.js";
import { readRecord } from "../nats/records.js";
import { decodeJson, encodeJson } from "../nats/codec.js";
import { connectNats, openNats, type ConnectOptions, type NatsHandle } from "../nats/connection.js";
import { controlSubject, eventSubject, Headers, kvSubject, notifyPrefix, TASKS_BUCKET, taskSubject } from "../nats/topology.js";
import { PublishRejected, WRONG_LAST_SEQUENCE, type PublishExpectations } from "../nats/publisher.js";
import { NatsServer, type NatsServerOptions } from "../dev/nats-server.js";
import { rootLogger } from "../log.js";
import { encodeInput, toMillis, type DurationInput, type InputOf, type OutputOf, type TaskDefinition } from "../task.js";
import { Worker, type WorkerOptions } from "../worker/worker.js";
import { TaskRun } from "./run.js";
import { WorkflowRun } from "./workflow-run.js";
import type { WorkflowRecord } from "../../machines/workflow.js";
import { WorkflowNotFound } from "../errors.js";
import { applyEvent, Coordinator, isWorkflowTerminal, readWorkflow, startRun, type CoordinatorOptions } from "../coordinator/coordinator.js";
import type { WorkflowDefinition, WorkflowInputOf, WorkflowOutputsOf } from "../workflow.js";

export interface TroupeOptions extends ConnectOptions {
  /** A pino logger; one at `TROUPE_LOG_LEVEL` (default `info`) when unset. */
  readonly logger?: Logger;
}

export interface DevOptions extends TroupeOptions, Pick<NatsServerOptions, "binary"> {
  /** Where the embedded server keeps its store (default `.troupe/nats`). */
  readonly storeDir?: string;
}

export interface SubmitOptions {
  /** The task id (default: a fresh unique id). */
  readonly id?: string;
  /**
   * Submitting again with the same key (same task and queue) returns the same run and
   * enqueues nothing new, for ever: the key picks the task id, whose KV record is created once.
   */
  readonly idempotencyKey?: string;
  /** Start no sooner than this from now: milliseconds or a duration such as `"10 minutes"`. */
  readonly delay?: DurationInput;
}

export interface CancelResult {
  readonly id: string;
  readonly status: TaskStatus;
  /** False when the task had already finished (it is left as it is). */
  readonly cancelled: boolean;
  readonly message: string;
}

/** The task id an idempotency key stands for. */
export const idempotentId = (task: TaskDefinition, key: string) =>
  `k-${createHash("sha256").update(`${task.queue}\0${task.name}\0${key}`).digest("base64url").slice(0, 32)}`;

interface Waiter {
  readonly promise: Promise<TaskRecord>;
  readonly resolve: (record: TaskRecord) => void;
}

export class Troupe {
  private readonly clientId = nuid.next();
  private readonly waiters = new Map<string, Waiter>();
  private readonly workers = new Set<Worker>();
  private readonly coordinators = new Set<Coordinator>();
  private notifySub: Subscription | undefined;
  private closed = false;

  private constructor(
    readonly nats: NatsHandle,
    readonly log: Logger,
    private readonly server: NatsServer | undefined,
  ) {
    void this.watchReconnects();
  }

  /** Connect to a NATS server (or cluster) and make sure the Troupe layout exists. */
  static async connect(options: TroupeOptions = {}): Promise<Troupe> {
    const nc = await connectNats(options);
    try {
      return new Troupe(await openNats(nc, options), options.logger ?? rootLogger(), undefined);
    } catch (e) {
      await nc.close();
      throw e;
    }
  }

  /** Start an embedded `nats-server -js` (store under `.troupe/`) and connect to it; `close()` stops it. */
  static async dev(options: DevOptions = {}): Promise<Troupe> {
    const server = await NatsServer.start({
      storeDir: options.storeDir ?? ".troupe/nats",
      syncAlways: true,
      ...(options.binary === undefined ? {} : { binary: options.binary }),
    });
    try {
      const nc = await connectNats({ ...options, servers: server.url });
      return new Troupe(await openNats(nc, options), options.logger ?? rootLogger(), server);
    } catch (e) {
      await server.stop();
      throw e;
    }
  }

  /** The NATS URL this client uses (the embedded server's under `dev`). */
  get url(): string {
    return this.server?.url ?? this.nats.nc.getServer();
  }

  get nc(): NatsConnection {
    return this.nats.nc;
  }

  /**
   * Validate the input against the task's schema, record the task QUEUED in KV, and
   * enqueue it. Rejects with `InvalidInput` (nothing published) on bad input.
   */
  async submit<T extends TaskDefinition>(task: T, input: InputOf<T>, options: SubmitOptions = {}): Promise<TaskRun<OutputOf<T>>> {
    const encoded = Effect.runSyncExit(encodeInput(task, input));
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    const key = options.idempotencyKey;
    const id = key === undefined ? (options.id ?? nuid.next()) : idempotentId(task, key);
    this.listen();
    let waiter: Waiter | undefined;
    const created = await this.enqueue(task, encoded.value, {
      id,
      idempotencyKey: key,
      ...(options.delay === undefined ? {} : { runAt: Date.now() + toMillis(options.delay) }),
      notify: notifyPrefix(this.clientId),
      // Registered before the work is published, so the terminal notification cannot beat it.
      onRecorded: () => (waiter = this.waiterFor(id)),
    });
    if (!created || waiter === undefined) return this.run(task, id);
    return new TaskRun<OutputOf<T>>(this, id, task, waiter.promise);
  }

  /**
   * Record a task QUEUED and publish its work message; the input is already encoded.
   * Resolves false when a task with this id exists (then, if it is still QUEUED, its work
   * message is published again under the same message id, in case the first enqueue died
   * in between). `notify` is where the worker sends the terminal record.
   */
  async enqueue(
    task: TaskDefinition,
    input: unknown,
    options: { id: string; notify: string; idempotencyKey?: string | undefined; runAt?: number; onRecorded?: () => void },
  ): Promise<boolean> {
    const { id, notify, idempotencyKey: key } = options;
    const record: TaskRecord = {
      id,
      task: task.name,
      queue: task.queue,
      status: "QUEUED",
      attempt: 0,
      input,
      createdAt: new Date().toISOString(),
      ...(key === undefined ? {} : { idempotencyKey: key }),
      ...(options.runAt === undefined ? {} : { runAt: new Date(options.runAt).toISOString() }),
    };
    const payload = encodeJson(record);
    const max = this.nats.nc.info?.max_payload ?? 1024 * 1024;
    if (payload.length > max - 4_096) {
      throw new Serialization({ message: `input of task "${task.name}" is ${payload.length} bytes, over the server's payload limit (${max})` });
    }
    const subject = taskSubject(task.queue, task.name);
    let revision: number;
    try {
      revision = await this.createRecord(id, payload, key !== undefined);
    } catch (e) {
      if (!(e instanceof PublishRejected && e.errCode === WRONG_LAST_SEQUENCE)) {
        throw new NatsFailure({ message: `cannot record task ${id}: ${(e as Error).message}`, cause: e });
      }
      const existing = await readRecord(this.nats.tasks, id);
      if (existing?.record.status === "QUEUED") {
        await this.publishWithRetry(subject, encodeJson(existing.record), {
          msgId: id,
          headers: { [Headers.revision]: String(existing.revision), [Headers.notify]: notify },
        });
      }
      return false;
    }
    options.onRecorded?.();
    try {
      // The message id makes a retried publish a no-op inside the duplicate window.
      await this.publishWithRetry(subject, payload, { msgId: id, headers: { [Headers.revision]: String(revision), [Headers.notify]: notify } });
    } catch (e) {
      const failed: TaskRecord = {
        ...record,
        status: "FAILED",
        error: { _tag: "NatsFailure", message: `could not enqueue: ${(e as Error).message}`, retryable: false },
        finishedAt: new Date().toISOString(),
      };
      await this.nats.tasks.update(id, encodeJson(failed), revision).catch(() => undefined);
      this.waiters.delete(id);
      throw new NatsFailure({ message: `cannot enqueue task ${id}: ${(e as Error).message}`, cause: e });
    }
    this.nats.nc.publish(eventSubject("task", id, "queued"), payload);
    return true;
  }

  /**
   * Create the QUEUED record, retried through a reconnect. A retry that finds the key taken
   * found its own earlier write (ids are unique) unless the id came from an idempotency key.
   */
  private async createRecord(id: string, payload: Uint8Array, keyed: boolean): Promise<number> {
    for (let i = 0; ; i++) {
      try {
        return (await this.nats.publisher.publish(kvSubject(TASKS_BUCKET, id), payload, { lastSubjectSequence: 0 })).seq;
      } catch (e) {
        const taken = e instanceof PublishRejected && e.errCode === WRONG_LAST_SEQUENCE;
        if (taken && (keyed || i === 0)) throw e;
        if (taken) {
          const mine = await readRecord(this.nats.tasks, id);
          if (mine !== undefined) return mine.revision;
        }
        if (i >= 4 || this.nats.nc.isClosed()) throw e;
        await new Promise((r) => setTimeout(r, 200 * 2 ** i));
      }
    }
  }

  /**
   * Cancel a task: a queued (or retrying) one never starts; a running one has its handler
   * interrupted and ends CANCELLED; a finished one is left as it is, and the result says so.
   */
  async cancel(id: string, reason = "cancelled by request"): Promise<CancelResult> {
    for (let i = 0; i < 10; i++) {
      const current = await readRecord(this.nats.tasks, id);
      if (current === undefined) throw new TaskNotFound({ id, message: `no task ${id}` });
      const { record, revision } = current;
      if (TerminalStatuses.has(record.status)) {
        return { id, status: record.status, cancelled: false, message: `task ${id} already ended ${record.status}; left as it is` };
      }
      if (record.status === "RUNNING" && record.workerId !== undefined) {
        // The worker holding the lease interrupts the handler and writes CANCELLED itself.
        const reply = await this.nats.nc
          .request(controlSubject(record.workerId, "cancel"), encodeJson({ id, reason }), { timeout: 2_000 })
          .then((m) => decodeJson(m.data))
          .catch(() => undefined);
        const answer = reply?.ok ? (reply.value as { running?: boolean; record?: TaskRecord }) : undefined;
        if (answer?.running && answer.record !== undefined) {
          return { id, status: answer.record.status, cancelled: answer.record.status === "CANCELLED", message: `task ${id} ${answer.record.status}` };
        }
        // No answer: that worker is gone or hung. Writing over its revision fences it.
      }
      const cancelled: TaskRecord = {
        ...record,
        status: "CANCELLED",
        error: { _tag: "Cancelled", message: reason, retryable: false },
        finishedAt: new Date().toISOString(),
      };
      const payload = encodeJson(cancelled);
      if ((await this.nats.publisher.compareAndSet(kvSubject(TASKS_BUCKET, id), payload, revision)) !== undefined) {
        this.nats.nc.publish(eventSubject("task", id, "cancelled"), payload);
        return { id, status: "CANCELLED", cancelled: true, message: `task ${id} cancelled` };
      }
      // It moved meanwhile (started, finished): look again.
    }
    throw new NatsFailure({ message: `task ${id} kept changing; cancel gave up` });
  }

  private async publishWithRetry(subject: string, payload: Uint8Array, expect: PublishExpectations) {
    for (let i = 0; ; i++) {
      try {
        return await this.nats.publisher.publish(subject, payload, expect);
      } catch (e) {
        if (i >= 4 || this.nats.nc.isClosed()) throw e;
        await new Promise((r) => setTimeout(r, 200 * 2 ** i));
      }
    }
  }

  /** The task's state record, or `undefined` when there is none. */
  async get(id: string): Promise<TaskRecord | undefined> {
    return (await readRecord(this.nats.tasks, id))?.record;
  }

  /** A handle on an existing task, to await its result from any client. */
  run<T extends TaskDefinition>(task: T, id: string): TaskRun<OutputOf<T>> {
    return new TaskRun<OutputOf<T>>(this, id, task, this.settledRecord(id));
  }

  /** Start a worker for these tasks on this connection. */
  async worker(options: WorkerOptions): Promise<Worker> {
    const worker = await Worker.start(this.nats, options, this.log);
    this.workers.add(worker);
    return worker;
  }

  /**
   * Start a workflow run: validate the input, record the run RUNNING with its first steps,
   * and enqueue them. Coordinators (`troupe.coordinator()`, `troupe coordinator`) advance it.
   */
  async start<W extends WorkflowDefinition>(workflow: W, input: WorkflowInputOf<W>): Promise<WorkflowRun<WorkflowOutputsOf<W>>> {
    const encoded = Effect.runSyncExit(encodeInput(workflow, input));
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    const id = nuid.next();
    const settled = this.settledWorkflow(id, true);
    try {
      await startRun(this, { name: workflow.name, steps: workflow.steps, policy: workflow.policy }, encoded.value, this.log, id);
    } catch (e) {
      throw new NatsFailure({ message: `cannot start workflow ${workflow.name}: ${(e as Error).message}`, cause: e });
    }
    return new WorkflowRun(this, id, settled);
  }

  /** A handle on an existing workflow run. */
  workflowRun<W extends WorkflowDefinition>(_workflow: W | undefined, id: string): WorkflowRun<WorkflowOutputsOf<W>> {
    return new WorkflowRun(this, id, this.settledWorkflow(id, false));
  }

  /** The run's record, or `undefined`. */
  async getWorkflow(id: string): Promise<WorkflowRecord | undefined> {
    return (await readWorkflow(this, id))?.record;
  }

  /** Cancel a run: running steps are cancelled, pending ones never start; a finished run is left as it is. */
  async cancelWorkflow(id: string, reason = "cancelled by request"): Promise<WorkflowRecord | undefined> {
    const record = await applyEvent(this, id, { type: "CANCEL", reason, at: Date.now() }, this.log);
    if (record === undefined) throw new WorkflowNotFound({ id, message: `no workflow run ${id}` });
    return record;
  }

  /** Start a coordinator on this connection: it advances workflow runs. */
  async coordinator(options: CoordinatorOptions = {}): Promise<Coordinator> {
    const coordinator = await Coordinator.start(this, options);
    this.coordinators.add(coordinator);
    return coordinator;
  }

  /** Resolves with the run's terminal record: hear its events, then read KV once. */
  private async settledWorkflow(id: string, fresh: boolean): Promise<WorkflowRecord> {
    let resolve!: (r: WorkflowRecord) => void;
    const done = new Promise<WorkflowRecord>((r) => (resolve = r));
    const sub = this.nats.nc.subscribe(eventSubject("workflow", id, "*"), {
      callback: (_e, msg) => {
        const decoded = decodeJson(msg.data);
        if (decoded.ok && isWorkflowTerminal((decoded.value as WorkflowRecord).status)) resolve(decoded.value as WorkflowRecord);
      },
    });
    const recheck = async () => {
      const now = await this.getWorkflow(id).catch(() => undefined);
      if (now !== undefined && isWorkflowTerminal(now.status)) resolve(now);
      return now;
    };
    try {
      await this.nats.nc.flush();
      if (!fresh && (await recheck()) === undefined) throw new WorkflowNotFound({ id, message: `no workflow run ${id}` });
      // Events are plain publishes: look again now and then, in case one was missed.
      const timer = setInterval(() => void recheck(), 5_000);
      timer.unref();
      try {
        return await done;
      } finally {
        clearInterval(timer);
      }
    } finally {
      sub.unsubscribe();
    }
  }

  /** Stop this client's workers and coordinators, drain the connection, and stop the embedded server if any. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.coordinators].map((c) => c.stop()));
    await Promise.all([...this.workers].map((w) => w.stop()));
    this.nats.publisher.close();
    await this.nats.nc.drain().catch(() => undefined);
    await this.server?.stop();
  }

  /** Resolves with the task's terminal record, however it ends. */
  private async settledRecord(id: string): Promise<TaskRecord> {
    this.listen();
    const pending = this.waiters.get(id);
    if (pending !== undefined) return pending.promise;
    // Not ours: hear its events, then read KV in case it ended before we listened.
    const waiter = this.waiterFor(id);
    const sub = this.nats.nc.subscribe(eventSubject("task", id, "*"), {
      callback: (_e, msg) => {
        const decoded = decodeJson(msg.data);
        if (decoded.ok && TerminalStatuses.has((decoded.value as TaskRecord).status)) this.settle(decoded.value as TaskRecord);
      },
    });
    try {
      await this.nats.nc.flush();
      const now = await this.get(id);
      if (now === undefined) {
        this.waiters.delete(id);
        throw new TaskNotFound({ id, message: `no task ${id}` });
      }
      if (TerminalStatuses.has(now.status)) this.settle(now);
      return await waiter.promise;
    } finally {
      sub.unsubscribe();
    }
  }

  private waiterFor(id: string): Waiter {
    let resolve!: (record: TaskRecord) => void;
    const promise = new Promise<TaskRecord>((r) => (resolve = r));
    const waiter = { promise, resolve };
    this.waiters.set(id, waiter);
    return waiter;
  }

  private settle(record: TaskRecord): void {
    const waiter = this.waiters.get(record.id);
    if (waiter === undefined) return;
    this.waiters.delete(record.id);
    waiter.resolve(record);
  }

  /**
   * One subscription for the terminal records of every task this client submitted, and one
   * for cancellations (written by whichever client cancelled, which cannot notify us).
   */
  private listen(): void {
    if (this.notifySub !== undefined) return;
    const callback = (_e: unknown, msg: { data: Uint8Array }) => {
      const decoded = decodeJson(msg.data);
      if (decoded.ok) this.settle(decoded.value as TaskRecord);
    };
    this.notifySub = this.nats.nc.subscribe(`${notifyPrefix(this.clientId)}.*`, { callback });
    this.nats.nc.subscribe(eventSubject("task", "*", "cancelled"), { callback });
  }

  /** Notifications are plain publishes: after a reconnect, re-read what we wait for. */
  private async watchReconnects(): Promise<void> {
    for await (const status of this.nats.nc.status()) {
      if (status.type !== "reconnect") continue;
      for (const id of [...this.waiters.keys()]) {
        const record = await this.get(id).catch(() => undefined);
        if (record !== undefined && TerminalStatuses.has(record.status)) this.settle(record);
      }
    }
  }
}
