/**
 * Running a handler once: decode the input with the task's schema, run the handler (a
 * Promise or an Effect) on a fiber, encode the output, check its size. The outcome is
 * an `Execution`, never a failure: what went wrong is recorded through the one converter.
 * Workers and `troupe/testing`'s `runTask` both come through here.
 */
import { Cause, Effect, Exit } from "effect";
import type { Logger } from "pino";
import type { Context } from "@opentelemetry/api";
import type { Execution } from "../../machines/task.js";
import type { TaskFailure, TaskRecord } from "../../machines/records.js";
import { failureFrom } from "../failure.js";
import { Serialization } from "../errors.js";
import { encodeJson } from "../nats/codec.js";
import { within } from "../trace.js";
import { decodeInput, encodeOutput, type TaskDefinition, type TaskRunContext } from "../task.js";

export interface ExecutionContext {
  readonly attempt: number;
  /** The attempt's abort signal, made on first use. */
  readonly signal: () => AbortSignal;
  /** The attempt's logger, made on first use (most attempts never log). */
  readonly log: () => Logger;
  readonly heartbeat: (details?: unknown) => void;
  readonly progress: (data: unknown) => void;
  readonly now: () => number;
  /** Largest output the store takes, in bytes (`Number.MAX_SAFE_INTEGER`: any, not measured). */
  readonly maxPayload: number;
  /** The attempt's trace context: the handler is called in it (and so are the spans it starts). */
  readonly trace?: Context | undefined;
}

export const execute = (definition: TaskDefinition, record: TaskRecord, context: ExecutionContext): Effect.Effect<Execution> => {
  const failed = (error: TaskFailure): Execution => ({ ok: false, error, at: context.now() });
  const input = decodeInput(definition, record.input);
  if (Exit.isFailure(input)) return Effect.sync(() => failed(failureFrom(Cause.squash(input.cause))));
  const ctx: TaskRunContext = {
    taskId: record.id,
    attempt: context.attempt,
    // Made on first use: most handlers never look at their signal.
    get signal() {
      return context.signal();
    },
    get log() {
      return context.log();
    },
    heartbeat: context.heartbeat,
    progress: (data) => context.progress(checkedProgress(definition, data)),
  };
  /** The output, encoded and measured: the attempt's outcome. */
  const finished = (output: unknown): Execution => {
    const encoded = encodeOutput(definition, output);
    if (Exit.isFailure(encoded)) return failed(failureFrom(Cause.squash(encoded.cause)));
    // The record with its output must fit the server's payload limit. Only an object or a
    // long string can be near it; a number needs no measuring.
    const value = encoded.value;
    const large = context.maxPayload < Number.MAX_SAFE_INTEGER && (typeof value === "object" || (typeof value === "string" && value.length > 4_096));
    const size = large ? encodeJson({ ...record, status: "COMPLETED", output: value, finishedAt: new Date(0).toISOString() }).length : 0;
    if (size > context.maxPayload) {
      return failed({ _tag: "Serialization", message: `the record with its output is ${size} bytes, over the server's payload limit`, retryable: false });
    }
    return { ok: true, output: value, at: context.now() };
  };
  // A throw, a rejection or a failure of the handler's Effect is the attempt's outcome; an
  // interruption (deadline, cancellation, shutdown) stays one.
  return Effect.suspend(() => {
    const returned = within(context.trace, () => definition.handler(input.value, ctx));
    if (Effect.isEffect(returned)) return returned as Effect.Effect<unknown, unknown>;
    return isThenable(returned) ? Effect.promise(() => returned) : Effect.succeed(returned);
  }).pipe(
    // Encoding and measuring the output may throw too (a BigInt, a cycle): caught below.
    Effect.map(finished),
    Effect.catchCause((cause) => (Cause.hasInterruptsOnly(cause) ? Effect.interrupt : Effect.succeed(failed(failureFrom(Cause.squash(cause)))))),
  );
};

/** The most a progress report may take, encoded: it is written into the task record. */
const MAX_PROGRESS_BYTES = 64 * 1024;

/** Progress data as it will be recorded: JSON of at most 64 KiB, or a `Serialization` thrown in the handler. */
const checkedProgress = (definition: TaskDefinition, data: unknown): unknown => {
  let text: string | undefined;
  try {
    text = JSON.stringify(data);
  } catch (e) {
    throw new Serialization({ message: `progress of task "${definition.name}" is not JSON: ${(e as Error).message}` });
  }
  if (text === undefined) throw new Serialization({ message: `progress of task "${definition.name}" is not JSON (got ${typeof data})` });
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_PROGRESS_BYTES) {
    throw new Serialization({ message: `progress of task "${definition.name}" is ${bytes} bytes encoded, over ${MAX_PROGRESS_BYTES}` });
  }
  return JSON.parse(text) as unknown;
};

const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  value !== null && (typeof value === "object" || typeof value === "function") && typeof (value as { then?: unknown }).then === "function";
