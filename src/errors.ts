/**
 * Typed errors. Task failures carry a stable `_tag` (the category recorded on the task's
 * KV record); infrastructure errors are what the SDK's boundary raises.
 */
import { Data } from "effect";
import type { TaskErrorInfo } from "../machines/task.js";

/** Input that does not match the task's schema; raised by `submit`, nothing is published. */
export class InvalidInput extends Data.TaggedError("InvalidInput")<{
  readonly message: string;
  readonly task: string;
  /** The failing field, e.g. `["b"]`, when the schema names one. */
  readonly path: ReadonlyArray<PropertyKey>;
}> {}

/** A payload that could not be encoded or decoded (not JSON, wrong shape on the wire). */
export class Serialization extends Data.TaggedError("Serialization")<{ readonly message: string }> {}

/** The handler threw or failed; `stack` is the handler's. */
export class Execution extends Data.TaggedError("Execution")<{ readonly message: string; readonly remoteStack?: string }> {}

export class Timeout extends Data.TaggedError("Timeout")<{ readonly message: string }> {}

export class WorkerLost extends Data.TaggedError("WorkerLost")<{ readonly message: string }> {}

export class Cancelled extends Data.TaggedError("Cancelled")<{ readonly message: string }> {}

export class UnknownTask extends Data.TaggedError("UnknownTask")<{ readonly message: string }> {}

export class OutOfMemory extends Data.TaggedError("OutOfMemory")<{ readonly message: string }> {}

/** The union of what a task run can fail with, as the client sees it. */
export type TaskError = Serialization | Execution | Timeout | WorkerLost | Cancelled | UnknownTask | OutOfMemory;

/** Thrown by a handler to fail the task at once, without retries. */
export class NonRetryableError extends Error {
  override readonly name = "NonRetryableError";
}

/** A workflow run that ended FAILED or CANCELLED; `steps` holds each step's status and error. */
export class WorkflowFailed extends Data.TaggedError("WorkflowFailed")<{
  readonly message: string;
  readonly id: string;
  readonly status: string;
  readonly steps: Readonly<Record<string, { readonly status: string; readonly error?: { readonly _tag: string; readonly message: string } | undefined }>>;
}> {}

/** No workflow run under that id. */
export class WorkflowNotFound extends Data.TaggedError("WorkflowNotFound")<{ readonly message: string; readonly id: string }> {}

/** No task record under that id. */
export class TaskNotFound extends Data.TaggedError("TaskNotFound")<{ readonly message: string; readonly id: string }> {}

/** A write lost its compare-and-set: another attempt owns the task now. */
export class Fenced extends Data.TaggedError("Fenced")<{ readonly message: string; readonly id: string }> {}

/** NATS could not be reached or refused a request. */
export class NatsFailure extends Data.TaggedError("NatsFailure")<{ readonly message: string; readonly cause?: unknown }> {}

/** Names that collide in the NATS layout, or a layout created with other settings. */
export class TopologyConflict extends Data.TaggedError("TopologyConflict")<{ readonly message: string }> {}

/** `nats-server` is not installed where the embedded default looks for it. */
export class NatsServerNotFound extends Data.TaggedError("NatsServerNotFound")<{ readonly message: string }> {}

/** A definition (task or option) the SDK cannot accept. */
export class InvalidDefinition extends Data.TaggedError("InvalidDefinition")<{ readonly message: string }> {}

/** Rebuild the client's typed error from the record's error info. */
export const taskErrorFrom = (info: TaskErrorInfo): TaskError => {
  const message = info.message;
  switch (info._tag) {
    case "Serialization":
      return new Serialization({ message });
    case "Timeout":
      return new Timeout({ message });
    case "WorkerLost":
      return new WorkerLost({ message });
    case "Cancelled":
      return new Cancelled({ message });
    case "UnknownTask":
      return new UnknownTask({ message });
    case "OutOfMemory":
      return new OutOfMemory({ message });
    default:
      return new Execution(info.stack === undefined ? { message } : { message, remoteStack: info.stack });
  }
};
