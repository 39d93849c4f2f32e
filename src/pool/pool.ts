/**
 * A worker's pool of executors: `executors` worker threads or child processes, each loading
 * the tasks module once and running one handler at a time (`src/pool/executor.ts`).
 *
 * The worker's task actors stay where they are; `run` is the `execute` action's program
 * for an isolated worker. Interrupting it (a deadline, a cancel, a shutdown) aborts the
 * handler's signal and waits up to the grace period for the handler to end; past it the
 * executor is terminated (a thread's `terminate`, a process's SIGKILL) and a new one takes
 * its place. The interruption completes only once the handler has really stopped, so the
 * worker counts its slot free, and records the outcome, only then.
 *
 * An executor over `memoryLimitMb` (V8's `resourceLimits` for a thread,
 * `--max-old-space-size` for a process) dies; its attempt fails `OutOfMemory` and the
 * executor is replaced. One that dies for another reason fails its attempt `Execution`.
 */
import { fork, type ChildProcess } from "node:child_process";
import { Worker as Thread } from "node:worker_threads";
import { fileURLToPath } from "node:url";
import type { Readable } from "node:stream";
import { Effect } from "effect";
import type { Logger } from "pino";
import type { Execution } from "../../machines/task.js";
import type { ExecutorInfo, TaskFailure, TaskRecord } from "../../machines/records.js";
import { InvalidDefinition } from "../errors.js";
import { typeScriptFlags, typeScriptRuntime } from "../tasks-module.js";
import { handlerLogLevel } from "../log.js";
import type { TraceCarrier } from "../trace.js";
import type { ExecutorInit, FromExecutor, ToExecutor } from "./protocol.js";

export type Isolation = "thread" | "process";

export interface PoolOptions {
  /** The tasks module, as a URL. */
  readonly module: string;
  readonly isolation: Isolation;
  readonly executors: number;
  readonly memoryLimitMb?: number | undefined;
  /** How long an aborted handler has to end before its executor is terminated (ms). */
  readonly gracePeriod: number;
  readonly workerId: string;
  readonly log: Logger;
  readonly maxPayload: number;
  /** Every line a handler logs through `ctx.log`, with the task it runs. */
  readonly onLog: (taskId: string, line: string) => void;
  /** Where executors' own stdout and stderr lines go, prefixed `[t1] `; the process's streams by default. */
  readonly stdout?: (line: string) => void;
  readonly stderr?: (line: string) => void;
  /** An executor was replaced, or its replacement is ready: what `info()` shows changed (the registry entry is written again). */
  readonly onChange?: () => void;
}

/** What a run reports while it goes: its heartbeats and progress. */
export interface RunHooks {
  readonly heartbeat: (details?: unknown) => void;
  readonly progress: (data: unknown) => void;
}

/** One handler's run on an executor. */
interface Call {
  readonly id: number;
  readonly record: TaskRecord;
  readonly hooks: RunHooks;
  /** Settled with the handler's outcome (or the executor's death). */
  readonly done: (execution: Execution) => void;
  /** Resolved once the handler has stopped after an abort (or its executor is gone). */
  stopped: () => void;
  aborted: boolean;
}

/** The pause before starting again an executor that died before it was ready. */
const RESPAWN_PAUSE_MS = 1_000;

const here = import.meta.url;
/** Run from TypeScript sources (the tests): executors load through tsx, which is a dev dependency. */
const fromSource = here.endsWith(".ts");
const entry = new URL(fromSource ? "./executor.ts" : "./executor.js", here);
const isTypeScript = (url: string) => /\.[cm]?tsx?$/.test(new URL(url).pathname);

/** `import.meta.resolve` of a package, or nothing when it is not installed. */
const resolvable = (specifier: string): string | undefined => {
  try {
    return import.meta.resolve(specifier);
  } catch {
    return undefined;
  }
};

/** Flags of this process that an executor must not repeat (a debugger's port, a watcher, a script), the ones taking a value apart. */
const NOT_INHERITED = /^(--inspect|--debug|--watch|--test|--eval$|-e$|--print$|-p$|--input-type|--max-old-space-size)/;
const TAKES_VALUE = /^(--inspect-port|--debug-port|--watch-path|--test-[a-z-]+|--eval|-e|--print|-p|--input-type)$/;

/** This process's `node` flags that its executor processes start with too (its loaders, `--conditions`, ...), as `fork` would pass them. */
const inheritedFlags = (): string[] => {
  const kept: string[] = [];
  const flags = process.execArgv;
  for (let i = 0; i < flags.length; i++) {
    const flag = flags[i]!;
    if (!NOT_INHERITED.test(flag)) kept.push(flag);
    else if (TAKES_VALUE.test(flag)) i++;
  }
  return kept;
};

/** How executors start: a process's `node` flags, and for a thread that must load TypeScript, tsx's API. */
interface Launch {
  readonly execArgv: ReadonlyArray<string>;
  readonly tsxApi: string | undefined;
}

/**
 * Executors run the module the way this process does: a process starts with this process's
 * loaders (tsx's, when it runs under tsx); a thread, which Node's loader hooks do not reach,
 * imports the executor through tsx's API when the module is TypeScript. A TypeScript module
 * that no executor could load is an `InvalidDefinition` saying what to pass.
 */
const launch = (options: PoolOptions): Launch => {
  const memory = options.memoryLimitMb === undefined ? [] : [`--max-old-space-size=${options.memoryLimitMb}`];
  const inherited = inheritedFlags();
  if (!fromSource && !isTypeScript(options.module)) return { execArgv: [...inherited, ...memory], tsxApi: undefined };
  const cannot = (what: string) =>
    new InvalidDefinition({
      message: `worker: executors cannot load the TypeScript module ${options.module}: ${what}; or give the path of the compiled .js module`,
    });
  if (options.isolation === "thread") {
    const tsxApi = resolvable("tsx/esm/api");
    if (tsxApi !== undefined) return { execArgv: [], tsxApi };
    if ((process.features as { typescript?: unknown }).typescript) return { execArgv: [], tsxApi: undefined };
    throw cannot('a thread loads TypeScript through tsx: install it (`npm install --save-dev tsx`), or use isolation: "process"');
  }
  if (typeScriptFlags(inherited) || typeScriptRuntime()) return { execArgv: [...inherited, ...memory], tsxApi: undefined };
  const tsx = resolvable("tsx");
  if (tsx !== undefined) return { execArgv: [...inherited, "--import", tsx, ...memory], tsxApi: undefined };
  throw cannot("run the program under a TypeScript loader (`npx tsx main.ts`, or `node --import tsx main.js`) and its executors start with it");
};

/** One thread or process of the pool. */
class Executor {
  pid = 0;
  ran = 0;
  call: Call | undefined;
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;
  private readonly thread: Thread | undefined;
  private readonly child: ChildProcess | undefined;
  private outOfMemory = false;
  /** Loaded its module and said so. */
  started = false;
  private stderrTail = "";
  private gone = false;

  constructor(
    readonly name: string,
    private readonly pool: ExecutorPool,
    options: PoolOptions,
    start: Launch,
  ) {
    const init: ExecutorInit = {
      module: options.module,
      executor: name,
      workerId: options.workerId,
      logLevel: handlerLogLevel(options.log),
      maxPayload: options.maxPayload,
    };
    let ready!: () => void;
    let failed!: (error: Error) => void;
    this.ready = new Promise<void>((resolve, reject) => ((ready = resolve), (failed = reject)));
    this.ready.catch(() => undefined);
    const onMessage = (message: FromExecutor) => {
      if (message.t === "ready") {
        this.pid = message.pid;
        this.started = true;
        ready();
      } else if (message.t === "fatal") failed(new InvalidDefinition({ message: `executor ${name}: ${message.message}` }));
      else this.hear(message);
    };
    let exited!: () => void;
    this.exited = new Promise<void>((resolve) => (exited = resolve));
    const onExit = (code: number | null, signal: string | null) => {
      this.gone = true;
      failed(new InvalidDefinition({ message: `executor ${name} exited before it was ready (code ${code}, signal ${signal}): ${this.stderrTail.trim()}` }));
      this.lose(code, signal);
      exited();
    };
    const memory = options.memoryLimitMb;
    if (options.isolation === "thread") {
      const resourceLimits = memory === undefined ? undefined : { maxOldGenerationSizeMb: memory };
      const common = { workerData: init, stdout: true, stderr: true, ...(resourceLimits === undefined ? {} : { resourceLimits }) };
      // tsx's hooks do not reach a worker thread through execArgv: the thread imports the
      // entry through tsx's API instead.
      this.thread =
        start.tsxApi !== undefined
          ? new Thread(
              `import(${JSON.stringify(start.tsxApi)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry.href)}, ${JSON.stringify(entry.href)}));`,
              { ...common, eval: true },
            )
          : new Thread(entry, common);
      this.thread.on("message", onMessage);
      this.thread.on("error", (error: Error & { code?: string }) => {
        if (error.code === "ERR_WORKER_OUT_OF_MEMORY") this.outOfMemory = true;
        else this.stderrTail = `${this.stderrTail}${error.stack ?? error.message}\n`.slice(-4_096);
      });
      this.thread.on("exit", (code) => onExit(code, null));
      this.pipe(this.thread.stdout, options.stdout);
      this.pipe(this.thread.stderr, options.stderr, true);
    } else {
      this.child = fork(fileURLToPath(entry), [], {
        execArgv: [...start.execArgv],
        env: { ...process.env, TROUPE_EXECUTOR: JSON.stringify(init) },
        serialization: "advanced",
        stdio: ["ignore", "pipe", "pipe", "ipc"],
      });
      this.pid = this.child.pid ?? 0;
      this.child.on("message", onMessage as (m: unknown) => void);
      this.child.on("error", (error) => (this.stderrTail = `${this.stderrTail}${error.message}\n`.slice(-4_096)));
      this.child.on("exit", onExit);
      this.pipe(this.child.stdout, options.stdout);
      this.pipe(this.child.stderr, options.stderr, true);
    }
  }

  get alive(): boolean {
    return !this.gone;
  }

  send(message: ToExecutor): void {
    if (this.gone) return;
    if (this.thread !== undefined) this.thread.postMessage(message);
    else if (this.child?.connected) this.child.send(message);
  }

  /** Stop it now: resolves once the thread or process is gone. */
  terminate(): Promise<void> {
    if (!this.gone) {
      if (this.thread !== undefined) void this.thread.terminate();
      else this.child?.kill("SIGKILL");
    }
    return this.exited;
  }

  private hear(message: Exclude<FromExecutor, { t: "ready" | "fatal" }>): void {
    const call = this.call;
    if (call === undefined || message.call !== call.id) return;
    switch (message.t) {
      case "done":
        if (!call.aborted) call.done(message.execution);
        this.free(call);
        return;
      case "stopped":
        this.free(call);
        return;
      case "log":
        this.pool.options.onLog(call.record.id, message.line);
        return;
      case "heartbeat":
        if (!call.aborted) call.hooks.heartbeat(message.details);
        return;
      case "progress":
        if (!call.aborted) call.hooks.progress(message.data);
        return;
    }
  }

  private free(call: Call): void {
    this.call = undefined;
    call.stopped();
    this.pool.release(this);
  }

  /** The executor died: its run fails (out of memory, or a crash), and the pool replaces it. */
  private lose(code: number | null, signal: string | null): void {
    const call = this.call;
    this.call = undefined;
    const oom =
      this.outOfMemory ||
      /heap out of memory|Reached heap limit|ERR_WORKER_OUT_OF_MEMORY/.test(this.stderrTail) ||
      (signal === "SIGABRT" && this.pool.options.memoryLimitMb !== undefined);
    if (call !== undefined && !call.aborted) {
      const limit = this.pool.options.memoryLimitMb;
      const error: TaskFailure = oom
        ? { _tag: "OutOfMemory", message: `executor ${this.name} ran out of memory (limit ${limit ?? "none"} MB)`, retryable: true }
        : {
            _tag: "Execution",
            message: `executor ${this.name} exited while running the handler (code ${code}, signal ${signal})${this.stderrTail === "" ? "" : `: ${this.stderrTail.trim().slice(-1_000)}`}`,
            retryable: true,
          };
      call.done({ ok: false, error, at: Date.now() });
    }
    call?.stopped();
    this.pool.replace(this, oom);
  }

  /** An executor's own output, a line at a time, prefixed with its name. */
  private pipe(stream: Readable | null | undefined, sink: ((line: string) => void) | undefined, isStderr = false): void {
    if (stream === null || stream === undefined) return;
    const write = sink ?? ((line: string) => (isStderr ? process.stderr : process.stdout).write(`${line}\n`));
    let pending = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      if (isStderr) this.stderrTail = `${this.stderrTail}${chunk}`.slice(-4_096);
      pending += chunk;
      let newline = pending.indexOf("\n");
      while (newline >= 0) {
        write(`[${this.name}] ${pending.slice(0, newline)}`);
        pending = pending.slice(newline + 1);
        newline = pending.indexOf("\n");
      }
    });
    stream.on("end", () => {
      if (pending !== "") write(`[${this.name}] ${pending}`);
    });
  }
}

export class ExecutorPool {
  private readonly slots: Executor[] = [];
  private readonly idle: Executor[] = [];
  /** Runs waiting for an executor, first come first served; `fail` ends one that can get none. */
  private readonly waiting: Array<{ readonly take: (executor: Executor) => void; readonly fail: (execution: Execution) => void }> = [];
  private nextCall = 0;
  private stopping = false;
  /** Executors replaced so far, by slot. */
  private readonly replacements: number[];

  private readonly launch: Launch;

  private constructor(readonly options: PoolOptions) {
    this.launch = launch(options);
    this.replacements = Array.from({ length: options.executors }, () => 0);
  }

  /**
   * Start every executor and wait until each has loaded the module: a module they cannot load
   * rejects with an `InvalidDefinition`, and no executor is left running.
   */
  static async start(options: PoolOptions): Promise<ExecutorPool> {
    const pool = new ExecutorPool(options);
    try {
      for (let slot = 0; slot < options.executors; slot++) pool.slots.push(pool.spawn(slot));
      await Promise.all(pool.slots.map((e) => e.ready));
    } catch (e) {
      await pool.stop();
      throw e;
    }
    for (const executor of pool.slots) pool.release(executor);
    return pool;
  }

  private spawn(slot: number): Executor {
    const prefix = this.options.isolation === "thread" ? "t" : "p";
    return new Executor(`${prefix}${slot + 1}`, this, this.options, this.launch);
  }

  /**
   * The handler's run as the `execute` action's program: it waits for a free executor, runs
   * there, and succeeds with the `Execution`. Interrupted, it aborts the handler and completes
   * once the handler has stopped: within the grace period, or by terminating its executor.
   * `trace` (the attempt's trace context as headers) is the context the handler runs in there.
   */
  run(record: TaskRecord, attempt: number, hooks: RunHooks, trace?: TraceCarrier): Effect.Effect<Execution> {
    return Effect.callback<Execution>((resume) => {
      let call: Call | undefined;
      let executor: Executor | undefined;
      let cancelled = false;
      const stopped = new Promise<void>((resolve) => {
        call = {
          id: ++this.nextCall,
          record,
          hooks,
          done: (execution) => resume(Effect.succeed(execution)),
          stopped: resolve,
          aborted: false,
        };
      });
      const assigned = (e: Executor) => {
        if (cancelled || call === undefined) return this.release(e);
        executor = e;
        e.call = call;
        e.ran++;
        e.send({ t: "run", call: call.id, record, attempt, trace });
      };
      const waiter = { take: assigned, fail: (execution: Execution) => resume(Effect.succeed(execution)) };
      this.acquire(waiter);
      return Effect.suspend(() => {
        cancelled = true;
        if (call === undefined) return Effect.void;
        if (executor === undefined) {
          this.forget(waiter);
          return Effect.void;
        }
        call.aborted = true;
        executor.send({ t: "abort", call: call.id });
        const target = executor;
        return Effect.promise(() => stopped).pipe(
          Effect.timeoutOption(this.options.gracePeriod),
          Effect.flatMap((ended) => {
            if (ended._tag === "Some") return Effect.void;
            this.options.log.warn({ taskId: record.id, executor: target.name, pid: target.pid, graceMs: this.options.gracePeriod }, "handler did not stop within its grace period; executor terminated");
            return Effect.promise(() => target.terminate());
          }),
        );
      });
    });
  }

  private acquire(waiter: (typeof this.waiting)[number]): void {
    const executor = this.idle.shift();
    if (executor !== undefined) waiter.take(executor);
    else this.waiting.push(waiter);
  }

  private forget(waiter: (typeof this.waiting)[number]): void {
    const i = this.waiting.indexOf(waiter);
    if (i >= 0) this.waiting.splice(i, 1);
  }

  /** An executor free again: to the first run waiting, or idle. */
  release(executor: Executor): void {
    if (!executor.alive || this.stopping) return;
    const next = this.waiting.shift();
    if (next !== undefined) next.take(executor);
    else this.idle.push(executor);
  }

  /** A dead executor's slot gets a new one (not while the pool stops). */
  replace(executor: Executor, outOfMemory: boolean): void {
    const idle = this.idle.indexOf(executor);
    if (idle >= 0) this.idle.splice(idle, 1);
    const slot = this.slots.indexOf(executor);
    if (slot < 0 || this.stopping) return;
    this.replacements[slot] = (this.replacements[slot] ?? 0) + 1;
    const level = outOfMemory ? "warn" : "info";
    this.options.log[level]({ executor: executor.name, pid: executor.pid, outOfMemory }, "executor gone; starting another");
    const start = () => {
      if (this.stopping) return;
      const fresh = this.spawn(slot);
      this.slots[slot] = fresh;
      this.options.onChange?.();
      fresh.ready.then(
        () => {
          this.release(fresh);
          this.options.onChange?.();
        },
        (error: unknown) => {
          if (this.stopping) return;
          this.options.log.error({ err: error, executor: fresh.name }, "replacement executor failed to start; trying again");
          // No executor left to run on: the runs waiting fail (retryably) rather than wait with no end.
          if (this.slots.some((e) => e.alive && e.started)) return;
          const message = `no executor of the pool could start: ${error instanceof Error ? error.message : String(error)}`;
          for (const waiter of this.waiting.splice(0)) waiter.fail({ ok: false, error: { _tag: "Execution", message, retryable: true }, at: Date.now() });
        },
      );
    };
    // One that died before it was ready (its module fails to load now) is tried again after a pause, not in a loop.
    if (executor.started) start();
    else {
      setTimeout(start, RESPAWN_PAUSE_MS).unref();
      this.options.onChange?.();
    }
  }

  /** The executors, for the registry and `troupe workers`: a slot whose executor died and is not replaced yet shows pid 0. */
  info(): ExecutorInfo[] {
    return this.slots.map((e, slot) => ({
      id: e.name,
      pid: e.alive ? e.pid : 0,
      ...(e.call === undefined ? {} : { taskId: e.call.record.id }),
      ran: e.ran,
      replaced: this.replacements[slot] ?? 0,
    }));
  }

  /** Terminate every executor now (the worker stops it once no run is left, or gives up on them). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.idle.length = 0;
    this.waiting.length = 0;
    await Promise.all(this.slots.map((e) => e.terminate()));
  }
}
