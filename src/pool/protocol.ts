/**
 * What a worker and its executors say to each other: one message at a time over a thread's
 * port or a child process's IPC channel (structured clone either way). The task actor stays
 * in the worker; only a handler's run crosses: its record in, its `Execution` out, and
 * while it runs its logs, heartbeats and progress.
 */
import type { Execution } from "../../machines/task.js";
import type { TaskRecord } from "../../machines/records.js";
import type { TraceCarrier } from "../trace.js";

/** What an executor is started with (a thread's `workerData`, a process's `TROUPE_EXECUTOR` variable, as JSON). */
export interface ExecutorInit {
  /** The tasks module, as a URL `import()` takes. */
  readonly module: string;
  /** The executor's name in logs and listings: `t1`, `p2`, ... */
  readonly executor: string;
  readonly workerId: string;
  /** The level of the handlers' `ctx.log`. */
  readonly logLevel: string;
  /** Largest output the store takes, in bytes. */
  readonly maxPayload: number;
}

export type ToExecutor =
  /** `trace`: the attempt's trace context as headers, for the handler to run in. */
  | { readonly t: "run"; readonly call: number; readonly record: TaskRecord; readonly attempt: number; readonly trace?: TraceCarrier | undefined }
  /** Abort the run: its signal aborts; answered `stopped` once the handler really ended. */
  | { readonly t: "abort"; readonly call: number };

export type FromExecutor =
  /** The module loaded; these are the tasks it exports. */
  | { readonly t: "ready"; readonly pid: number; readonly tasks: ReadonlyArray<string> }
  /** The module could not be loaded: the executor exits. */
  | { readonly t: "fatal"; readonly message: string }
  | { readonly t: "done"; readonly call: number; readonly execution: Execution }
  /** After an abort: the handler has ended (its outcome no longer counts). */
  | { readonly t: "stopped"; readonly call: number }
  /** One pino JSON line of the handler's `ctx.log`. */
  | { readonly t: "log"; readonly call: number; readonly line: string }
  | { readonly t: "heartbeat"; readonly call: number; readonly details?: unknown }
  | { readonly t: "progress"; readonly call: number; readonly data: unknown };
