/**
 * `defineTask`: a typed task definition. The same object is given to `troupe.submit`
 * (to type and validate the input) and to `troupe.worker` (to run it). Every option is
 * checked here: a bad one is an `InvalidDefinition` naming it, never a surprise in a worker.
 */
import { Cause, Effect, Exit, Schema } from "effect";
import type { Logger } from "pino";
import { BackoffKinds, type RetryPolicy } from "../machines/backoff.js";
import type { TaskPolicy } from "../machines/task.js";
import { durationOption, type DurationInput } from "./duration.js";
import { InvalidDefinition, InvalidInput, Serialization } from "./errors.js";
import { DEFAULT_QUEUE, isValidQueueName, isValidTaskName } from "./nats/topology.js";

export type { DurationInput } from "./duration.js";

/** What a handler is given besides its input. */
export interface TaskRunContext {
  readonly taskId: string;
  /** 1 for the first attempt. */
  readonly attempt: number;
  /** Aborts when the attempt is interrupted: deadline, cancellation, shutdown. */
  readonly signal: AbortSignal;
  /** A pino child logger carrying the task id, name and attempt. */
  readonly log: Logger;
  /** Extends the lease now; for handlers that block the event loop between awaits. */
  readonly heartbeat: (details?: unknown) => void;
  /**
   * Report progress: the latest `data` (JSON) is kept in the task record, published on
   * `troupe.events.task.<id>.progress` and heard by `run.progress()`. Calls close together
   * are coalesced: the record keeps the last.
   */
  readonly progress: (data: unknown) => void;
}

export type HandlerResult<O> = O | Promise<O> | Effect.Effect<O, unknown, never>;

/** A task's retry policy as written in `defineTask`: delays are durations. */
export interface RetryOptions {
  /** Total attempts, the first included (default 1: no retry). */
  readonly attempts?: number;
  /** Default `exponential`. */
  readonly backoff?: RetryPolicy["backoff"];
  /** Base delay (default 1 second). */
  readonly delay?: DurationInput;
  /** Cap on the delay (default 1 minute). */
  readonly maxDelay?: DurationInput;
  /** 0..1, the share of the delay that is randomised (default 0.2). */
  readonly jitter?: number;
}

/** Limits on a task type, enforced across all workers (see docs/scheduling.md). */
export interface LimitOptions {
  /** At most this many attempts of the type run at once in the whole system. */
  readonly concurrency?: number;
  /** At most this many attempts per `submit` key at once; keys are served round robin. */
  readonly perKey?: number;
  /** At most `limit` starts in any window of `per`. */
  readonly rate?: { readonly limit: number; readonly per: DurationInput };
}

/** Limits as a definition holds them: durations in milliseconds. */
export interface TaskLimits {
  readonly concurrency?: number | undefined;
  readonly perKey?: number | undefined;
  readonly rate?: { readonly limit: number; readonly perMs: number } | undefined;
}

export interface TaskOptions<I, IE, O, OE> {
  /** Dotted names allowed: `math.add`. Segments: letters, digits, `_`, `-`. */
  readonly name: string;
  readonly input: Schema.Codec<I, IE>;
  readonly output: Schema.Codec<O, OE>;
  readonly handler: (input: I, ctx: TaskRunContext) => HandlerResult<O>;
  /** Work queue (a subject token); `default` unless set. */
  readonly queue?: string;
  /** How long one attempt may run. */
  readonly timeout?: DurationInput;
  /** How long a silent worker keeps the task before it is redelivered (default 30 s). */
  readonly heartbeatTimeout?: DurationInput;
  readonly retry?: RetryOptions;
  /**
   * Deliveries JetStream makes before giving up on a task whose workers keep dying
   * (default: retry attempts + 3). The task then ends FAILED with WorkerLost.
   */
  readonly maxDeliveries?: number;
  /** Limits across all workers: `concurrency`, `perKey` (with `submit(..., { key })`), `rate`. */
  readonly limits?: LimitOptions;
}

export interface TaskDefinition<I = any, O = any, IE = any, OE = any> {
  readonly _tag: "TaskDefinition";
  readonly name: string;
  readonly queue: string;
  readonly input: Schema.Codec<I, IE>;
  readonly output: Schema.Codec<O, OE>;
  readonly handler: (input: I, ctx: TaskRunContext) => HandlerResult<O>;
  readonly policy: TaskPolicy;
  readonly heartbeatTimeout: number;
  readonly maxDeliveries: number;
  /** Absent when the type has no limits: the path of unlimited tasks is untouched. */
  readonly limits?: TaskLimits | undefined;
}

export type InputOf<T> = T extends TaskDefinition<infer I, any, any, any> ? I : never;
export type OutputOf<T> = T extends TaskDefinition<any, infer O, any, any> ? O : never;

const DEFAULT_RETRY: RetryPolicy = { attempts: 1, backoff: "exponential", delay: 1_000, maxDelay: 60_000, jitter: 0.2 };
const DEFAULT_HEARTBEAT_TIMEOUT = 30_000;
/** Below this a lease cannot be kept: heartbeats go every third of it. */
const MIN_HEARTBEAT_TIMEOUT = 300;

const TASK_OPTIONS = new Set(["name", "input", "output", "handler", "queue", "timeout", "heartbeatTimeout", "retry", "maxDeliveries", "limits"]);
const LIMIT_OPTIONS = new Set(["concurrency", "perKey", "rate"]);
const RETRY_OPTIONS = new Set(["attempts", "backoff", "delay", "maxDelay", "jitter"]);

/** An Effect Schema (a struct, a class, a primitive): it has an AST. */
const isCodec = (value: unknown) => (typeof value === "object" || typeof value === "function") && value !== null && "ast" in value;

/** A value `defineTask` made (what a module of tasks or a protocol holds). */
export const isTaskDefinition = (value: unknown): value is TaskDefinition =>
  typeof value === "object" && value !== null && (value as { _tag?: unknown })._tag === "TaskDefinition";

export const defineTask = <I, IE, O, OE>(options: TaskOptions<I, IE, O, OE>): TaskDefinition<I, O, IE, OE> => {
  const name = String(options.name);
  const invalid = (message: string) => new InvalidDefinition({ message: `task "${name}": ${message}` });
  if (!isValidTaskName(name)) {
    throw new InvalidDefinition({ message: `task name "${name}": use dot-separated segments of letters, digits, "_" and "-"` });
  }
  for (const key of Object.keys(options)) {
    if (!TASK_OPTIONS.has(key)) throw invalid(`unknown option "${key}" (options: ${[...TASK_OPTIONS].join(", ")})`);
  }
  const queue = options.queue ?? DEFAULT_QUEUE;
  if (!isValidQueueName(queue)) throw invalid(`queue "${queue}": letters, digits, "_" and "-" only`);
  if (!isCodec(options.input)) throw invalid("input must be a Schema (e.g. Schema.Struct({ ... }))");
  if (!isCodec(options.output)) throw invalid("output must be a Schema (e.g. Schema.Number)");
  if (typeof options.handler !== "function") throw invalid("handler must be a function");

  const retry = retryPolicy(options.retry ?? {}, invalid);
  const timeout = options.timeout === undefined ? undefined : durationOption("timeout", options.timeout, invalid, 1);
  const heartbeatTimeout =
    options.heartbeatTimeout === undefined
      ? DEFAULT_HEARTBEAT_TIMEOUT
      : durationOption("heartbeatTimeout", options.heartbeatTimeout, invalid, MIN_HEARTBEAT_TIMEOUT);
  const maxDeliveries = options.maxDeliveries ?? retry.attempts + 3;
  if (!Number.isInteger(maxDeliveries) || maxDeliveries < retry.attempts) {
    throw invalid(`maxDeliveries must be an integer ≥ retry.attempts (${retry.attempts}), got ${String(options.maxDeliveries)}`);
  }
  const limits = options.limits === undefined ? undefined : limitsOf(options.limits, invalid);
  return {
    _tag: "TaskDefinition",
    ...(limits === undefined ? {} : { limits }),
    maxDeliveries,
    name,
    queue,
    input: options.input,
    output: options.output,
    handler: options.handler,
    policy: { timeout, retry, heartbeatMs: Math.max(100, Math.floor(heartbeatTimeout / 3)) },
    heartbeatTimeout,
  };
};

const limitsOf = (options: LimitOptions, invalid: (message: string) => InvalidDefinition): TaskLimits | undefined => {
  if (typeof options !== "object" || options === null) throw invalid("limits must be an object such as { concurrency: 10 }");
  for (const key of Object.keys(options)) {
    if (!LIMIT_OPTIONS.has(key)) throw invalid(`unknown option "limits.${key}" (limits: ${[...LIMIT_OPTIONS].join(", ")})`);
  }
  const count = (name: string, value: unknown) => {
    if (value === undefined) return undefined;
    if (!Number.isInteger(value) || (value as number) < 1) throw invalid(`limits.${name} must be an integer ≥ 1, got ${String(value)}`);
    return value as number;
  };
  const concurrency = count("concurrency", options.concurrency);
  const perKey = count("perKey", options.perKey);
  let rate: TaskLimits["rate"];
  if (options.rate !== undefined) {
    if (typeof options.rate !== "object" || options.rate === null) throw invalid('limits.rate must be { limit, per } such as { limit: 100, per: "1 second" }');
    const limit = count("rate.limit", options.rate.limit)!;
    if (limit === undefined) throw invalid("limits.rate.limit is required");
    rate = { limit, perMs: durationOption("limits.rate.per", options.rate.per, invalid, 1) };
  }
  if (concurrency === undefined && perKey === undefined && rate === undefined) return undefined;
  return { concurrency, perKey, rate };
};

const retryPolicy = (options: RetryOptions, invalid: (message: string) => InvalidDefinition): RetryPolicy => {
  if (typeof options !== "object" || options === null) throw invalid("retry must be an object such as { attempts: 3 }");
  for (const key of Object.keys(options)) {
    if (!RETRY_OPTIONS.has(key)) throw invalid(`unknown option "retry.${key}" (retry options: ${[...RETRY_OPTIONS].join(", ")})`);
  }
  const attempts = options.attempts ?? DEFAULT_RETRY.attempts;
  if (!Number.isInteger(attempts) || attempts < 1) throw invalid(`retry.attempts must be an integer ≥ 1, got ${String(options.attempts)}`);
  const backoff = options.backoff ?? DEFAULT_RETRY.backoff;
  if (!BackoffKinds.includes(backoff)) throw invalid(`retry.backoff must be one of ${BackoffKinds.join(", ")}, got ${String(backoff)}`);
  const delay = options.delay === undefined ? DEFAULT_RETRY.delay : durationOption("retry.delay", options.delay, invalid);
  const maxDelay = options.maxDelay === undefined ? Math.max(DEFAULT_RETRY.maxDelay, delay) : durationOption("retry.maxDelay", options.maxDelay, invalid);
  const jitter = options.jitter ?? DEFAULT_RETRY.jitter;
  if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 1)) throw invalid(`retry.jitter must be a number from 0 to 1, got ${String(jitter)}`);
  return { attempts, backoff, delay, maxDelay, jitter };
};

const untyped = new Map<string, TaskDefinition>();
/**
 * A task known only by its name (a workflow document's step, `troupe submit` without
 * `--module`): any input is sent, and the worker that runs it checks it.
 */
export const untypedTask = (name: string, queue: string = DEFAULT_QUEUE): TaskDefinition => {
  const key = `${queue}\u0000${name}`;
  let task = untyped.get(key);
  if (task === undefined) {
    task = defineTask({ name, queue, input: Schema.Unknown, output: Schema.Unknown, handler: () => undefined });
    untyped.set(key, task);
  }
  return task;
};

const pathOf = (error: unknown): ReadonlyArray<PropertyKey> => {
  // SchemaError.issue is a tree; the first Pointer names the field.
  let issue = (error as { issue?: unknown }).issue as { _tag?: string; path?: PropertyKey[]; issue?: unknown; issues?: unknown[] } | undefined;
  const path: PropertyKey[] = [];
  while (issue !== undefined) {
    if (issue._tag === "Pointer" && issue.path) path.push(...issue.path);
    issue = (issue.issue ?? issue.issues?.[0]) as typeof issue;
  }
  return path;
};

/** One line, as errors print in a log or a terminal. */
const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ");

const invalidInput = (task: string, error: unknown, kind = "task") =>
  new InvalidInput({
    task,
    path: pathOf(error),
    message: `input of ${kind} "${task}" is invalid: ${oneLine(error instanceof Error ? error.message : String(error))}`,
  });

/** Validate and encode a submit's input for the wire; `InvalidInput` names the field. */
export const encodeInput = <I>(
  task: { readonly name: string; readonly input: Schema.Codec<I, any> },
  input: I,
  kind: "task" | "workflow" = "task",
): Effect.Effect<unknown, InvalidInput> => {
  // Decode the encoded form back so that a value of the wrong shape is caught even
  // when the static type was bypassed.
  const encoded = Schema.encodeUnknownExit(task.input)(input);
  const checked = Exit.isSuccess(encoded) ? Schema.decodeUnknownExit(task.input)(encoded.value) : encoded;
  if (Exit.isSuccess(checked) && Exit.isSuccess(encoded)) return Effect.succeed(encoded.value);
  if (input === undefined) {
    // Left out (a JavaScript caller, a cast): say so, not what the schema expected.
    return Effect.fail(new InvalidInput({ task: task.name, path: [], message: `input of ${kind} "${task.name}" is missing: give one its input schema accepts` }));
  }
  return Effect.fail(invalidInput(task.name, Exit.isFailure(checked) ? Cause.squash(checked.cause) : undefined, kind));
};

/** Decode what came off the wire into the handler's input type. */
export const decodeInput = <I>(task: TaskDefinition<I>, wire: unknown): Exit.Exit<I, InvalidInput> =>
  Exit.mapError(Schema.decodeUnknownExit(task.input)(wire), (error) => invalidInput(task.name, error));

export const encodeOutput = <O>(task: TaskDefinition<any, O>, output: O): Exit.Exit<unknown, Serialization> =>
  Exit.mapError(Schema.encodeUnknownExit(task.output)(output), (error) =>
    new Serialization({ message: `output of task "${task.name}" does not match its schema: ${oneLine(error.message)}` }),
  );

export const decodeOutput = <O>(task: TaskDefinition<any, O>, wire: unknown): Exit.Exit<O, Serialization> =>
  Exit.mapError(Schema.decodeUnknownExit(task.output)(wire), (error) =>
    new Serialization({ message: `output of task "${task.name}" does not match its schema: ${oneLine(error.message)}` }),
  );
