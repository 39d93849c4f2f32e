/**
 * The client: `Troupe.connect` / `Troupe.dev`, `submit`, `get`, `run`, `cancel`, `start`,
 * and the thin entry points `worker()` and `coordinator()`. Promises at the boundary, typed
 * errors inside them. Task and workflow records are written by the stores only; waiting
 * is `Results`'.
 */
import { createHash } from "node:crypto";
import { inspect, type InspectOptionsStylized } from "node:util";
import { Cause, Effect, Exit, Schema, Struct } from "effect";
import { nuid } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { unresolvedInput } from "../../machines/workflow.js";
import { Cron } from "croner";
import { LEASE_KEY, nextTick, Scheduler } from "../schedule/scheduler.js";
import { PauseEntry, ScheduleEntry, WorkerInfo, type TaskRecord, type WorkflowRecord } from "../../machines/records.js";
import { InvalidInput, InvalidOption, NatsFailure, StoreLocked, TaskNotFound, WorkerNotFound, WorkflowNotFound } from "../errors.js";
import { durationOption, type DurationInput } from "../duration.js";
import { inspectHandle } from "../handle-inspect.js";
import { decodeWith } from "../nats/codec.js";
import { readBucket } from "../nats/bucket.js";
import { connectNats, openNats, type ConnectOptions, type NatsHandle } from "../nats/connection.js";
import {
  controlSubject,
  isPriority,
  recordSubject,
  KEY,
  isValidQueueName,
  isValidTaskName,
  notifySubject,
  pauseKey,
  PAUSES_BUCKET,
  SCHEDULES_BUCKET,
  STEPS_ROOT,
  WORKERS_BUCKET,
} from "../nats/topology.js";
import { encodeJson } from "../nats/codec.js";
import { TaskRecord as TaskRecordSchema } from "../../machines/records.js";
import { readLogs, type LogFilter, type LogLine } from "./logs.js";
import { readStats, type StatsOptions, type TroupeStats } from "./stats.js";
import type { ProgressEvents } from "./run.js";
import { NatsServer, type NatsServerOptions } from "../dev/nats-server.js";
import { rootLogger, type LogLevel } from "../log.js";
import { cancelTask, type CancelResult } from "../store/cancel.js";
import { TaskStore } from "../store/task-store.js";
import { resolvePayload, resolveRecord } from "../store/payloads.js";
import { retentionPolicy, RetentionSweeper, sweep, type RetentionPolicy, type SweepResult } from "../store/retention.js";
import { listTasks, type ListOptions, type TaskPage } from "./list.js";
import { readHistory, type HistoryEvent } from "../nats/history.js";
import { WorkflowStore } from "../store/workflow-store.js";
import { encodeInput, untypedTask, type InputOf, type OutputOf, type TaskDefinition } from "../task.js";
import type { WorkflowDefinition, WorkflowInputOf, WorkflowOutputsOf } from "../workflow.js";
import { Coordinator, type CoordinatorOptions } from "../coordinator/coordinator.js";
import { Worker, type WorkerOptions } from "../worker/worker.js";
import { RpcService, type GatewayOptions } from "../rpc/service.js";
import { Results } from "./results.js";
import { TaskRun } from "./run.js";
import { WorkflowRun, type WorkflowCancelResult } from "./workflow-run.js";
import { bestEffortRemoval, permissionDenied, watchPermissions } from "../nats/permissions.js";

export type { CancelResult } from "../store/cancel.js";

export interface TroupeOptions extends ConnectOptions {
  /** A pino logger; when unset, one at `logLevel` writing JSON lines to stderr. */
  readonly logger?: Logger;
  /**
   * The level of the logger Troupe makes when `logger` is unset: `TROUPE_LOG_LEVEL`, else
   * `warn` (a retry, a cancel, a redelivery are `info` or `debug`). Handlers' `ctx.log`
   * lines at `info` and above reach TROUPE_LOGS whatever it is.
   */
  readonly logLevel?: LogLevel;
}

export interface DevOptions extends TroupeOptions, Pick<NatsServerOptions, "binary" | "port"> {
  /** Where the embedded server keeps its store (default `.troupe/nats`). */
  readonly storeDir?: string;
}

export interface SubmitOptions {
  /** The task id: letters, digits, `_` and `-` (default: a fresh unique id). */
  readonly id?: string;
  /**
   * Submitting again with the same key (same task and queue) returns the same run and
   * enqueues nothing new, for ever: the key picks the task id, whose KV record is created once.
   */
  readonly idempotencyKey?: string;
  /** Start no sooner than this from now: milliseconds or a duration such as `"10 minutes"`. */
  readonly delay?: DurationInput;
  /**
   * 1 (first) to 5 (last), default 3: among the waiting tasks of one type, a worker starts
   * a higher priority first; equal priorities stay first in, first out.
   */
  readonly priority?: number;
  /**
   * Group the task under a key (a tenant, an account: letters, digits, `_` and `-`, up to
   * 64): keys are served round robin, and a type's `limits.perKey` caps each key's attempts
   * running at once. Within a key, tasks start in order (priority does not reorder them).
   */
  readonly key?: string;
}

/** A live worker, as its registry entry in `troupe-workers` describes it. */
export type { WorkerInfo } from "../../machines/records.js";

/** What `troupe.schedule` takes. */
export interface ScheduleOptions<T extends TaskDefinition = TaskDefinition> {
  /** 1 to 100 letters, digits, `_` and `-`; scheduling an id again replaces it. */
  readonly id: string;
  /** The task: its definition, or its name (with `queue`). */
  readonly task: T | string;
  readonly queue?: string;
  readonly input: InputOf<T>;
  /** A cron expression (5 fields, or 6 with seconds first). */
  readonly cron?: string;
  /** Or an interval (at least 250 ms): ticks at whole multiples of it. */
  readonly every?: DurationInput;
  /** An IANA time zone for `cron` (default UTC). */
  readonly timezone?: string;
  readonly catchUp?: "none" | "one" | "all";
}

const SCHEDULE_ID = /^[A-Za-z0-9_-]{1,100}$/;

/** What `pause` and `resume` take: a task (its definition, or its name and queue) or a whole queue. */
export type PauseTarget = Pick<TaskDefinition, "name" | "queue"> | { readonly queue: string; readonly task?: string };

const pauseTarget = (target: PauseTarget): { queue: string; task?: string | undefined } => {
  const queue = target.queue;
  const task = "name" in target ? target.name : target.task;
  if (typeof queue !== "string" || !isValidQueueName(queue)) throw new InvalidOption({ message: `pause: queue "${String(queue)}" is not a queue name` });
  if (task !== undefined && !isValidTaskName(task)) throw new InvalidOption({ message: `pause: "${task}" is not a task name` });
  return { queue, task };
};

/** A live worker as `workerStats` reports it: its registry entry, its live figures, and the tasks it runs now. */
export type WorkerStatus = WorkerInfo & { readonly runningTasks: ReadonlyArray<string> };

/** What a worker's `stats` endpoint answers (the parts `workerStats` takes). */
const LiveStats = Schema.Struct({
  ...Struct.pick(WorkerInfo.fields, ["state", "running", "processed", "failed", "paused", "executors"]),
  tasks: Schema.Array(Schema.String),
});
const ControlReply = Schema.Struct({ running: Schema.Number });

/** The task id an idempotency key stands for. */
export const idempotentId = (task: Pick<TaskDefinition, "name" | "queue">, key: string) =>
  `k-${createHash("sha256").update(`${task.queue}\0${task.name}\0${key}`).digest("base64url").slice(0, 32)}`;

const TASK_ID = /^[A-Za-z0-9_-]{1,200}$/;
/** How long a "no worker serves this task" check is trusted. */
const SERVED_TTL_MS = 10_000;

/** The options a connect takes that can be checked before connecting: the retention policy, the payload threshold. */
const checkedOptions = (options: TroupeOptions): RetentionPolicy => {
  const threshold = options.payloadThreshold;
  if (threshold !== undefined && (!Number.isInteger(threshold) || threshold < 1_024 || threshold > 256 * 1024)) {
    throw new InvalidOption({ message: `payloadThreshold must be an integer number of bytes from 1024 to 262144 (an input and an output just under it must still fit a 1 MB message), got ${String(threshold)}` });
  }
  if (options.submitRetryFor !== undefined) durationOption("submitRetryFor", options.submitRetryFor, (message) => new InvalidOption({ message }));
  if (options.connectTimeout !== undefined) durationOption("connectTimeout", options.connectTimeout, (message) => new InvalidOption({ message }), 100);
  return retentionPolicy(options.retention);
};

/** What `retry` takes to retry many tasks: those `list` finds. */
export interface RetryFilter extends Pick<ListOptions, "task" | "queue" | "since"> {
  /** FAILED (the default) or CANCELLED. */
  readonly status?: "FAILED" | "CANCELLED";
  /** Retry at most this many. */
  readonly limit?: number;
}

/** Which tasks a bulk `retry` ran again, and which it could not (they moved on meanwhile). */
export interface RetryResult {
  readonly retried: ReadonlyArray<string>;
  readonly skipped: ReadonlyArray<string>;
}

/** The connection layer behind each client, for the tools of `troupe/internals` (never part of the client's surface). */
const handles = new WeakMap<Troupe, NatsHandle>();
export const connectionOf = (troupe: Troupe): NatsHandle => {
  const handle = handles.get(troupe);
  if (handle === undefined) throw new NatsFailure({ message: "not a connected Troupe client" });
  return handle;
};

export class Troupe {
  private readonly tasks: TaskStore;
  private readonly workflows: WorkflowStore;
  private readonly results: Results;
  private readonly workerSet = new Set<Worker>();
  private readonly coordinators = new Set<Coordinator>();
  private readonly schedulerSet = new Set<Scheduler>();
  private readonly gateways = new Set<RpcService>();
  private readonly served = new Map<string, number>();
  private closed = false;
  /** Started with this client's first worker or coordinator: applies `retention`. */
  private sweeper: RetentionSweeper | undefined;

  private constructor(
    private readonly nats: NatsHandle,
    readonly log: Logger,
    /** The embedded server (`dev`): this client's own, or one it found serving the store (left running). */
    private readonly server: Pick<NatsServer, "url" | "stop"> | undefined,
    private readonly retention: RetentionPolicy,
  ) {
    handles.set(this, nats);
    // A refused publish or subscription: one warning naming the subject (a refused request also rejects, as PermissionDenied).
    watchPermissions(nats.nc, (denied) => {
      if (!bestEffortRemoval(denied.subject)) log.warn({ operation: denied.operation, subject: denied.subject }, denied.message);
    });
    this.tasks = new TaskStore(nats);
    this.workflows = new WorkflowStore(nats, this.tasks);
    this.results = new Results(nats, this.tasks, this.workflows, notifySubject(nuid.next()));
  }

  /** Connect to a NATS server (or cluster) and make sure the Troupe layout exists. */
  static async connect(options: TroupeOptions = {}): Promise<Troupe> {
    const retention = checkedOptions(options);
    const log = options.logger ?? rootLogger(options.logLevel);
    const nc = await connectNats(options);
    try {
      return new Troupe(await openNats(nc, options), log, undefined, retention);
    } catch (e) {
      await nc.close();
      throw e;
    }
  }

  /**
   * Start an embedded `nats-server -js` (store under `.troupe/`) and connect to it; `close()`
   * stops it, and it dies with this process however the process ends. When a server already
   * runs on that store (another `Troupe.dev()`, `troupe dev`), connects to it instead, and
   * `close()` leaves it running; when that server does not answer, rejects with `StoreLocked`.
   */
  static async dev(options: DevOptions = {}): Promise<Troupe> {
    const retention = checkedOptions(options);
    const log = options.logger ?? rootLogger(options.logLevel);
    let server: NatsServer;
    try {
      server = await NatsServer.start({
        storeDir: options.storeDir ?? ".troupe/nats",
        syncAlways: true,
        ...(options.binary === undefined ? {} : { binary: options.binary }),
        ...(options.port === undefined ? {} : { port: options.port }),
      });
    } catch (e) {
      if (!(e instanceof StoreLocked)) throw e;
      // Its store is served already: that server, as it is (its owner created and migrated the layout).
      const nc = await connectNats({ ...options, servers: e.url }).catch(() => {
        throw new StoreLocked({ storeDir: e.storeDir, url: e.url, pid: e.pid, message: `${e.message}, which does not answer` });
      });
      log.info({ url: e.url, pid: e.pid, storeDir: e.storeDir }, "Troupe.dev: a nats-server already serves this store; using it");
      try {
        return new Troupe(await openNats(nc, { ...options, layout: "create" }), log, { url: e.url, stop: async () => undefined }, retention);
      } catch (opening) {
        await nc.close();
        throw opening;
      }
    }
    try {
      const nc = await connectNats({ ...options, servers: server.url });
      // Its own server: dev always creates the layout, and carries an earlier version's store over.
      return new Troupe(await openNats(nc, { ...options, layout: "create", migrate: true }), log, server, retention);
    } catch (e) {
      await server.stop();
      throw e;
    }
  }

  /** `Troupe { url: 'nats://…', workers: 1 }` (the workers it runs, not stopped; `closed: true` once closed): what `console.log(troupe)` prints. */
  [inspect.custom](depth: number, options: InspectOptionsStylized, inspectFn: typeof inspect): string {
    const workers = [...this.workerSet].filter((w) => w.stats.state !== "stopped").length;
    const fields = { url: this.url, workers, ...(this.closed ? { closed: true } : {}) };
    return inspectHandle("Troupe", fields, depth, options, inspectFn);
  }

  /** The NATS URL this client uses (the embedded server's under `dev`). */
  get url(): string {
    return this.server?.url ?? this.nats.nc.getServer();
  }

  /**
   * Validate the input against the task's schema, record the task QUEUED in KV, and
   * enqueue it. Rejects with `InvalidInput` (nothing published) on bad input, and
   * `InvalidOption` on a bad option. Logs a warning when no live worker serves the task.
   */
  async submit<T extends TaskDefinition>(task: T, input: InputOf<T>, options: SubmitOptions = {}): Promise<TaskRun<OutputOf<T>>> {
    const encoded = Effect.runSyncExit(encodeInput(task, input));
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    const invalid = (message: string) => new InvalidOption({ message: `submit of task "${task.name}": ${message}` });
    const delay = options.delay === undefined ? undefined : durationOption("delay", options.delay, invalid);
    if (options.id !== undefined && !TASK_ID.test(options.id)) throw invalid(`id "${options.id}": letters, digits, "_" and "-" only`);
    if (options.priority !== undefined && !isPriority(options.priority)) throw invalid(`priority must be an integer from 1 (first) to 5 (last), got ${String(options.priority)}`);
    if (options.key !== undefined && (typeof options.key !== "string" || !KEY.test(options.key))) {
      throw invalid(`key "${String(options.key)}": 1 to 64 letters, digits, "_" and "-"`);
    }
    const key = options.idempotencyKey;
    const id = key === undefined ? (options.id ?? nuid.next()) : idempotentId(task, key);
    const submittedAt = Date.now();
    const { created } = await this.tasks.enqueue({
      id,
      task: task.name,
      queue: task.queue,
      input: encoded.value,
      notify: this.results.notify,
      idempotencyKey: key,
      runAt: delay === undefined ? undefined : Date.now() + delay,
      priority: options.priority,
      key: options.key,
      // A chosen id or key stands for one task for ever: its record is created first.
      unique: key !== undefined || options.id !== undefined,
    });
    if (!created) return this.run(task, id);
    this.checkServed(task);
    return new TaskRun<OutputOf<T>>(this, id, task, () => this.results.own(id, submittedAt));
  }

  /** The task's state record (its large input and output read from the object store), or `undefined` when there is none. */
  async get(id: string): Promise<TaskRecord | undefined> {
    const stored = await this.tasks.get(id);
    return stored === undefined ? undefined : resolveRecord(this.nats, stored.record);
  }

  /** A value with its large-payload references (`{ "troupe.payload": ... }`) replaced by what they stand for. */
  resolvePayload(value: unknown): Promise<unknown> {
    return resolvePayload(this.nats, value);
  }

  /**
   * Tasks newest first, by status, type, queue and time, a page at a time (`cursor`): from
   * TROUPE_INDEX for finished ones, TROUPE_TASKS for queued and retrying ones, the live
   * workers for running ones, so its cost grows with what it returns. Records as stored:
   * a large input or output is a reference (`get` reads it).
   */
  list(options: ListOptions = {}): Promise<TaskPage> {
    return listTasks(this.nats, this.tasks, async () => (await this.workerStats()).flatMap((w) => w.runningTasks), options);
  }

  /** A task's transitions, oldest first: its record's revisions (its QUEUED state first), kept with the record. */
  history(id: string, options: { readonly limit?: number } = {}): Promise<HistoryEvent[]> {
    if (!TASK_ID.test(id)) throw new InvalidOption({ message: `history: "${id}" is not a task id` });
    return readHistory(this.nats, "task", id, options.limit);
  }

  /**
   * Run a FAILED or CANCELLED task again: the same id and input, its history kept, its
   * attempts counted anew (`retries` in the record says how many times it was retried).
   * Rejects with `TaskNotFound`, or `InvalidOption` for a task that did not fail (or a
   * workflow step's: its run decides). With a filter, every FAILED (or CANCELLED) task it
   * lists is retried, and the result says which.
   */
  retry(id: string): Promise<TaskRun<unknown>>;
  retry(filter: RetryFilter): Promise<RetryResult>;
  async retry(target: string | RetryFilter): Promise<TaskRun<unknown> | RetryResult> {
    if (typeof target !== "string") return this.retryAll(target);
    const current = await this.tasks.get(target);
    if (current === undefined) throw new TaskNotFound({ id: target, message: `no task ${target}` });
    if (current.record.notify?.startsWith(STEPS_ROOT)) {
      throw new InvalidOption({ message: `task ${target} is a step of workflow run ${current.record.notify.split(".")[2]}; its run decides what runs` });
    }
    this.results.forget(target);
    const retriedAt = Date.now();
    const retried = await this.tasks.retry(current, this.results.notify);
    if (retried === undefined) {
      throw new InvalidOption({ message: `task ${target} is ${current.record.status}; only FAILED or CANCELLED tasks are retried` });
    }
    const task = untypedTask(current.record.task, current.record.queue);
    return new TaskRun<unknown>(this, target, task, () => this.results.own(target, retriedAt));
  }

  private async retryAll(filter: RetryFilter): Promise<RetryResult> {
    const status = filter.status ?? "FAILED";
    if (status !== "FAILED" && status !== "CANCELLED") throw new InvalidOption({ message: `retry: status must be FAILED or CANCELLED, got ${String(status)}` });
    const retried: string[] = [];
    const skipped: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...filter, status, limit: 200, ...(cursor === undefined ? {} : { cursor }) });
      for (const record of page.tasks) {
        const ok = await this.retry(record.id).then(
          () => true,
          () => false,
        );
        (ok ? retried : skipped).push(record.id);
        if (filter.limit !== undefined && retried.length >= filter.limit) return { retried, skipped };
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return { retried, skipped };
  }

  /**
   * Remove now what is past its retention (the `retention` option): finished task and
   * workflow records, their payloads and index entries. Workers and coordinators do it every
   * minute on their own; this is for scripts and tests.
   */
  sweep(): Promise<SweepResult> {
    return sweep(this.nats, this.retention);
  }

  /**
   * Remove what is past its retention every minute from now until `close()`, one sweeper at
   * a time across processes (a lease): what `troupe retention` runs under the `retention`
   * identity, the only role of `troupe auth init` that may purge. Workers and coordinators
   * start one too; under a role that may not purge it does nothing.
   */
  startRetention(): void {
    this.sweeper ??= new RetentionSweeper(this.nats, this.retention, this.log);
  }

  /** A handle on an existing task, to await its result from any client. */
  run<T extends TaskDefinition>(task: T, id: string): TaskRun<OutputOf<T>> {
    return new TaskRun<OutputOf<T>>(this, id, task, () => this.results.task(id));
  }

  /**
   * Cancel a task: a queued (or retrying) one never starts; a running one has its handler
   * interrupted and ends CANCELLED; a finished one is left as it is, and the result says so.
   */
  cancel(id: string, reason = "cancelled by request"): Promise<CancelResult> {
    return cancelTask(this.nats.nc, this.tasks, id, reason);
  }

  /** The task's writes from now on (its bucket republishes each), for `run.progress()`. */
  progressEvents(id: string): ProgressEvents {
    const queued: TaskRecord[] = [];
    let waiting: ((record: TaskRecord) => void) | undefined;
    const sub = this.nats.nc.subscribe(recordSubject("task", id), {
      callback: (_error, msg) => {
        const decoded = decodeWith(TaskRecordSchema, msg.data, "task record");
        if (!decoded.ok || decoded.value.progress === undefined) return;
        if (waiting === undefined) queued.push(decoded.value);
        else {
          const resolve = waiting;
          waiting = undefined;
          resolve(decoded.value);
        }
      },
    });
    return {
      next: () => {
        const record = queued.shift();
        return record !== undefined ? Promise.resolve(record) : new Promise((resolve) => (waiting = resolve));
      },
      close: () => sub.unsubscribe(),
    };
  }

  /** Stop waiting for a task or run whose wait timed out (`TaskRun`, `WorkflowRun`): nothing of it is kept. */
  releaseWait(id: string): void {
    this.results.release(id);
  }

  /**
   * Handlers' log lines from TROUPE_LOGS (pino JSON objects), oldest first: those stored now,
   * or with `follow` new ones too, until the loop breaks or `timeout` passes.
   */
  logs(filter: LogFilter = {}): AsyncGenerator<LogLine> {
    return readLogs(this.nats, filter);
  }

  /** The live workers (their registry entries), optionally only those that serve `task`. */
  async workers(task?: Pick<TaskDefinition, "name" | "queue">): Promise<WorkerInfo[]> {
    return (await readBucket(this.nats.jsm, WORKERS_BUCKET, this.nats.workers, WorkerInfo, "worker registry entry"))
      .map((e) => e.value)
      .filter((w) => w.state !== "stopped" && (task === undefined || w.tasks.some((t) => t.name === task.name && t.queue === task.queue)));
  }

  /**
   * Per task type and queue: tasks waiting and running, how many completed, failed, were
   * cancelled or retried (within the index's retention), the last minute's rates, and the
   * live workers; with totals. Read from NATS without scanning records.
   */
  stats(options: StatsOptions = {}): Promise<TroupeStats> {
    return readStats(this.nats, () => this.workers(), options);
  }

  /**
   * The live workers as they are now: each registry entry completed by the worker's own
   * `stats` (its state, counters, executors and the tasks it runs, asked live; the entry's
   * as last written when the worker does not answer within a second).
   */
  async workerStats(): Promise<WorkerStatus[]> {
    const entries = await this.workers();
    return Promise.all(
      entries.map(async (entry) => {
        const live = await this.nats.nc
          .request(controlSubject(entry.id, "stats"), undefined, { timeout: 1_000 })
          .then((msg) => decodeWith(LiveStats, msg.data, "worker stats"))
          .catch(() => undefined);
        if (live === undefined || !live.ok) return { ...entry, runningTasks: [] };
        const { tasks, ...rest } = live.value;
        return { ...entry, ...rest, runningTasks: tasks };
      }),
    );
  }

  /**
   * Ask a worker to drain (stop taking work, let running tasks finish within `timeout` ms,
   * then stop) or to shut down (stop now, handing running tasks back). Rejects with
   * `WorkerNotFound` when no live worker has that id.
   */
  async controlWorker(id: string, verb: "drain" | "shutdown", options: { readonly timeout?: number } = {}): Promise<{ readonly running: number }> {
    const body = verb === "drain" && options.timeout !== undefined ? encodeJson({ timeout: options.timeout }) : encodeJson({});
    const reply = await this.nats.nc.request(controlSubject(id, verb), body, { timeout: 5_000 }).catch((e: unknown) => {
      // A role that may not control (only the operator's may) is told so, not that no worker answered.
      throw permissionDenied(e) ?? new WorkerNotFound({ id, message: `no live worker ${id} answered (${(e as Error).message})` });
    });
    const error = reply.headers?.get("Nats-Service-Error");
    if (error) throw new InvalidOption({ message: `worker ${id} refused the ${verb}: ${error}` });
    const decoded = decodeWith(ControlReply, reply.data, `${verb} reply`);
    return { running: decoded.ok ? decoded.value.running : 0 };
  }

  /**
   * Pause a task type (its definition, or `{ queue, task }` by name) or a whole queue
   * (`{ queue }`): every worker stops starting that work within a second; running attempts
   * finish; queued ones wait. Stored in KV `troupe-pauses` until `resume`.
   */
  async pause(target: PauseTarget, options: { readonly reason?: string } = {}): Promise<PauseEntry> {
    const { queue, task } = pauseTarget(target);
    const entry: PauseEntry = { queue, ...(task === undefined ? {} : { task }), ...(options.reason === undefined ? {} : { reason: options.reason }), pausedAt: new Date().toISOString() };
    await this.nats.pauses.put(pauseKey({ queue, task }), encodeJson(entry)).catch((e: unknown) => {
      throw new NatsFailure({ message: `cannot pause ${pauseKey({ queue, task })}: ${(e as Error).message}`, cause: e });
    });
    return entry;
  }

  /** Resume paused work; resolves `false` when it was not paused (a queue's pause and a type's are separate). */
  async resume(target: PauseTarget): Promise<boolean> {
    const key = pauseKey(pauseTarget(target));
    const entry = await this.nats.pauses.get(key).catch(() => null);
    if (entry === null || entry.operation !== "PUT") return false;
    await this.nats.pauses.delete(key).catch((e: unknown) => {
      throw new NatsFailure({ message: `cannot resume ${key}: ${(e as Error).message}`, cause: e });
    });
    return true;
  }

  /** The pauses in effect. */
  async paused(): Promise<PauseEntry[]> {
    return (await readBucket(this.nats.jsm, PAUSES_BUCKET, this.nats.pauses, PauseEntry, "pause entry")).map((e) => e.value);
  }

  /**
   * Create (or replace) a schedule: a task created on `cron` (in `timezone`, UTC by
   * default) or `every` interval, by whichever scheduler leads. Each tick is one task with
   * id `<id>-<tick time in ms>`. `catchUp` decides what ticks missed while no scheduler ran
   * become: `"none"` (skipped), `"one"` (one run, the default), `"all"`. The input is checked
   * against the task's schema now; a task known only by name is checked by its worker.
   */
  async schedule<T extends TaskDefinition>(options: ScheduleOptions<T>): Promise<ScheduleEntry> {
    const invalid = (message: string) => new InvalidOption({ message: `schedule "${String(options.id)}": ${message}` });
    if (typeof options.id !== "string" || !SCHEDULE_ID.test(options.id)) throw invalid("id must be 1 to 100 letters, digits, \"_\" or \"-\"");
    const task = typeof options.task === "string" ? untypedTask(options.task, options.queue) : options.task;
    if (!isValidTaskName(task.name)) throw invalid(`"${task.name}" is not a task name`);
    const encoded = Effect.runSyncExit(encodeInput(task, options.input));
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    if ((options.cron === undefined) === (options.every === undefined)) throw invalid("give one of cron or every");
    const everyMs = options.every === undefined ? undefined : durationOption("every", options.every, invalid, 250);
    if (options.cron !== undefined) {
      try {
        new Cron(options.cron, { paused: true, ...(options.timezone === undefined ? {} : { timezone: options.timezone }) }).nextRun();
      } catch (e) {
        throw invalid(`cron "${options.cron}"${options.timezone === undefined ? "" : ` in ${options.timezone}`}: ${(e as Error).message}`);
      }
    } else if (options.timezone !== undefined) throw invalid("timezone applies to cron");
    const catchUp = options.catchUp ?? "one";
    if (!["none", "one", "all"].includes(catchUp)) throw invalid(`catchUp must be "none", "one" or "all", got ${String(catchUp)}`);
    const entry: ScheduleEntry = {
      id: options.id,
      task: task.name,
      queue: task.queue,
      input: encoded.value,
      ...(options.cron === undefined ? {} : { cron: options.cron }),
      ...(everyMs === undefined ? {} : { everyMs }),
      ...(options.timezone === undefined ? {} : { timezone: options.timezone }),
      catchUp,
      createdAt: new Date().toISOString(),
    };
    await this.nats.schedules.put(entry.id, encodeJson(entry)).catch((e: unknown) => {
      throw new NatsFailure({ message: `cannot store schedule ${entry.id}: ${(e as Error).message}`, cause: e });
    });
    return entry;
  }

  /** Remove a schedule; `false` when there was none. Tasks it created are left as they are. */
  async unschedule(id: string): Promise<boolean> {
    const entry = await this.nats.schedules.get(id).catch(() => null);
    if (entry === null || entry.operation !== "PUT") return false;
    await this.nats.schedules.delete(id);
    return true;
  }

  /** Every schedule, with its next tick. */
  async schedules(): Promise<Array<ScheduleEntry & { readonly nextTick?: string }>> {
    const now = Date.now();
    return (await readBucket(this.nats.jsm, SCHEDULES_BUCKET, this.nats.schedules, ScheduleEntry, "schedule")).map(({ value }) => {
      const next = nextTick(value, Math.max(now, value.lastTick ?? 0));
      return { ...value, ...(next === undefined ? {} : { nextTick: new Date(next).toISOString() }) };
    });
  }

  /** The scheduler that leads now (its id), if any. */
  async schedulerLeader(): Promise<string | undefined> {
    const entry = await this.nats.leases.get(LEASE_KEY).catch(() => null);
    if (entry === null || entry.operation !== "PUT") return undefined;
    return (entry.json<{ holder?: string }>().holder as string | undefined) ?? undefined;
  }

  /** Start a scheduler on this connection (coordinators run one too). */
  scheduler(): Scheduler {
    const scheduler = Scheduler.start(this.nats, this.tasks, this.log);
    this.schedulerSet.add(scheduler);
    return scheduler;
  }

  /** Start a worker for these tasks on this connection (it serves JSON-RPC through this client unless `rpc: false`). */
  async worker(options: WorkerOptions): Promise<Worker> {
    const worker = await Worker.start(this.nats, this.tasks, options, this.log, undefined, this);
    this.workerSet.add(worker);
    this.sweeper ??= new RetentionSweeper(this.nats, this.retention, this.log);
    return worker;
  }

  /**
   * Serve JSON-RPC 2.0 on `troupe.rpc` without running tasks, as `troupe gateway` does
   * (docs/rpc.md): calls are submitted through this client. Stopped by `close()`.
   */
  async gateway(options: GatewayOptions = {}): Promise<RpcService> {
    const gateway = await RpcService.gateway(this.nats, this, options, this.log);
    this.gateways.add(gateway);
    return gateway;
  }

  /**
   * Start a workflow run: validate the input (its schema, and every `${input...}` the steps
   * reference), record the run RUNNING with its first steps, and enqueue them. Coordinators
   * (`troupe.coordinator()`, `troupe coordinator`) advance it.
   */
  async start<W extends WorkflowDefinition>(workflow: W, input: WorkflowInputOf<W>): Promise<WorkflowRun<WorkflowOutputsOf<W>>> {
    const encoded = Effect.runSyncExit(encodeInput(workflow, input, "workflow"));
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    const missing = unresolvedInput(workflow.steps, encoded.value);
    if (missing !== undefined) {
      throw new InvalidInput({ task: workflow.name, path: [], message: `input of workflow "${workflow.name}" is invalid: ${missing}` });
    }
    const id = nuid.next();
    try {
      await this.workflows.start({ name: workflow.name, steps: workflow.steps, policy: workflow.policy }, encoded.value, this.log, id);
    } catch (e) {
      throw new NatsFailure({ message: `cannot start workflow ${workflow.name}: ${(e as Error).message}`, cause: e });
    }
    // Its wait starts on the first ask: it reads the run once, after listening.
    return new WorkflowRun(this, id, () => this.results.run(id), workflow.tasks, workflow.name);
  }

  /** A handle on an existing workflow run; with its definition, step outputs are decoded. */
  workflowRun<W extends WorkflowDefinition>(workflow: W | undefined, id: string): WorkflowRun<WorkflowOutputsOf<W>> {
    return new WorkflowRun(this, id, () => this.results.run(id), workflow?.tasks, workflow?.name);
  }

  /** The run's record, or `undefined`. */
  async getWorkflow(id: string): Promise<WorkflowRecord | undefined> {
    return (await this.workflows.read(id))?.record;
  }

  /** Cancel a run: running steps are cancelled, pending ones never start; a finished run is left as it is. */
  async cancelWorkflow(id: string, reason = "cancelled by request"): Promise<WorkflowCancelResult> {
    const before = await this.workflows.read(id);
    if (before === undefined) throw new WorkflowNotFound({ id, message: `no workflow run ${id}` });
    const record = await this.workflows.apply(id, { type: "CANCEL", reason, at: Date.now() }, this.log);
    if (record === undefined) throw new WorkflowNotFound({ id, message: `no workflow run ${id}` });
    const cancelled = record.status === "CANCELLED" && before.record.status !== "CANCELLED";
    const message = cancelled ? `workflow run ${id} cancelled` : `workflow run ${id} already ended ${record.status}; left as it is`;
    return { id, status: record.status, cancelled, message, record };
  }

  /** Start a coordinator on this connection: it advances workflow runs. */
  async coordinator(options: CoordinatorOptions = {}): Promise<Coordinator> {
    const coordinator = await Coordinator.start(this.nats, this.workflows, this.tasks, this.log, options);
    this.coordinators.add(coordinator);
    this.sweeper ??= new RetentionSweeper(this.nats, this.retention, this.log);
    return coordinator;
  }

  /**
   * Stop this client's workers and coordinators, end its waits, drain the connection, and
   * stop the embedded server if any. Nothing of it keeps running.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.coordinators].map((c) => c.stop()));
    await Promise.all([...this.schedulerSet].map((s) => s.stop()));
    await Promise.all([...this.workerSet].map((w) => w.stop()));
    await Promise.all([...this.gateways].map((g) => g.stop()));
    await this.sweeper?.stop();
    // A check of the registry still listing it, given a moment to end (its listing's consumer with it).
    if (this.checks.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(this.checks), new Promise((resolve) => (timer = setTimeout(resolve, 2_000)))]);
      clearTimeout(timer);
    }
    this.results.close();
    this.nats.publisher.close();
    await this.nats.nc.drain().catch(() => undefined);
    await this.server?.stop();
  }

  /** The "no live worker" checks under way: `close()` lets them end first (a registry listing is a consumer of its own). */
  private readonly checks = new Set<Promise<void>>();

  private checkServed(task: TaskDefinition): void {
    if (this.closed) return;
    const check = this.warnIfUnserved(task).finally(() => this.checks.delete(check));
    this.checks.add(check);
  }

  /** A warning, once in a while per task type, when no live worker serves it: it waits queued until one starts. */
  private async warnIfUnserved(task: TaskDefinition): Promise<void> {
    const key = `${task.queue}\0${task.name}`;
    const now = Date.now();
    if ((this.served.get(key) ?? 0) > now) return;
    this.served.set(key, now + SERVED_TTL_MS);
    const serving = await this.workers(task).catch(() => undefined);
    if (serving?.length === 0) {
      this.log.warn({ task: task.name, queue: task.queue }, `no live worker serves task "${task.name}"; it waits queued until one starts`);
    }
  }
}
