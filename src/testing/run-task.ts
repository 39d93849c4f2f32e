/**
 * Run one task's handler alone, without NATS: the input is validated and the output
 * encoded with the task's schemas, as a worker would, and failures come back as the same
 * typed errors a client sees (`InvalidInput`, `Execution`, `Timeout`, `Serialization`).
 */
import { Cause, Effect, Exit } from "effect";
import { pino } from "pino";
import { Execution, Timeout } from "../errors.js";
import { decodeInput, encodeInput, encodeOutput, type TaskDefinition, type TaskRunContext } from "../task.js";
import type { InputOf, OutputOf } from "../task.js";

export interface RunTaskOptions {
  readonly taskId?: string;
  readonly attempt?: number;
  /** Abort from the test, to see how the handler reacts to interruption. */
  readonly signal?: AbortSignal;
  /** Called for each `ctx.heartbeat(details)`. */
  readonly onHeartbeat?: (details?: unknown) => void;
}

export const runTask = async <T extends TaskDefinition>(task: T, input: InputOf<T>, options: RunTaskOptions = {}): Promise<OutputOf<T>> => {
  const controller = new AbortController();
  options.signal?.addEventListener("abort", () => controller.abort(options.signal?.reason));
  const timer = task.policy.timeout === undefined ? undefined : setTimeout(() => controller.abort(new Timeout({ message: "timeout" })), task.policy.timeout);
  // Through the wire form and back, as between `submit` and a worker.
  const encoded = Effect.runSyncExit(encodeInput(task, input));
  if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
  const decoded = decodeInput(task, encoded.value);
  if (Exit.isFailure(decoded)) throw Cause.squash(decoded.cause);
  const ctx: TaskRunContext = {
    taskId: options.taskId ?? "test-task",
    attempt: options.attempt ?? 1,
    signal: controller.signal,
    log: pino({ level: "silent" }),
    heartbeat: (details) => options.onHeartbeat?.(details),
  };
  try {
    const returned = task.handler(decoded.value, ctx);
    const output = Effect.isEffect(returned)
      ? await Effect.runPromise(returned as Effect.Effect<unknown, unknown>, { signal: controller.signal })
      : await returned;
    if (controller.signal.reason instanceof Timeout) throw controller.signal.reason;
    const encoded = encodeOutput(task, output);
    if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
    return output as OutputOf<T>;
  } catch (e) {
    if (controller.signal.reason instanceof Timeout) throw controller.signal.reason;
    if (e instanceof Error && "_tag" in e) throw e;
    throw new Execution(e instanceof Error && e.stack !== undefined ? { message: e.message, remoteStack: e.stack } : { message: String(e) });
  } finally {
    clearTimeout(timer);
  }
};
