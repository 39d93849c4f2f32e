/**
 * Waiting for results. A record bucket republishes every write it stores on
 * `troupe.events.<kind>.<id>` (only the server publishes there), so a wait hears the very
 * write that ended its task or run, once it is stored, never one that lost its
 * compare-and-set: it settles from the record.
 *
 * A wait starts when someone asks for a result, not at submit. A client with a few waits
 * listens to each of their subjects; one with many (a burst of submits awaited) listens to
 * `troupe.events.task.>` once instead, and keeps the terminal records of its own tasks
 * (their `notify` is this client's) that end before anyone asks, in a bounded buffer of
 * recent results: a client that submits a million tasks and awaits none holds no state for
 * them. A wait that may have missed its end (it started after the task could have ended,
 * unheard) reads the record once. The republished write can still be lost (a server
 * restart, a reconnect), so every wait that lasts re-reads its record now and then (after
 * 5 s, then less and less often), and all of them after a reconnect. Closing the client ends
 * every wait with `NatsFailure`. A wait settles only from a record: a write the bucket
 * republished for the waited id (its stamped key and the record's id both that id) or one read
 * from the bucket, never from a message a client could publish (`notify` is a mark, not a subject).
 */
import type { Schema } from "effect";
import type { Msg, Subscription } from "@nats-io/transport-node";
import { Effect } from "effect";
import {
  TaskRecord as TaskRecordSchema,
  TerminalStatuses,
  WorkflowRecord as WorkflowRecordSchema,
  type TaskRecord,
  type WorkflowRecord,
} from "../../machines/records.js";
import { isWorkflowTerminal } from "../../machines/workflow.js";
import { NatsFailure, ResultTimeout, TaskNotFound, WorkflowNotFound } from "../errors.js";
import { decodeWith } from "../nats/codec.js";
import type { NatsHandle } from "../nats/connection.js";
import { bucketOf, recordSubject } from "../nats/topology.js";
import type { TaskStore } from "../store/task-store.js";
import type { WorkflowStore } from "../store/workflow-store.js";

/** When a wait first re-reads its record, and the longest it goes between two reads. */
const FIRST_CHECK_MS = 5_000;
const MAX_CHECK_MS = 30_000;
/** Terminal records of own tasks nobody waits for yet, kept for a wait that starts late (the oldest go first). */
const RECENT_MAX = 10_000;
/** Records re-read per second at most, oldest waits first: a large backlog of waits costs the server little. */
const CHECKS_PER_TICK = 100;
/** Task waits at which a client listens to every task's writes instead of each one's, and back. */
const WIDE_AT = 64;
const NARROW_AT = 16;

const TASK_EVENTS = recordSubject("task", "");
const STATUS = Buffer.from('"status":"');

interface Waiter<R> {
  readonly promise: Promise<R>;
  readonly resolve: (record: R) => void;
  readonly reject: (e: unknown) => void;
  /** Re-read the record then (epoch ms). */
  nextCheck: number;
  interval: number;
  /** This wait's own subscription (while the client does not listen to every task's writes). */
  sub?: Subscription | undefined;
}

/**
 * Whether a task's or run's record, as bytes, says it ended: its `status` (the first one in
 * it: both records start with their own) starts with C(OMPLETED|ANCELLED) or F(AILED), not
 * Q(UEUED), R(UNNING|ETRYING) or P(ENDING).
 */
/**
 * Whether a message on `troupe.events.<kind>.<id>` is the bucket's republished write of that
 * very key: the server stamps the key it stored (`Nats-Subject`). Only the server may publish
 * there (every role is denied it); this is the second check, and the record's own id the third.
 */
const fromBucket = (kind: "task" | "workflow", id: string, msg: Msg): boolean => msg.headers?.get(REPUBLISHED_KEY) === `$KV.${bucketOf(kind)}.${id}`;
const REPUBLISHED_KEY = "Nats-Subject";

const endedBytes = (data: Uint8Array): boolean => {
  const at = Buffer.from(data.buffer, data.byteOffset, data.byteLength).indexOf(STATUS);
  if (at < 0) return false;
  const first = data[at + STATUS.length];
  return first === 0x43 || first === 0x46;
};

export class Results {
  private readonly tasks = new Map<string, Waiter<TaskRecord>>();
  private readonly runs = new Map<string, Waiter<WorkflowRecord>>();
  private readonly recent = new Map<string, TaskRecord>();
  /** `troupe.events.task.>` while this client has many waits, and since when (epoch ms). */
  private wide: Subscription | undefined;
  private wideSince = Number.POSITIVE_INFINITY;
  private readonly ownMark: Buffer;
  private readonly timer: NodeJS.Timeout;
  private checking = false;
  private closed = false;

  constructor(
    private readonly nats: NatsHandle,
    private readonly taskStore: TaskStore,
    private readonly workflowStore: WorkflowStore,
    /** What this client's tasks carry as `notify`: how it knows its own. */
    readonly notify: string,
  ) {
    this.ownMark = Buffer.from(JSON.stringify(notify));
    this.timer = setInterval(() => void this.check(), 1_000);
    this.timer.unref();
    void this.watchReconnects();
  }

  /**
   * The terminal record of a task this client submitted at `submittedAt` (epoch ms): from the
   * recent results if it ended while the client listened to every task, else a wait.
   */
  own(id: string, submittedAt: number): Promise<TaskRecord> {
    const waiting = this.tasks.get(id);
    if (waiting !== undefined) return waiting.promise;
    const ended = this.recent.get(id);
    if (ended !== undefined) {
      this.recent.delete(id);
      return Promise.resolve(ended);
    }
    // Listening to every task since before it was submitted (strictly: a subscription made in
    // the same millisecond may have reached the server after the work): its end is still to
    // come, or in `recent`.
    const heard = this.wide !== undefined && this.wideSince < submittedAt;
    return this.followTask(id, heard ? undefined : () => this.readTask(id, false));
  }

  /** Drop a task's result kept from before (it runs again: `troupe.retry`), so that a wait awaits its new end. */
  forget(id: string): void {
    this.recent.delete(id);
  }

  /** The task's terminal record, however and wherever it ends. */
  task(id: string): Promise<TaskRecord> {
    const waiting = this.tasks.get(id);
    if (waiting !== undefined) return waiting.promise;
    return this.followTask(id, () => this.readTask(id, true));
  }

  /** The run's terminal record. */
  run(id: string): Promise<WorkflowRecord> {
    const existing = this.runs.get(id);
    if (existing !== undefined) return existing.promise;
    const waiter = this.waiter(this.runs, id);
    if (this.closed) return waiter.promise;
    waiter.sub = this.subscribe("workflow", id, WorkflowRecordSchema, (r) => this.settleRun(r));
    // After the subscription (on the same connection, so the server has it first): an end between the two is heard either way.
    this.workflowStore.read(id).then(
      (now) => (now === undefined ? this.end(this.runs, id, (w) => w.reject(new WorkflowNotFound({ id, message: `no workflow run ${id}` }))) : this.settleRun(now.record)),
      (e: unknown) => this.end(this.runs, id, (w) => w.reject(e)),
    );
    return waiter.promise;
  }

  /** A task's record, read once for a wait: `undefined` when it has not ended. `must`: a task that does not exist is `TaskNotFound`. */
  private async readTask(id: string, must: boolean): Promise<TaskRecord | undefined> {
    if (!must) return (await Effect.runPromise(this.taskStore.read(id)))?.record;
    const stored = await this.taskStore.get(id);
    if (stored === undefined) throw new TaskNotFound({ id, message: `no task ${id}` });
    return stored.record;
  }

  /** A wait on a task: its subject (or every task's), then `read` once, if given. */
  private followTask(id: string, read: (() => Promise<TaskRecord | undefined>) | undefined): Promise<TaskRecord> {
    const waiter = this.waiter(this.tasks, id);
    if (this.closed) return waiter.promise;
    if (this.wide === undefined) {
      if (this.tasks.size >= WIDE_AT) this.widen();
      else waiter.sub = this.subscribe("task", id, TaskRecordSchema, (r) => this.settleTask(r));
    }
    if (read !== undefined) {
      read().then(
        (now) => now !== undefined && this.settleTask(now),
        (e: unknown) => this.end(this.tasks, id, (w) => w.reject(e)),
      );
    }
    return waiter.promise;
  }

  private subscribe<R extends { readonly id: string }>(kind: "task" | "workflow", id: string, schema: Schema.Decoder<R, never>, settle: (record: R) => void): Subscription {
    return this.nats.nc.subscribe(recordSubject(kind, id), {
      callback: (_e, msg) => {
        // Only a write that ends it is decoded: a large run's every write would cost a copy for nothing.
        if (!endedBytes(msg.data) || !fromBucket(kind, id, msg)) return;
        const decoded = decodeWith(schema, msg.data, `${kind} record`);
        if (decoded.ok && decoded.value.id === id) settle(decoded.value);
      },
    });
  }

  /** Listen to every task's writes, in place of each wait's own subscription. */
  private widen(): void {
    this.wideSince = Date.now();
    this.wide = this.nats.nc.subscribe(`${TASK_EVENTS}>`, { callback: (_e, msg) => this.heardWide(msg) });
    const old: Subscription[] = [];
    for (const w of this.tasks.values()) {
      if (w.sub !== undefined) old.push(w.sub);
      w.sub = undefined;
    }
    this.retire(old);
  }

  /** Back to each wait's own subscription, once few are left. */
  private narrow(): void {
    if (this.wide === undefined || this.tasks.size > NARROW_AT) return;
    for (const [id, w] of this.tasks) w.sub = this.subscribe("task", id, TaskRecordSchema, (r) => this.settleTask(r));
    this.retire([this.wide]);
    this.wide = undefined;
    this.wideSince = Number.POSITIVE_INFINITY;
  }

  /**
   * Subscriptions another took over from: kept until the server has answered a ping sent
   * after the new one, so that what it sent them before it had the new one is still heard
   * (a write heard twice settles once).
   */
  private retire(subs: ReadonlyArray<Subscription>): void {
    if (subs.length === 0) return;
    const drop = () => subs.forEach((s) => s.unsubscribe());
    this.nats.nc.flush().then(drop, drop);
  }

  /** Any task's write: decoded only when it ends a wait, or ends a task of this client's that nobody waits for yet. */
  private heardWide(msg: Msg): void {
    const id = msg.subject.slice(TASK_EVENTS.length);
    // A record's write only (`troupe.events.task.<id>`, from the bucket), not a note on `<id>.<note>`.
    if (id.includes(".") || !endedBytes(msg.data) || !fromBucket("task", id, msg)) return;
    const waiting = this.tasks.has(id);
    if (!waiting && Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength).indexOf(this.ownMark) < 0) return;
    const decoded = decodeWith(TaskRecordSchema, msg.data, "task record");
    if (!decoded.ok || decoded.value.id !== id) return;
    if (waiting) return this.settleTask(decoded.value);
    if (decoded.value.notify !== this.notify) return;
    this.recent.set(id, decoded.value);
    if (this.recent.size > RECENT_MAX) this.recent.delete(this.recent.keys().next().value!);
  }

  /** End every wait: the client is closing. */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.wide?.unsubscribe();
    this.wide = undefined;
    this.recent.clear();
    for (const map of [this.tasks, this.runs] as const) {
      for (const id of [...map.keys()]) {
        this.end(map as Map<string, Waiter<unknown>>, id, (w) => w.reject(new NatsFailure({ message: `client closed while waiting for ${id}` })));
      }
    }
  }

  /** Stop waiting for `id` (a wait that timed out): its subscription and its place go. */
  release(id: string): void {
    const waiter = this.tasks.get(id);
    if (waiter !== undefined) this.end(this.tasks, id, () => undefined);
    const run = this.runs.get(id);
    if (run !== undefined) this.end(this.runs, id, () => undefined);
  }

  private waiter<R>(map: Map<string, Waiter<R>>, id: string): Waiter<R> {
    let resolve!: (r: R) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<R>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // a wait nobody awaits must not be an unhandled rejection
    const waiter: Waiter<R> = { promise, resolve, reject, nextCheck: Date.now() + FIRST_CHECK_MS, interval: FIRST_CHECK_MS };
    if (this.closed) reject(new NatsFailure({ message: `client closed; cannot wait for ${id}` }));
    else map.set(id, waiter);
    return waiter;
  }

  private end<R>(map: Map<string, Waiter<R>>, id: string, how: (w: Waiter<R>) => void): void {
    const waiter = map.get(id);
    if (waiter === undefined) return;
    map.delete(id);
    waiter.sub?.unsubscribe();
    how(waiter);
    if (map === (this.tasks as Map<string, unknown>)) this.narrow();
  }

  private settleTask(record: TaskRecord): void {
    if (TerminalStatuses.has(record.status)) this.end(this.tasks, record.id, (w) => w.resolve(record));
  }

  private settleRun(record: WorkflowRecord): void {
    if (isWorkflowTerminal(record.status)) this.end(this.runs, record.id, (w) => w.resolve(record));
  }

  /** Re-read the records of the waits that are due. */
  private async check(): Promise<void> {
    if (this.checking || this.closed) return;
    this.checking = true;
    try {
      const now = Date.now();
      const due = <R>(map: Map<string, Waiter<R>>) => {
        const ids: string[] = [];
        for (const [id, w] of map) {
          if (w.nextCheck > now) continue;
          w.interval = Math.min(MAX_CHECK_MS, w.interval * 2);
          w.nextCheck = now + w.interval;
          ids.push(id);
          if (ids.length === CHECKS_PER_TICK) break;
        }
        return ids;
      };
      await Promise.all([
        ...due(this.tasks).map(async (id) => {
          const stored = await Effect.runPromise(this.taskStore.read(id)).catch(() => undefined);
          if (stored !== undefined) this.settleTask(stored.record);
        }),
        ...due(this.runs).map(async (id) => {
          const stored = await this.workflowStore.read(id).catch(() => undefined);
          if (stored !== undefined) this.settleRun(stored.record);
        }),
      ]);
    } finally {
      this.checking = false;
    }
  }

  /** A republished write can be lost with the connection: after a reconnect, re-read everything waited on. */
  private async watchReconnects(): Promise<void> {
    for await (const status of this.nats.nc.status()) {
      if (status.type !== "reconnect") continue;
      for (const w of [...this.tasks.values(), ...this.runs.values()]) w.nextCheck = 0;
      void this.check();
    }
  }
}

/** `promise`, or `ResultTimeout` after `ms` (none when undefined); the timer never outlives the wait, and `expired` is told when it ends it. */
export const withTimeout = async <T>(promise: Promise<T>, ms: number | undefined, id: string, what: string, expired?: () => void): Promise<T> => {
  if (ms === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired?.();
      reject(new ResultTimeout({ id, message: `${what} ${id} did not end within ${ms} ms` }));
    }, ms);
  });
  try {
    return await Promise.race([promise, timedOut]);
  } finally {
    clearTimeout(timer);
  }
};
