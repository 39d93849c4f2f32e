/**
 * `defineTask`: a typed task definition. The same object is given to `troupe.submit`
 * (to type and validate the input) and to `troupe.worker` (to run it).
 */
import { Duration, Effect, Exit, Schema } from "effect";
import type { Logger } from "pino";
import type { RetryPolicy, TaskPolicy } from "../machines/task.js";
import { InvalidDefinition, InvalidInput, Serialization } from "./errors.js";
import { DEFAULT_QUEUE, isValidQueueName, isValidTaskName } from "./nats/topology.js";

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
}

export type HandlerResult<O> = O | Promise<O> | Effect.Effect<O, unknown, never>;

/** A duration: milliseconds, or an Effect duration string such as `"30 seconds"`. */
export type DurationInput = number | Duration.Input;

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
  readonly retry?: Partial<RetryPolicy>;
  /**
   * Deliveries JetStream makes before giving up on a task whose workers keep dying
   * (default: retry attempts + 3). The task then ends FAILED with WorkerLost.
   */
  readonly maxDeliveries?: number;
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
}

export type InputOf<T> = T extends TaskDefinition<infer I, any, any, any> ? I : never;
export type OutputOf<T> = T extends TaskDefinition<any, infer O, any, any> ? O : never;

export const DEFAULT_RETRY: RetryPolicy = { attempts: 1, backoff: "exponential", delay: 1_000, maxDelay: 60_000, jitter: 0.2 };
export const DEFAULT_HEARTBEAT_TIMEOUT = 30_000;

export const toMillis = (d: DurationInput): number => (typeof d === "number" ? d : Duration.toMillis(Duration.fromInputUnsafe(d)));

export const defineTask = <I, IE, O, OE>(options: TaskOptions<I, IE, O, OE>): TaskDefinition<I, O, IE, OE> => {
  const queue = options.queue ?? DEFAULT_QUEUE;
  if (!isValidTaskName(options.name)) {
    throw new InvalidDefinition({
      message: `task name "${options.name}": use dot-separated segments of letters, digits, "_" and "-"`,
    });
  }
  if (!isValidQueueName(queue)) {
    throw new InvalidDefinition({ message: `queue "${queue}" of task "${options.name}": letters, digits, "_" and "-" only` });
  }
  const retry = { ...DEFAULT_RETRY, ...options.retry };
  if (!Number.isInteger(retry.attempts) || retry.attempts < 1) {
    throw new InvalidDefinition({ message: `task "${options.name}": retry.attempts must be an integer ≥ 1` });
  }
  const timeout = options.timeout === undefined ? undefined : toMillis(options.timeout);
  const heartbeatTimeout = options.heartbeatTimeout === undefined ? DEFAULT_HEARTBEAT_TIMEOUT : toMillis(options.heartbeatTimeout);
  for (const [what, ms] of [["timeout", timeout], ["heartbeatTimeout", heartbeatTimeout]] as const) {
    if (ms !== undefined && !(ms > 0 && Number.isFinite(ms))) {
      throw new InvalidDefinition({ message: `task "${options.name}": ${what} must be a positive duration` });
    }
  }
  const maxDeliveries = options.maxDeliveries ?? retry.attempts + 3;
  if (!Number.isInteger(maxDeliveries) || maxDeliveries < retry.attempts) {
    throw new InvalidDefinition({ message: `task "${options.name}": maxDeliveries must be an integer ≥ retry.attempts` });
  }
  return {
    _tag: "TaskDefinition",
    maxDeliveries,
    name: options.name,
    queue,
    input: options.input,
    output: options.output,
    handler: options.handler,
    policy: { timeout, retry, heartbeatMs: Math.max(100, Math.floor(heartbeatTimeout / 3)) },
    heartbeatTimeout,
  };
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

/** Validate and encode a submit's input for the wire; `InvalidInput` names the field. */
export const encodeInput = <I>(task: { readonly name: string; readonly input: Schema.Codec<I, any> }, input: I): Effect.Effect<unknown, InvalidInput> => {
  // Decode the encoded form back so that a value of the wrong shape is caught even
  // when the static type was bypassed.
  const encoded = Schema.encodeUnknownExit(task.input)(input);
  const checked = Exit.isSuccess(encoded) ? Schema.decodeUnknownExit(task.input)(encoded.value) : encoded;
  if (Exit.isSuccess(checked) && Exit.isSuccess(encoded)) return Effect.succeed(encoded.value);
  const error = Exit.isFailure(checked) ? squash(checked) : undefined;
  return Effect.fail(
    new InvalidInput({
      task: task.name,
      path: pathOf(error),
      message: `input of task "${task.name}" is invalid: ${error instanceof Error ? error.message : String(error)}`,
    }),
  );
};

/** Decode what came off the wire into the handler's input type. */
export const decodeInput = <I>(task: TaskDefinition<I>, wire: unknown): Exit.Exit<I, InvalidInput> =>
  Exit.mapError(Schema.decodeUnknownExit(task.input)(wire), (error) =>
    new InvalidInput({ task: task.name, path: pathOf(error), message: `input of task "${task.name}" is invalid: ${error.message}` }),
  );

export const encodeOutput = <O>(task: TaskDefinition<any, O>, output: O): Exit.Exit<unknown, Serialization> =>
  Exit.mapError(Schema.encodeUnknownExit(task.output)(output), (error) =>
    new Serialization({ message: `output of task "${task.name}" does not match its schema: ${error.message}` }),
  );

export const decodeOutput = <O>(task: TaskDefinition<any, O>, wire: unknown): Exit.Exit<O, Serialization> =>
  Exit.mapError(Schema.decodeUnknownExit(task.output)(wire), (error) =>
    new Serialization({ message: `output of task "${task.name}" does not match its schema: ${error.message}` }),
  );

const squash = (exit: Exit.Exit<unknown, unknown>): unknown => {
  if (Exit.isSuccess(exit)) return undefined;
  const reason = (exit.cause as unknown as { reasons: Array<{ error?: unknown; defect?: unknown }> }).reasons[0];
  return reason?.error ?? reason?.defect;
};
