/**
 * Hosting task actors. Each attempt is an actor of the task machine: events go in one at a
 * time through its mailbox, each is applied with the machine's own transition, and the
 * actions that transition names are carried out here: `persist` and `execute` as Effect
 * programs that answer with events, delayed events (heartbeat, deadline) on the fiber
 * clock, `interrupt` and `heartbeat` on the attempt's handler and lease. The machine is the
 * same definition the visualizer draws; hosting it this way, rather than as one XState
 * actor (and actor system) per attempt, halves XState's cost per task.
 *
 * Every write goes through the store, a compare-and-set on the last revision the actor
 * saw: the revision is the fencing token, so an attempt that lost its lease cannot
 * overwrite a newer one. No path leaves a task RUNNING because something threw: an attempt
 * whose transition throws is answered with a `FAIL` (`Internal`) from the last state it saved.
 */
import { Cause, Effect, Exit, type Fiber } from "effect";
import type { AnyEventObject } from "xstate";
import type { Logger } from "pino";
import type { Context } from "@opentelemetry/api";
import { hydrate, RESTING, taskMachine, type Execution, type TaskContext, type TaskEvent, type TaskSnapshot } from "../../machines/task.js";
import type { TaskRecord } from "../../machines/records.js";
import type { Fenced, Internal, NatsFailure } from "../errors.js";
import type { ExecutorPool } from "../pool/pool.js";
import type { Stored } from "../store/task-store.js";
import { decodeOutput, type TaskDefinition } from "../task.js";
import { failureFrom } from "../failure.js";
import { traceCarrier } from "../trace.js";
import { statePath } from "../nats/topology.js";
import { execute } from "./execute.js";
import type { FiberClock } from "./fiber-clock.js";
import { TransitionPlans, type PlannedAction } from "./transition-plans.js";

/** What an attempt writes through: the task store, or an in-memory one for `runTask`. */
export interface AttemptStore {
  /** Write a record (its bucket tells its watchers); `onRetry`: after each failed try of a write that will be tried again. */
  write(record: TaskRecord, expected: number, onRetry?: () => void): Effect.Effect<{ readonly revision: number; readonly payload: Uint8Array }, Fenced | NatsFailure>;
  /** Publish what only an attempt knows, no write behind it: that it lost the task (`lost`). */
  announceLoss(record: TaskRecord, reason: string, state: string): void;
  apply(id: string, event: TaskEvent, options: { readonly from: Stored }): Effect.Effect<Stored | undefined, Fenced | Internal | NatsFailure>;
}

export interface TaskHostDeps {
  readonly store: AttemptStore;
  readonly clock: FiberClock;
  readonly workerId: string;
  readonly log: Logger;
  /** Largest output the store takes, in bytes. */
  readonly maxPayload: number;
  /** The jitter draw of each attempt, in [0, 1). */
  readonly random: () => number;
  /** Executors to run handlers in (an isolated worker); in this process when absent. */
  readonly pool?: ExecutorPool | undefined;
  /**
   * Around each run of a handler: large payloads (the input's references resolved before,
   * a large output stored after; `withPayloads`). Runs as it is when absent.
   */
  readonly payloads?: (record: TaskRecord, run: (record: TaskRecord) => Effect.Effect<Execution>) => Effect.Effect<Execution>;
  /** The logger of one attempt (`ctx.log`, and the host's lines about it); a child of `log` when absent. */
  readonly taskLog?: (bindings: { readonly taskId: string; readonly task: string; readonly attempt: number }) => Logger;
}

/** The lease an attempt holds: extended on every heartbeat (`details` from `ctx.heartbeat(details)`). */
export interface Heartbeat {
  working(details?: unknown): void;
}

/** How an attempt ended: its last snapshot, and whether it was stopped (a shutdown) before settling. */
export interface AttemptOutcome {
  readonly snapshot: TaskSnapshot;
  readonly stopped: boolean;
}

/** An action a transition names, as the machine reports it. */
type NamedAction = PlannedAction & { readonly info: { readonly context: TaskContext } };

/** A snapshot an attempt can stop at: saved to a final or waiting status, or lost. */
const isSettled = (s: TaskSnapshot) => s.hasTag("settled") || s.hasTag("lost");

/** One attempt: the actor's state, its mailbox, its timers, its handler and lease. */
class Attempt {
  snapshot: TaskSnapshot;
  /** The last record this attempt wrote (or started from), and its revision. */
  saved: Stored;
  /** The handler's fiber while it runs (started, not returned). */
  handler: Fiber.Fiber<Execution> | undefined;
  /** The handler's `ctx.signal`, made the first time a handler asks for it. */
  private controller: AbortController | undefined;
  /** Set once the handler was interrupted: a signal first asked for after that is aborted already. */
  private interrupted = false;
  /**
   * Resolved once an interrupted handler has really stopped (an executor's handler may take
   * its grace period, or be terminated): writes after an interruption wait for it, and so
   * does the end of the attempt, so its slot is free only then.
   */
  stopping: Promise<void> | undefined;
  /** The end of this attempt's last write: writes go one after another. */
  private lastWrite: Promise<void> | undefined;
  /** The progress record waiting to be written (a newer report replaces it). */
  pendingProgress: TaskContext | undefined;
  readonly ended: Promise<AttemptOutcome>;
  private end!: (outcome: AttemptOutcome) => void;
  private readonly mailbox: TaskEvent[] = [];
  /** Resolved after each event is processed: for a caller waiting on the state (a cancel during the claim). */
  private stepped: { promise: Promise<void>; resolve: () => void } | undefined;
  private busy = false;
  private done = false;
  /** Delayed events by id, as the fiber clock holds them. */
  private readonly timers = new Map<string, unknown>();

  constructor(
    private readonly host: TaskHost,
    readonly definition: TaskDefinition,
    readonly lease: Heartbeat,
    readonly log: () => Logger,
    stored: Stored,
    /** The attempt's trace context (its span's), which the handler runs in. */
    readonly trace?: Context,
  ) {
    this.saved = stored;
    this.snapshot = hydrate({ ...stored, policy: definition.policy }, host.resolve);
    this.ended = new Promise((resolve) => (this.end = resolve));
  }

  /** Events go in one at a time; one sent while another is processed waits its turn. */
  send(event: TaskEvent): void {
    if (this.done) return;
    this.mailbox.push(event);
    if (this.busy) return;
    this.busy = true;
    try {
      for (let next = this.mailbox.shift(); next !== undefined && !this.done; next = this.mailbox.shift()) {
        const actions = this.host.step(this, next);
        for (const action of actions) this.host.carryOut(this, action);
        if (isSettled(this.snapshot)) this.finish(false);
        this.stepped?.resolve();
        this.stepped = undefined;
      }
    } catch (error) {
      this.log().error({ err: error }, "task actor failed");
      this.finish(false);
      // Failed `Internal` through the store; if even that cannot be written, the delivery is handed back.
      void this.host.failInternal(this, error).then(
        (snapshot) => this.end({ snapshot, stopped: false }),
        () => this.end({ snapshot: this.snapshot, stopped: true }),
      );
      return;
    } finally {
      this.busy = false;
    }
  }

  /** Resolves once the next event has been processed (or the attempt ended). */
  nextStep(): Promise<void> {
    if (this.done) return Promise.resolve();
    if (this.stepped === undefined) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.stepped = { promise, resolve };
    }
    return Promise.race([this.stepped.promise, this.ended.then(() => undefined)]);
  }

  get isDone(): boolean {
    return this.done;
  }

  /** A delayed event on the host's fiber clock; one of the same id is replaced. */
  schedule(id: string, event: AnyEventObject, delay: number): void {
    this.cancel(id);
    this.timers.set(id, this.host.clock.setTimeout(() => this.send(event as TaskEvent), delay));
  }

  cancel(id: string): void {
    const timer = this.timers.get(id);
    if (timer === undefined) return;
    this.timers.delete(id);
    this.host.clock.clearTimeout(timer);
  }

  get signal(): AbortSignal {
    const controller = (this.controller ??= new AbortController());
    if (this.interrupted && !controller.signal.aborted) controller.abort();
    return controller.signal;
  }

  /** Abort the running handler: its signal aborts and its fiber is interrupted. */
  interrupt(): void {
    const fiber = this.handler;
    if (fiber === undefined) return;
    this.handler = undefined;
    this.interrupted = true;
    this.controller?.abort();
    this.stopping = new Promise((resolve) => fiber.addObserver(() => resolve()));
    fiber.interruptUnsafe();
  }

  /**
   * A write of this attempt, after the ones before it and after an interrupted handler has
   * stopped; `run` is given the revision of this attempt's last write.
   */
  write<A, E>(run: (expected: number) => Effect.Effect<A, E>): Effect.Effect<A, E> {
    const before = this.lastWrite === undefined && this.stopping === undefined ? undefined : Promise.all([this.lastWrite, this.stopping]);
    const program = before === undefined ? Effect.suspend(() => run(this.saved.revision)) : Effect.promise(() => before).pipe(Effect.flatMap(() => run(this.saved.revision)));
    let done!: () => void;
    this.lastWrite = new Promise<void>((resolve) => (done = resolve));
    return Effect.ensuring(program, Effect.sync(() => done()));
  }

  /** No more events; timers cleared; the handler, if still running, aborted. */
  finish(stopped: boolean): void {
    if (this.done) return;
    this.done = true;
    for (const id of [...this.timers.keys()]) this.cancel(id);
    this.interrupt();
    if (!stopped && this.snapshot.status === "active" && !isSettled(this.snapshot)) return; // an error: ended by failInternal
    this.end({ snapshot: this.snapshot, stopped });
  }
}

export class TaskHost {
  private readonly attempts = new Map<string, Attempt>();
  /** The task machine's transitions, computed by XState once per path and replayed after. */
  private readonly plans: TransitionPlans<TaskSnapshot, TaskEvent>;
  readonly clock: FiberClock;

  constructor(private readonly deps: TaskHostDeps) {
    this.clock = deps.clock;
    const machine = taskMachine.provide({
      delays: {
        // The deadline is absolute; a rehydrated actor waits only for what is left.
        deadline: ({ context }) =>
          context.deadlineAt === undefined ? Number.POSITIVE_INFINITY : Math.max(0, context.deadlineAt - deps.clock.now()),
      },
    });
    this.plans = new TransitionPlans(machine, RESTING);
  }

  /** A snapshot of this host's machine. */
  readonly resolve = (value: unknown, context: TaskContext): TaskSnapshot => this.plans.resolve(value, context);

  /** The tasks whose attempts this host runs now. */
  runningIds(): string[] {
    return [...this.attempts.keys()];
  }

  /** Whether this host runs an attempt of the task now. */
  has(id: string): boolean {
    return this.attempts.has(id);
  }

  /**
   * Run one attempt from the stored record: START, then wait until it is settled (saved
   * COMPLETED, FAILED, CANCELLED or RETRYING), lost, or stopped by a shutdown. Never throws.
   */
  async attempt(stored: Stored, definition: TaskDefinition, lease: Heartbeat, message?: number, trace?: Context): Promise<AttemptOutcome> {
    const { deps } = this;
    const id = stored.record.id;
    // After a shutdown interrupted everything, a delivery that was still on its way in starts nothing.
    if (this.closed) return { snapshot: hydrate({ ...stored, policy: definition.policy }, this.resolve), stopped: true };
    let child: Logger | undefined;
    const bindings = { taskId: id, task: definition.name, attempt: stored.record.attempt + 1 };
    const log = () => (child ??= deps.taskLog?.(bindings) ?? deps.log.child(bindings));
    if (stored.record.status === "RUNNING") {
      // A redelivery: expected after a worker dies (maxDeliveries bounds it), so not a warning.
      log().info({ lostWorker: stored.record.workerId }, "previous attempt lost its worker (WorkerLost); running again");
    }
    const attempt = new Attempt(this, definition, lease, log, stored, trace);
    this.attempts.set(id, attempt);
    try {
      attempt.send({ type: "START", workerId: deps.workerId, at: deps.clock.now(), random: deps.random(), message });
      return await attempt.ended;
    } finally {
      attempt.finish(true);
      // The slot is free once the handler has really stopped (an executor's, within its grace period).
      await attempt.stopping;
      if (this.attempts.get(id) === attempt) this.attempts.delete(id);
    }
  }

  /** Apply one event to an attempt's state; the actions it names, to carry out. */
  step(attempt: Attempt, event: TaskEvent): NamedAction[] {
    const { snapshot, actions } = this.plans.transition(attempt.snapshot, event);
    attempt.snapshot = snapshot;
    return actions as NamedAction[];
  }

  /** Carry out one action a transition named. */
  carryOut(attempt: Attempt, action: NamedAction): void {
    const { context } = action.info;
    switch (action.type) {
      case "xstate.raise": {
        const { event, id, delay } = action.params as { event: AnyEventObject; id?: string; delay?: number };
        if (delay !== undefined) attempt.schedule(id ?? event.type, event, delay);
        return;
      }
      case "xstate.cancel":
        attempt.cancel((action.params as { sendId: string }).sendId);
        return;
      case "persist":
        return this.persist(attempt, context);
      case "persistProgress":
        return this.persistProgress(attempt, context);
      case "execute":
        return this.execute(attempt, context);
      case "interrupt":
        attempt.interrupt();
        return;
      case "heartbeat":
        attempt.lease.working();
        return;
    }
  }

  /** Write the record the actor arrived at; answer SAVED or FENCED. */
  private persist(attempt: Attempt, context: TaskContext): void {
    // While a write is retried (a reconnect), the lease is still extended: a terminal
    // write must not lose its delivery to another worker while it waits.
    const write = attempt.write((expected) => this.deps.store.write(context.record, expected, () => attempt.lease.working()));
    this.answer(attempt, write, ({ revision }) => {
      attempt.saved = { record: context.record, revision };
      attempt.send({ type: "SAVED", revision });
    });
  }

  /** Write the record with its latest progress; reports made while one waits are coalesced into it. */
  private persistProgress(attempt: Attempt, context: TaskContext): void {
    const queued = attempt.pendingProgress !== undefined;
    attempt.pendingProgress = context;
    if (queued) return;
    const write = attempt.write((expected) => {
      const latest = attempt.pendingProgress;
      attempt.pendingProgress = undefined;
      // The attempt moved on (its outcome is being written, or it ended): that write carries the progress.
      if (latest === undefined || attempt.isDone || !attempt.snapshot.matches({ RUNNING: "executing" })) return Effect.succeed(undefined);
      const record = latest.record;
      return Effect.map(this.deps.store.write(record, expected, () => attempt.lease.working()), ({ revision }) => ({ record, revision }));
    });
    this.answer(attempt, write, (written) => {
      if (written === undefined) return;
      attempt.saved = { record: written.record, revision: written.revision };
      attempt.send({ type: "PROGRESS_SAVED", revision: written.revision });
    });
  }

  /** Run a write; its success to `saved`, a lost compare-and-set (or a defect) as FENCED. */
  private answer<A>(attempt: Attempt, write: Effect.Effect<A, Fenced | NatsFailure>, saved: (value: A) => void): void {
    const fiber = Effect.runFork(write);
    fiber.addObserver((exit) => {
      if (Exit.isSuccess(exit)) return saved(exit.value);
      const error = Exit.findErrorOption(exit);
      if (error._tag === "Some") return this.lose(attempt, error.value.message);
      // A defect or an interruption: this attempt cannot know what was written, so it stops
      // owning the task; the delivery's settlement reads the record.
      const reason = `the write did not finish: ${String(Cause.squash(exit.cause))}`;
      attempt.log().error({ reason }, "task write failed unexpectedly");
      this.lose(attempt, reason);
    });
  }

  /** A write lost (another attempt owns the task): the actor goes LOST, and says so for the inspector. */
  private lose(attempt: Attempt, reason: string): void {
    attempt.send({ type: "FENCED", reason });
    this.deps.store.announceLoss(attempt.snapshot.context.record, reason, statePath(attempt.snapshot.value));
  }

  /** Progress a handler reported: an event of its attempt. */
  private progress(attempt: Attempt, data: unknown): void {
    attempt.send({ type: "PROGRESS", data, at: this.clock.now() });
  }

  /** Run the handler on a fiber (here, or on an executor of the pool), interrupted through the attempt's signal; answer EXECUTED. */
  private execute(attempt: Attempt, context: TaskContext): void {
    const { definition } = attempt;
    const pool = this.deps.pool;
    const run = (record: TaskRecord): Effect.Effect<Execution> =>
      pool === undefined
        ? execute(definition, record, {
            attempt: context.record.attempt,
            signal: () => attempt.signal,
            log: attempt.log,
            heartbeat: (details) => attempt.lease.working(details),
            progress: (data) => this.progress(attempt, data),
            now: this.clock.now,
            maxPayload: this.deps.maxPayload,
            trace: attempt.trace,
          })
        : Effect.map(
            pool.run(
              record,
              record.attempt,
              { heartbeat: (details) => attempt.lease.working(details), progress: (data) => this.progress(attempt, data) },
              traceCarrier(attempt.trace),
            ),
            // The executor encoded the output with the task's schema; it is checked here too.
            (execution): Execution => {
              if (!execution.ok || Exit.isSuccess(decodeOutput(definition, execution.output))) return execution;
              const message = `output of task "${definition.name}" from its executor does not match its schema`;
              return { ok: false, error: { _tag: "Serialization", message, retryable: false }, at: execution.at };
            },
          );
    const program = this.deps.payloads === undefined ? run(context.record) : this.deps.payloads(context.record, run);
    const fiber = Effect.runFork(program);
    attempt.handler = fiber;
    fiber.addObserver((exit) => {
      if (attempt.handler !== fiber) return; // interrupted by this host: no outcome
      attempt.handler = undefined;
      if (Exit.isSuccess(exit)) return attempt.send({ type: "EXECUTED", execution: exit.value });
      // The handler's Effect interrupted itself (or a defect escaped): a failed attempt,
      // never one left RUNNING.
      const error = Cause.hasInterruptsOnly(exit.cause)
        ? { _tag: "Execution" as const, message: "the handler was interrupted" }
        : failureFrom(Cause.squash(exit.cause));
      attempt.send({ type: "EXECUTED", execution: { ok: false, error, at: this.clock.now() } });
    });
  }

  /**
   * An attempt whose transition threw (a bug, a record it cannot handle): the task is failed
   * `Internal` from the last revision this attempt saved, so it never stays RUNNING.
   */
  async failInternal(attempt: Attempt, error: unknown): Promise<TaskSnapshot> {
    const message = `task actor failed: ${error instanceof Error ? error.message : String(error)}`;
    const { record, revision } = attempt.saved;
    const policy = attempt.definition.policy;
    const failed = await Effect.runPromise(
      Effect.result(
        this.deps.store.apply(record.id, { type: "FAIL", failure: { _tag: "Internal", message }, at: this.clock.now() }, { from: attempt.saved }),
      ),
    );
    const after = failed._tag === "Success" ? failed.success : undefined;
    return after === undefined
      ? // Fenced: a newer write owns the task.
        this.resolve("LOST", { record, revision, policy, random: 0.5, lostReason: message })
      : hydrate({ ...after, policy }, this.resolve);
  }

  /**
   * Cancel a task this host runs: its handler is interrupted and CANCELLED is written.
   * Resolves with the final record, or `undefined` when no attempt of it runs here.
   */
  async cancel(id: string, reason: string): Promise<TaskRecord | undefined> {
    const attempt = this.attempts.get(id);
    // A claim in flight answers first: the handler starts (or the attempt is lost) before the cancel.
    while (attempt !== undefined && !attempt.isDone && attempt.snapshot.matches({ RUNNING: "claiming" })) await attempt.nextStep();
    if (attempt === undefined || attempt.isDone || !attempt.snapshot.matches({ RUNNING: "executing" })) return undefined;
    attempt.send({ type: "CANCEL", reason, at: this.clock.now() });
    const { snapshot, stopped } = await attempt.ended;
    return stopped || snapshot.hasTag("lost") ? undefined : snapshot.context.record;
  }

  /** Set by `interruptAll`: no attempt starts after it. */
  private closed = false;

  /** Shutdown past its timeout: abort every running handler and stop its attempt (the caller hands the deliveries back); none starts after. */
  interruptAll(): void {
    this.closed = true;
    for (const attempt of this.attempts.values()) {
      attempt.log().warn("interrupted by shutdown; left to another worker");
      attempt.finish(true);
    }
  }
}
