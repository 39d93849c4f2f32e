/**
 * What the machines keep and the wire carries: the task record, the workflow record and the
 * tagged failure union, as Effect Schemas. Every read from NATS (KV entries, work messages,
 * events, step completions) is decoded with these; nothing from the wire is cast.
 *
 * Beside the machines because the machines' contexts are these records. Pure data: this
 * file imports only `effect`'s Schema.
 */
import { Schema } from "effect";

export const TaskStatuses = ["QUEUED", "RUNNING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED"] as const;
export const TaskStatus = Schema.Literals(TaskStatuses);
export type TaskStatus = typeof TaskStatus.Type;
export const TerminalStatuses: ReadonlySet<TaskStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/**
 * Why an attempt or a task failed. Each tag has one client error class of the same name
 * (`src/errors.ts`); `src/failure.ts` converts between the two.
 * - `InvalidInput`: the input does not match the task's schema.
 * - `Serialization`: the output does not match its schema, or is over the payload limit.
 * - `Execution`: the handler threw or failed.
 * - `Timeout`: the attempt ran past its deadline.
 * - `WorkerLost`: every worker that took the task died or lost its lease.
 * - `Cancelled`: cancelled by request.
 * - `OutOfMemory`: the executor running the handler went over its memory limit (isolated execution).
 * - `NatsFailure`: the task was recorded but could not be enqueued.
 * - `Internal`: a defect in Troupe itself or an unreadable record; never a RUNNING task left behind.
 */
const FailureTags = [
  "InvalidInput",
  "Serialization",
  "Execution",
  "Timeout",
  "WorkerLost",
  "Cancelled",
  "OutOfMemory",
  "NatsFailure",
  "Internal",
] as const;
export const FailureTag = Schema.Literals(FailureTags);
export type FailureTag = typeof FailureTag.Type;

export const TaskFailure = Schema.Struct({
  _tag: FailureTag,
  message: Schema.String,
  stack: Schema.optional(Schema.String),
  /** True while another attempt may follow; false on a terminal record. */
  retryable: Schema.optional(Schema.Boolean),
  /** `InvalidInput`: the failing field, when the schema names one. */
  path: Schema.optional(Schema.Array(Schema.Union([Schema.String, Schema.Number]))),
});
export type TaskFailure = typeof TaskFailure.Type;

/** What the `troupe-tasks` KV bucket holds under the task id (JSON), and what a work message carries. */
export const TaskRecord = Schema.Struct({
  id: Schema.String,
  task: Schema.String,
  queue: Schema.String,
  status: TaskStatus,
  attempt: Schema.Number,
  input: Schema.Unknown,
  output: Schema.optional(Schema.Unknown),
  error: Schema.optional(TaskFailure),
  createdAt: Schema.String,
  startedAt: Schema.optional(Schema.String),
  finishedAt: Schema.optional(Schema.String),
  /** When the next attempt starts: backoff and jitter included, the wait a NAK asks for. */
  retryAt: Schema.optional(Schema.String),
  workerId: Schema.optional(Schema.String),
  idempotencyKey: Schema.optional(Schema.String),
  /** Attempts that ended with their worker gone (killed, hung past its lease). */
  lostAttempts: Schema.optional(Schema.Number),
  /** Not before: a delayed task waits (a NAK with the rest of the delay) until then. */
  runAt: Schema.optional(Schema.String),
  /** Where the submitter hears the terminal record (`troupe.notify.<client>` or a step's subject). */
  notify: Schema.optional(Schema.String),
  /**
   * The stream sequence of the work message the current attempt came from: a delivery of
   * any other message for the task is a duplicate, not a sign that this attempt was lost.
   */
  message: Schema.optional(Schema.Number),
  /** 1 (first) to 5 (last); absent: 3, the default. */
  priority: Schema.optional(Schema.Number),
  /** The submit's key (a tenant, an account): its work has its own subject and consumer, served round robin. */
  key: Schema.optional(Schema.String),
  /** The latest `ctx.progress(data)` of the attempt that runs (or ran) the task, and when. */
  progress: Schema.optional(Schema.Struct({ data: Schema.Unknown, at: Schema.String })),
  /** How many times the task was run again after it had failed or been cancelled (`troupe.retry`). */
  retries: Schema.optional(Schema.Number),
});
export type TaskRecord = typeof TaskRecord.Type;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/**
 * `record` with `changes` (a key set to `undefined` is cleared). Every record made this way
 * has one shape, every key in one order: spreading a record and adding keys made V8 build a
 * new object shape per write, ten times slower than this on the hot path. `JSON` leaves out
 * the keys that are `undefined`, so the wire form is the same.
 */
export const recordWith = (record: TaskRecord, changes: Partial<TaskRecord>): TaskRecord => {
  const next: Mutable<TaskRecord> = {
    id: record.id,
    task: record.task,
    queue: record.queue,
    status: record.status,
    attempt: record.attempt,
    input: record.input,
    output: record.output,
    error: record.error,
    createdAt: record.createdAt,
    startedAt: record.startedAt,
    finishedAt: record.finishedAt,
    retryAt: record.retryAt,
    workerId: record.workerId,
    idempotencyKey: record.idempotencyKey,
    lostAttempts: record.lostAttempts,
    runAt: record.runAt,
    notify: record.notify,
    message: record.message,
    priority: record.priority,
    key: record.key,
    progress: record.progress,
    retries: record.retries,
  };
  return Object.assign(next, changes);
};

export const WorkflowStatuses = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"] as const;
export const WorkflowStatus = Schema.Literals(WorkflowStatuses);
export type WorkflowStatus = typeof WorkflowStatus.Type;
export const StepStatuses = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SKIPPED"] as const;
export const StepStatus = Schema.Literals(StepStatuses);
export type StepStatus = typeof StepStatus.Type;
export const FailurePolicy = Schema.Literals(["failFast", "continue"]);
export type FailurePolicy = typeof FailurePolicy.Type;

/** A step's or a run's failure, as the workflow records it. */
export const StepFailure = Schema.Struct({ _tag: Schema.String, message: Schema.String });
export type StepFailure = typeof StepFailure.Type;

/** A step as stored: the task to run (by name), its dependencies, its input template. */
export const StepDefinition = Schema.Struct({
  task: Schema.String,
  queue: Schema.String,
  after: Schema.Array(Schema.String),
  input: Schema.Unknown,
});
export type StepDefinition = typeof StepDefinition.Type;

export const StepState = Schema.Struct({
  status: StepStatus,
  taskId: Schema.optional(Schema.String),
  /** The resolved input, once the step is enqueued. */
  input: Schema.optional(Schema.Unknown),
  output: Schema.optional(Schema.Unknown),
  error: Schema.optional(StepFailure),
});
export type StepState = typeof StepState.Type;

/** What the `troupe-workflows` KV bucket holds under the run id (JSON). */
export const WorkflowRecord = Schema.Struct({
  id: Schema.String,
  workflow: Schema.String,
  status: WorkflowStatus,
  policy: FailurePolicy,
  input: Schema.Unknown,
  definition: Schema.Struct({ steps: Schema.Record(Schema.String, StepDefinition) }),
  steps: Schema.Record(Schema.String, StepState),
  /** The trace context of the run's start (`traceparent`, `tracestate`), which its steps' submits join. */
  trace: Schema.optional(Schema.Record(Schema.String, Schema.String)),
  createdAt: Schema.String,
  finishedAt: Schema.optional(Schema.String),
  error: Schema.optional(StepFailure),
});
export type WorkflowRecord = typeof WorkflowRecord.Type;

/** What `troupe-schedules` holds under a schedule id: what to create, when, and the last tick considered. */
export const ScheduleEntry = Schema.Struct({
  id: Schema.String,
  task: Schema.String,
  queue: Schema.String,
  /** The task's input as the wire carries it (checked against its schema when scheduled, if known). */
  input: Schema.Unknown,
  cron: Schema.optional(Schema.String),
  everyMs: Schema.optional(Schema.Number),
  timezone: Schema.optional(Schema.String),
  catchUp: Schema.Literals(["none", "one", "all"]),
  createdAt: Schema.String,
  /** The last tick the leader fired or skipped (epoch ms). */
  lastTick: Schema.optional(Schema.Number),
});
export type ScheduleEntry = typeof ScheduleEntry.Type;

/**
 * A TROUPE_INDEX entry: the task or run that ended (or, for a task, was scheduled to retry),
 * when (epoch ms), and for a task the revision of that write: an entry stands for the
 * record only while the record is still at that revision.
 */
export const IndexEntry = Schema.Struct({ id: Schema.String, at: Schema.Number, rev: Schema.optional(Schema.Number) });
export type IndexEntry = typeof IndexEntry.Type;

/** What `troupe-pauses` holds under `<queue>` or `<queue>.<type>`. */
export const PauseEntry = Schema.Struct({
  queue: Schema.String,
  /** The task type; a whole queue when absent. */
  task: Schema.optional(Schema.String),
  reason: Schema.optional(Schema.String),
  pausedAt: Schema.String,
});
export type PauseEntry = typeof PauseEntry.Type;

/** One executor of a worker's pool, as its registry entry and `troupe workers` show it. */
export const ExecutorInfo = Schema.Struct({
  id: Schema.String,
  pid: Schema.Number,
  /** The task it runs now, if any. */
  taskId: Schema.optional(Schema.String),
  ran: Schema.Number,
  /** Executors this slot had before this one: terminated past a deadline, out of memory, crashed. */
  replaced: Schema.Number,
});
export type ExecutorInfo = typeof ExecutorInfo.Type;

/** What the `troupe-workers` KV bucket holds under a worker id: its registry entry, refreshed by its heartbeat. */
export const WorkerInfo = Schema.Struct({
  id: Schema.String,
  state: Schema.String,
  hostname: Schema.String,
  pid: Schema.Number,
  tasks: Schema.Array(Schema.Struct({ name: Schema.String, queue: Schema.String })),
  concurrency: Schema.Number,
  running: Schema.Number,
  processed: Schema.Number,
  failed: Schema.Number,
  startedAt: Schema.String,
  heartbeatAt: Schema.String,
  /** `thread` or `process` when handlers run in executors; absent for in-process handlers. */
  isolation: Schema.optional(Schema.String),
  /** The pauses in effect for its tasks (`<queue>` or `<queue>.<type>`): it starts none of that work. */
  paused: Schema.optional(Schema.Array(Schema.String)),
  /** The executors of an isolated worker: each one's pid (a thread's is the worker's), the task it runs, its counters. */
  executors: Schema.optional(Schema.Array(ExecutorInfo)),
});
export type WorkerInfo = typeof WorkerInfo.Type;
