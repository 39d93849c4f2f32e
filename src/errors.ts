/**
 * Typed errors, each a `Data.TaggedError` with a stable `_tag`. A task's failure carries
 * one of the tags of `TaskFailure` (machines/records.ts) and reaches `run.result()` as the
 * class of the same name (`src/failure.ts` converts); the others are what the SDK's
 * boundary raises.
 */
import { Data } from "effect";

/** Input that does not match the task's schema: raised by `submit` (nothing published), or recorded by the worker. */
export class InvalidInput extends Data.TaggedError("InvalidInput")<{
  readonly message: string;
  readonly task: string;
  /** The failing field, e.g. `["b"]`, when the schema names one. */
  readonly path: ReadonlyArray<PropertyKey>;
}> {}

/** A payload that could not be encoded or decoded: an output that does not match its schema, one over the payload limit. */
export class Serialization extends Data.TaggedError("Serialization")<{ readonly message: string }> {}

/** The handler threw or failed; `remoteStack` is the handler's stack. */
export class Execution extends Data.TaggedError("Execution")<{ readonly message: string; readonly remoteStack?: string }> {}

/** The attempt ran past its `timeout`. */
export class Timeout extends Data.TaggedError("Timeout")<{ readonly message: string }> {}

/** Every worker that took the task died or lost its lease, `maxDeliveries` times. */
export class WorkerLost extends Data.TaggedError("WorkerLost")<{ readonly message: string }> {}

/** The task was cancelled (`troupe.cancel`, `run.cancel`, a workflow failing fast). */
export class Cancelled extends Data.TaggedError("Cancelled")<{ readonly message: string }> {}

/** The executor running the handler went over the worker's `memoryLimitMb`; retried by the task's policy. */
export class OutOfMemory extends Data.TaggedError("OutOfMemory")<{ readonly message: string }> {}

/** NATS could not be reached or refused a request; on a task, it was recorded but could not be enqueued. */
export class NatsFailure extends Data.TaggedError("NatsFailure")<{ readonly message: string; readonly cause?: unknown }> {}

/** A defect in Troupe itself, or a stored record that cannot be read: the task ended FAILED rather than stuck. */
export class Internal extends Data.TaggedError("Internal")<{ readonly message: string }> {}

/** The union of what a task run can fail with, as the client sees it. */
export type TaskError = InvalidInput | Serialization | Execution | Timeout | WorkerLost | Cancelled | OutOfMemory | NatsFailure | Internal;

/** Thrown by a handler to fail the task at once, without retries. */
export class NonRetryableError extends Error {
  override readonly name = "NonRetryableError";
}

/** A wait (`result`, `settledRecord`) that reached its `timeout` before the task or run ended; the task goes on. */
export class ResultTimeout extends Data.TaggedError("ResultTimeout")<{ readonly message: string; readonly id: string }> {}

/** A workflow run that ended FAILED or CANCELLED; `steps` holds each step's status and error. */
export class WorkflowFailed extends Data.TaggedError("WorkflowFailed")<{
  readonly message: string;
  readonly id: string;
  readonly status: string;
  readonly steps: Readonly<Record<string, { readonly status: string; readonly error?: { readonly _tag: string; readonly message: string } | undefined }>>;
}> {}

/** No workflow run under that id. */
export class WorkflowNotFound extends Data.TaggedError("WorkflowNotFound")<{ readonly message: string; readonly id: string }> {}

/** No live worker under that id answered. */
export class WorkerNotFound extends Data.TaggedError("WorkerNotFound")<{ readonly message: string; readonly id: string }> {}

/** No task record under that id. */
export class TaskNotFound extends Data.TaggedError("TaskNotFound")<{ readonly message: string; readonly id: string }> {}

/** A definition (`defineTask`, `defineWorkflow`, a worker's options) the SDK cannot accept; the message names the option. */
export class InvalidDefinition extends Data.TaggedError("InvalidDefinition")<{
  readonly message: string;
  /** The workflow step at fault, when one is. */
  readonly step?: string;
  /** The `${...}` reference at fault, when one is. */
  readonly reference?: string;
}> {}

/** An option of a call (`submit`'s `delay`, a wait's `timeout`) the SDK cannot accept; the message names it. */
export class InvalidOption extends Data.TaggedError("InvalidOption")<{ readonly message: string }> {}

/** Names that collide in the NATS layout, or a layout created with other settings. */
export class TopologyConflict extends Data.TaggedError("TopologyConflict")<{ readonly message: string }> {}

/** `nats-server` is not installed where the embedded default looks for it. */
export class NatsServerNotFound extends Data.TaggedError("NatsServerNotFound")<{ readonly message: string }> {}

/** A write lost its compare-and-set: another attempt owns the task now. Internal to the store and its hosts. */
export class Fenced extends Data.TaggedError("Fenced")<{ readonly message: string; readonly id: string }> {}

/** The Troupe layout is not (all) there for a client that only opens it (layout "verify"): run `troupe setup`. */
export class LayoutMissing extends Data.TaggedError("LayoutMissing")<{ readonly message: string; readonly missing: ReadonlyArray<string> }> {}

/**
 * The layout on the server predates this version of Troupe (`outdated` says what): stop every
 * Troupe process and run `troupe setup --migrate`, which carries its records and queued work over.
 */
export class LayoutOutdated extends Data.TaggedError("LayoutOutdated")<{ readonly message: string; readonly outdated: ReadonlyArray<string> }> {}

/** The server refused a publish or a subscription this identity has no permission for; `subject` is what was refused. */
export class PermissionDenied extends Data.TaggedError("PermissionDenied")<{
  readonly message: string;
  readonly operation: "publish" | "subscription";
  readonly subject: string;
}> {}

/**
 * A store folder already served by a running local nats-server (`Troupe.dev`, `troupe dev`):
 * `url` and `pid` name it. `Troupe.dev` connects to it instead; `troupe dev` refuses.
 */
export class StoreLocked extends Data.TaggedError("StoreLocked")<{
  readonly message: string;
  readonly storeDir: string;
  readonly url: string;
  readonly pid: number;
}> {}

/**
 * `troupe auth init` on a folder that already holds some of the files it writes: a server may
 * still hold their passwords, so nothing is replaced without `--force`. `files` names them.
 */
export class AuthFilesExist extends Data.TaggedError("AuthFilesExist")<{ readonly message: string; readonly files: ReadonlyArray<string> }> {}
