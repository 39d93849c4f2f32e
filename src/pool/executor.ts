/**
 * An executor: the program a worker's pool runs in each worker thread or child process.
 * It loads the tasks module once, then runs one handler at a time as the worker asks,
 * through the same `execute` as an in-process worker (the input decoded and the output
 * encoded with the task's schemas here; the worker checks them again). Its handlers' logs,
 * heartbeats and progress go back to the worker as messages; each handler runs in its
 * attempt's trace context, which the worker sends with the run.
 */
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { Effect, Exit, type Fiber } from "effect";
import { pino, type Logger } from "pino";
import type { Execution } from "../../machines/task.js";
import { execute } from "../actor/execute.js";
import { loadTasks } from "../tasks-module.js";
import { traceContext } from "../trace.js";
import type { TaskDefinition } from "../task.js";
import type { ExecutorInit, FromExecutor, ToExecutor } from "./protocol.js";

const send: (message: FromExecutor) => void = isMainThread
  ? (message) => void process.send?.(message)
  : (message) => parentPort?.postMessage(message);

const onMessage = (listener: (message: ToExecutor) => void) => {
  if (isMainThread) process.on("message", listener as (m: unknown) => void);
  else parentPort?.on("message", listener);
};

const init: ExecutorInit = isMainThread ? (JSON.parse(process.env.TROUPE_EXECUTOR ?? "{}") as ExecutorInit) : (workerData as ExecutorInit);

interface Running {
  fiber: Fiber.Fiber<Execution> | undefined;
  readonly controller: AbortController;
  /** The handler's own promise, when it returned one: an abort waits for it to settle too. */
  settled: Promise<unknown> | undefined;
  aborted: boolean;
}

const runs = new Map<number, Running>();

const logger = (call: number, record: { id: string; task: string }, attempt: number): Logger =>
  pino(
    {
      name: "troupe",
      level: init.logLevel,
      base: { executor: init.executor, pid: process.pid, workerId: init.workerId, taskId: record.id, task: record.task, attempt },
    },
    { write: (line: string) => send({ t: "log", call, line }) },
  );

const run = (tasks: ReadonlyMap<string, TaskDefinition>, message: Extract<ToExecutor, { t: "run" }>) => {
  const { call, record, attempt } = message;
  const found = tasks.get(record.task);
  if (found === undefined) {
    const error = { _tag: "Internal" as const, message: `executor ${init.executor}: the module exports no task "${record.task}"`, retryable: false };
    return send({ t: "done", call, execution: { ok: false, error, at: Date.now() } });
  }
  const controller = new AbortController();
  let log: Logger | undefined;
  const current: Running = { fiber: undefined, controller, settled: undefined, aborted: false };
  // The handler's returned promise is kept: an aborted run is stopped only once it settles.
  const definition: TaskDefinition = {
    ...found,
    handler: (input, ctx) => {
      const returned = found.handler(input, ctx);
      if (returned !== null && typeof (returned as { then?: unknown }).then === "function") {
        current.settled = Promise.resolve(returned as PromiseLike<unknown>).catch(() => undefined);
      }
      return returned;
    },
  };
  const program = execute(definition, record, {
    attempt,
    signal: () => controller.signal,
    log: () => (log ??= logger(call, record, attempt)),
    heartbeat: (details) => send({ t: "heartbeat", call, details }),
    progress: (data) => send({ t: "progress", call, data }),
    now: Date.now,
    maxPayload: init.maxPayload,
    trace: traceContext(message.trace),
  });
  runs.set(call, current);
  const fiber = Effect.runFork(program);
  current.fiber = fiber;
  fiber.addObserver((exit) => {
    if (current.aborted) return;
    runs.delete(call);
    if (Exit.isSuccess(exit)) return send({ t: "done", call, execution: exit.value });
    const error = { _tag: "Execution" as const, message: "the handler was interrupted", retryable: true };
    send({ t: "done", call, execution: { ok: false, error, at: Date.now() } });
  });
};

const abort = (call: number) => {
  const running = runs.get(call);
  if (running === undefined || running.aborted) return;
  running.aborted = true;
  running.controller.abort();
  const fiber = running.fiber;
  fiber?.interruptUnsafe();
  const fiberDone = new Promise<void>((resolve) => (fiber === undefined ? resolve() : fiber.addObserver(() => resolve())));
  void Promise.all([fiberDone, running.settled]).then(() => {
    runs.delete(call);
    send({ t: "stopped", call });
  });
};

const main = async () => {
  let tasks: Map<string, TaskDefinition>;
  try {
    tasks = new Map((await loadTasks(init.module)).map((t) => [t.name, t]));
  } catch (e) {
    send({ t: "fatal", message: `cannot load ${init.module}: ${e instanceof Error ? e.message : String(e)}` });
    process.exitCode = 1;
    if (isMainThread) process.disconnect?.();
    return;
  }
  onMessage((message) => {
    if (message.t === "run") run(tasks, message);
    else if (message.t === "abort") abort(message.call);
  });
  // A process whose worker went away (its IPC channel closed) has nothing left to do.
  if (isMainThread) process.on("disconnect", () => process.exit(0));
  send({ t: "ready", pid: process.pid, tasks: [...tasks.keys()] });
};

void main();
