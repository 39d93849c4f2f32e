/** The handle `submit` returns: the task's id, its typed result, its state record. */
import { inspect, type InspectOptionsStylized } from "node:util";
import { Cause, Exit } from "effect";
import type { TaskRecord } from "../../machines/records.js";
import { InvalidOption, TaskNotFound } from "../errors.js";
import { durationOption, type DurationInput } from "../duration.js";
import { errorOfRecord } from "../failure.js";
import type { CancelResult } from "../store/cancel.js";
import { decodeOutput, type TaskDefinition } from "../task.js";
import { withTimeout } from "./results.js";
import { isPayloadRef } from "../store/payloads.js";
import { inspectHandle } from "../handle-inspect.js";

/** How long to wait at most; a wait past it rejects with `ResultTimeout` (the task goes on). */
export interface WaitOptions {
  readonly timeout?: DurationInput;
}

/** What a run handle asks of its client. */
export interface TaskRunClient {
  get(id: string): Promise<TaskRecord | undefined>;
  /** Stop a wait every asker gave up on. */
  releaseWait(id: string): void;
  cancel(id: string, reason?: string): Promise<CancelResult>;
  /** The task's `progress` events from now on (core NATS), until `close`. */
  progressEvents(id: string): ProgressEvents;
  /** A value with its large-payload references replaced by what they stand for. */
  resolvePayload(value: unknown): Promise<unknown>;
}

export interface ProgressEvents {
  /** The next record a `progress` event carried. */
  next(): Promise<TaskRecord>;
  close(): void;
}

/** A progress report: what the handler gave `ctx.progress`, and when. */
export interface TaskProgress {
  readonly data: unknown;
  readonly at: string;
}

/**
 * A wait for a terminal record, started on the first ask and shared by every ask. An ask
 * with a timeout that passes gives up (`ResultTimeout`); once every asker has given up, the
 * wait itself is released (nothing of it is kept) and the next ask starts another.
 */
export class SharedWait<R> {
  private settled: Promise<R> | undefined;
  private askers = 0;

  constructor(
    private readonly start: () => Promise<R>,
    private readonly release: () => void,
    private readonly id: string,
    private readonly what: string,
  ) {}

  ask(ms: number | undefined): Promise<R> {
    let settled = this.settled;
    if (settled === undefined) {
      settled = this.settled = this.start();
      settled.then(
        () => (this.askers = 0),
        () => (this.askers = 0),
      );
    }
    this.askers++;
    return withTimeout(settled, ms, this.id, this.what, () => {
      if (--this.askers > 0 || this.settled !== settled) return;
      this.settled = undefined;
      this.release();
    });
  }
}

/** A wait's timeout in milliseconds, checked. */
export const waitTimeout = (options: WaitOptions): number | undefined =>
  options.timeout === undefined ? undefined : durationOption("timeout", options.timeout, (message) => new InvalidOption({ message }));

export class TaskRun<O> {
  private readonly wait: SharedWait<TaskRecord>;

  constructor(
    private readonly client: TaskRunClient,
    readonly id: string,
    readonly task: TaskDefinition,
    /** Starts the wait for the terminal record: on the first ask, not at submit. */
    start: () => Promise<TaskRecord>,
  ) {
    this.wait = new SharedWait(start, () => client.releaseWait(id), id, "task");
  }

  /** `TaskRun { id: '…', task: 'noop', queue: 'default' }`: what `console.log(run)` prints. */
  [inspect.custom](depth: number, options: InspectOptionsStylized, inspectFn: typeof inspect): string {
    return inspectHandle("TaskRun", { id: this.id, task: this.task.name, queue: this.task.queue }, depth, options, inspectFn);
  }

  /**
   * The task's output, decoded with its schema; rejects with the typed error of a failed or
   * cancelled task (its recorded `_tag`: `Execution`, `Timeout`, `WorkerLost`, `Cancelled`,
   * ...), or `ResultTimeout` when `timeout` passes first.
   */
  async result(options: WaitOptions = {}): Promise<O> {
    const record = await this.settledRecord(options);
    if (record.status !== "COMPLETED") throw errorOfRecord(record);
    const output = isPayloadRef(record.output) ? await this.client.resolvePayload(record.output) : record.output;
    const decoded = decodeOutput<O>(this.task, output);
    if (Exit.isSuccess(decoded)) return decoded.value;
    throw Cause.squash(decoded.cause);
  }

  /** The terminal record, whatever the outcome; `ResultTimeout` when `timeout` passes first. */
  settledRecord(options: WaitOptions = {}): Promise<TaskRecord> {
    return this.wait.ask(waitTimeout(options));
  }

  /**
   * The task's progress as its handler reports it (`ctx.progress`): the latest report first,
   * if there is one, then each new one, ending when the task ends (with its last report).
   * Reports close together may be coalesced. `timeout` ends the wait with `ResultTimeout`.
   */
  async *progress(options: WaitOptions = {}): AsyncGenerator<TaskProgress> {
    const timeout = waitTimeout(options);
    // Listening first, then reading the record: no report falls between the two.
    const events = this.client.progressEvents(this.id);
    let last: TaskProgress | undefined;
    /** A report newer than the last one yielded (ISO times compare as strings). */
    const fresh = (record: TaskRecord | undefined) => {
      const p = record?.progress;
      if (p === undefined) return undefined;
      if (last !== undefined && (p.at < last.at || (p.at === last.at && JSON.stringify(p.data) === JSON.stringify(last.data)))) return undefined;
      last = p;
      return p;
    };
    try {
      const settled = this.settledRecord(timeout === undefined ? {} : { timeout });
      settled.catch(() => undefined);
      const current = fresh(await this.client.get(this.id));
      if (current !== undefined) yield current;
      const end = settled.then((record) => ({ end: record }));
      for (;;) {
        const next = await Promise.race([events.next().then((record) => ({ record })), end]);
        if ("end" in next) {
          const final = fresh(next.end);
          if (final !== undefined) yield final;
          return;
        }
        const update = fresh(next.record);
        if (update !== undefined) yield update;
      }
    } finally {
      events.close();
    }
  }

  /** Cancel this task (see `Troupe.cancel`). */
  cancel(reason?: string): Promise<CancelResult> {
    return this.client.cancel(this.id, reason);
  }

  /** The current state record. */
  async get(): Promise<TaskRecord> {
    const record = await this.client.get(this.id);
    if (record === undefined) throw new TaskNotFound({ id: this.id, message: `no task ${this.id}` });
    return record;
  }
}
