/**
 * Waiting for results. A client hears the terminal records of the tasks it submitted on its
 * notify subject (`troupe.notify.<client>`, the record's `notify`: each message the records
 * that ended in one tick), and of any other task on that task's events. A wait starts when someone asks for a result, not at
 * submit: what ends before anyone asks is kept in a bounded buffer of recent results, so
 * a client that submits a million tasks and awaits none holds no state for them. Neither is the only way: a notify or an event can be lost
 * (a worker or a server killed at the wrong moment), so every wait that lasts re-reads
 * the record now and then (after 5 s, then less and less often), and all of them after a
 * reconnect. Closing the client ends every wait with `NatsFailure`.
 */
import type { Schema } from "effect";
import type { Subscription } from "@nats-io/transport-node";
import {
  TaskRecord as TaskRecordSchema,
  TerminalStatuses,
  WorkflowRecord as WorkflowRecordSchema,
  type TaskRecord,
  type WorkflowRecord,
} from "../../machines/records.js";
import { isWorkflowTerminal } from "../../machines/workflow.js";
import { NatsFailure, ResultTimeout, TaskNotFound, WorkflowNotFound } from "../errors.js";
import { decodeJson, decodeValueWith, decodeWith } from "../nats/codec.js";
import type { NatsHandle } from "../nats/connection.js";
import { eventSubject } from "../nats/topology.js";
import type { TaskStore } from "../store/task-store.js";
import type { WorkflowStore } from "../store/workflow-store.js";

/** The events that end a task or a run (`troupe.events.<kind>.<id>.<event>`). */
const ENDS: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

/** When a wait first re-reads its record, and the longest it goes between two reads. */
const FIRST_CHECK_MS = 5_000;
const MAX_CHECK_MS = 30_000;
/** Terminal records of own tasks nobody waits for yet, kept for a wait that starts late (the oldest go first). */
const RECENT_MAX = 10_000;
/** Records re-read per second at most, oldest waits first: a large backlog of waits costs the server little. */
const CHECKS_PER_TICK = 100;

interface Waiter<R> {
  readonly promise: Promise<R>;
  readonly resolve: (record: R) => void;
  readonly reject: (e: unknown) => void;
  /** Re-read the record then (epoch ms). */
  nextCheck: number;
  interval: number;
  /** The ending events of a task or run this client did not submit. */
  subs?: Subscription[] | undefined;
}

export class Results {
  private readonly tasks = new Map<string, Waiter<TaskRecord>>();
  private readonly runs = new Map<string, Waiter<WorkflowRecord>>();
  private readonly recent = new Map<string, TaskRecord>();
  private notifySub: Subscription | undefined;
  private singleSub: Subscription | undefined;
  private readonly timer: NodeJS.Timeout;
  private checking = false;
  private closed = false;

  constructor(
    private readonly nats: NatsHandle,
    private readonly taskStore: TaskStore,
    private readonly workflowStore: WorkflowStore,
    /** Where workers notify this client (`troupe.notify.<client>`). */
    readonly notify: string,
  ) {
    this.timer = setInterval(() => void this.check(), 1_000);
    this.timer.unref();
    void this.watchReconnects();
  }

  /** Hear the terminal records of this client's tasks: call before the first work message is published. */
  listen(): void {
    if (this.notifySub !== undefined || this.closed) return;
    // `<notify>` carries arrays of records; `<notify>.<id>` one record, as earlier workers
    // sent them, so a client upgraded before its workers still hears them.
    this.notifySub = this.nats.nc.subscribe(this.notify, {
      callback: (_e, msg) => this.heard(msg.data),
    });
    this.singleSub = this.nats.nc.subscribe(`${this.notify}.*`, { callback: (_e, msg) => this.heard(msg.data) });
  }

  /** A notification: an array of terminal records, or one record. */
  private heard(data: Uint8Array): void {
    // Parsed as JSON here; each record is decoded on its own below.
    const decoded = decodeJson(data);
    if (!decoded.ok) return;
    for (const item of Array.isArray(decoded.value) ? decoded.value : [decoded.value]) {
      const record = decodeValueWith(TaskRecordSchema, item, "task record");
      if (record.ok) this.settleOwn(record.value);
    }
  }

  /**
   * The terminal record of a task this client submitted: from the recent results if it
   * already ended, else a wait on its notify (re-read now and then, as every wait).
   */
  own(id: string): Promise<TaskRecord> {
    const waiting = this.tasks.get(id);
    if (waiting !== undefined) return waiting.promise;
    const ended = this.recent.get(id);
    if (ended !== undefined) {
      this.recent.delete(id);
      return Promise.resolve(ended);
    }
    return this.waiter(this.tasks, id).promise;
  }

  /** Drop a task's result kept from before (it runs again: `troupe.retry`), so that a wait awaits its new end. */
  forget(id: string): void {
    this.recent.delete(id);
  }

  /** The task's terminal record, however and wherever it ends. */
  task(id: string): Promise<TaskRecord> {
    const own = this.tasks.get(id);
    if (own !== undefined) return own.promise;
    return this.follow(this.tasks, id, "task", TaskRecordSchema, (r) => this.settleTask(r), async () => (await this.taskStore.get(id))?.record, () =>
      new TaskNotFound({ id, message: `no task ${id}` }),
    );
  }

  /** The run's terminal record; `fresh` for a run this client is starting (it may not be stored yet). */
  run(id: string, fresh: boolean): Promise<WorkflowRecord> {
    const existing = this.runs.get(id);
    if (existing !== undefined) return existing.promise;
    const read = async () => (await this.workflowStore.read(id))?.record;
    return this.follow(this.runs, id, "workflow", WorkflowRecordSchema, (r) => this.settleRun(r), fresh ? undefined : read, () =>
      new WorkflowNotFound({ id, message: `no workflow run ${id}` }),
    );
  }

  /**
   * Wait on an actor this client did not start: hear its events, then read it once (an end
   * between the two is heard either way); `read` is skipped for one not stored yet.
   */
  private async follow<R>(
    map: Map<string, Waiter<R>>,
    id: string,
    kind: "task" | "workflow",
    schema: Schema.Decoder<R, never>,
    settle: (record: R) => void,
    read: (() => Promise<R | undefined>) | undefined,
    missing: () => unknown,
  ): Promise<R> {
    const waiter = this.waiter(map, id);
    // Only the events that end it: a run's progress events carry the whole run, and a
    // large run's would cost the waiter a copy per write for nothing.
    waiter.subs = [...ENDS].map((end) =>
      this.nats.nc.subscribe(eventSubject(kind, id, end), {
        callback: (_e, msg) => {
          const decoded = decodeWith(schema, msg.data, `${kind} record`);
          if (decoded.ok) settle(decoded.value);
        },
      }),
    );
    try {
      await this.nats.nc.flush();
    } catch (e) {
      this.end(map, id, (w) => w.reject(e));
      return waiter.promise;
    }
    if (read !== undefined) {
      const now = await read().catch((e: unknown) => {
        this.end(map, id, (w) => w.reject(e));
        return null;
      });
      if (now === undefined) this.end(map, id, (w) => w.reject(missing()));
      else if (now !== null) settle(now);
    }
    return waiter.promise;
  }

  /** End the wait for a run that was never started. */
  abandon(id: string, reason: unknown): void {
    this.end(this.runs, id, (w) => w.reject(reason));
  }

  /** End every wait: the client is closing. */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.notifySub?.unsubscribe();
    this.singleSub?.unsubscribe();
    this.recent.clear();
    for (const map of [this.tasks, this.runs] as const) {
      for (const id of [...map.keys()]) {
        this.end(map as Map<string, Waiter<unknown>>, id, (w) => w.reject(new NatsFailure({ message: `client closed while waiting for ${id}` })));
      }
    }
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
    for (const sub of waiter.subs ?? []) sub.unsubscribe();
    how(waiter);
  }

  /** A notify: the wait for it, or the recent results until someone asks. */
  private settleOwn(record: TaskRecord): void {
    if (!TerminalStatuses.has(record.status)) return;
    if (this.tasks.has(record.id)) return this.settleTask(record);
    this.recent.set(record.id, record);
    if (this.recent.size > RECENT_MAX) this.recent.delete(this.recent.keys().next().value!);
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
          const stored = await this.taskStore.get(id).catch(() => undefined);
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

  /** Notifications and events are plain publishes: after a reconnect, re-read everything waited on. */
  private async watchReconnects(): Promise<void> {
    for await (const status of this.nats.nc.status()) {
      if (status.type !== "reconnect") continue;
      for (const w of [...this.tasks.values(), ...this.runs.values()]) w.nextCheck = 0;
      void this.check();
    }
  }
}

/** `promise`, or `ResultTimeout` after `ms` (none when undefined); the timer never outlives the wait. */
export const withTimeout = async <T>(promise: Promise<T>, ms: number | undefined, id: string, what: string): Promise<T> => {
  if (ms === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ResultTimeout({ id, message: `${what} ${id} did not end within ${ms} ms` })), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
};
