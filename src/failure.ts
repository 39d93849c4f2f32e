/**
 * The one failure converter: what a handler threw becomes a recorded `TaskFailure`, and a
 * recorded failure becomes the client's typed error, with the same `_tag` end to end.
 */
import type { FailureTag, TaskFailure, TaskRecord } from "../machines/records.js";
import {
  Cancelled,
  Execution,
  Internal,
  InvalidInput,
  NatsFailure,
  NonRetryableError,
  OutOfMemory,
  Serialization,
  Timeout,
  WorkerLost,
  type TaskError,
} from "./errors.js";

/** Whether another attempt may follow a failure of this kind (the task's retry policy decides the rest). */
const retryableByTag: Readonly<Record<FailureTag, boolean>> = {
  InvalidInput: false,
  Serialization: false,
  Execution: true,
  Timeout: true,
  WorkerLost: true,
  Cancelled: false,
  OutOfMemory: true,
  NatsFailure: true,
  Internal: false,
};

const isFailureTag = (tag: unknown): tag is FailureTag => typeof tag === "string" && Object.hasOwn(retryableByTag, tag);

/** Failures are recorded with the task: a message or a stack is kept to a size a record can carry. */
const MAX_MESSAGE = 4_096;
const MAX_STACK = 16_384;
const cap = (text: string, max: number) => (text.length <= max ? text : `${text.slice(0, max)}… (${text.length - max} more characters)`);

const messageOf = (e: unknown): string => cap(rawMessage(e), MAX_MESSAGE);

const rawMessage = (e: unknown): string => {
  if (e instanceof Error) return e.message;
  if (typeof e === "string") return e;
  try {
    return JSON.stringify(e) ?? String(e);
  } catch {
    return String(e);
  }
};

/**
 * What a handler (or Troupe on its behalf) failed with, as recorded. Troupe's own task
 * errors keep their tag; `NonRetryableError` is an `Execution` that is not retried;
 * anything else is an `Execution` carrying the thrown message and stack.
 */
export const failureFrom = (e: unknown): TaskFailure => {
  const tag = (e as { _tag?: unknown } | null)?._tag;
  if (isFailureTag(tag) && tag !== "Execution") {
    return {
      _tag: tag,
      message: messageOf(e),
      retryable: retryableByTag[tag],
      ...(e instanceof InvalidInput ? { path: e.path.map((p) => (typeof p === "number" ? p : String(p))) } : {}),
    };
  }
  const stack = e instanceof Execution ? e.remoteStack : e instanceof Error ? e.stack : undefined;
  return {
    _tag: "Execution",
    message: messageOf(e),
    ...(stack === undefined ? {} : { stack: cap(stack, MAX_STACK) }),
    retryable: !(e instanceof NonRetryableError),
  };
};

/** The client's error for a recorded failure. */
export const errorFrom = (failure: TaskFailure, record?: Pick<TaskRecord, "task">): TaskError => {
  const { message } = failure;
  switch (failure._tag) {
    case "InvalidInput":
      return new InvalidInput({ message, task: record?.task ?? "", path: failure.path ?? [] });
    case "Serialization":
      return new Serialization({ message });
    case "Timeout":
      return new Timeout({ message });
    case "WorkerLost":
      return new WorkerLost({ message });
    case "Cancelled":
      return new Cancelled({ message });
    case "OutOfMemory":
      return new OutOfMemory({ message });
    case "NatsFailure":
      return new NatsFailure({ message });
    case "Internal":
      return new Internal({ message });
    case "Execution":
      return new Execution(failure.stack === undefined ? { message } : { message, remoteStack: failure.stack });
  }
};

/** The error of a record that did not complete (a FAILED or CANCELLED one). */
export const errorOfRecord = (record: TaskRecord): TaskError =>
  errorFrom(
    record.error ?? {
      _tag: record.status === "CANCELLED" ? "Cancelled" : "Internal",
      message: `task ${record.id} ended ${record.status} with no error recorded`,
    },
    record,
  );
