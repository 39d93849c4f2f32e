/**
 * Hosting task actors: one live XState actor per attempt, picked up from the stored record
 * (`hydrate`), its effects provided as Effect programs that answer with events, its timers
 * on the fiber clock. The host runs an attempt to a settled or lost state and reports the
 * snapshot; what to do with the delivery is the caller's (a worker's, or `runTask`'s).
 *
 * Every write goes through the store, a compare-and-set on the last revision the actor
 * saw: the revision is the fencing token, so an attempt that lost its lease cannot
 * overwrite a newer one. No path leaves a task RUNNING because something threw: an actor
 * that fails is answered with a `FAIL` (`Internal`) from the last state it saved.
 */
import { Effect } from "effect";
import { createActor, type Actor, type AnyActorRef } from "xstate";
import type { Logger } from "pino";
import { hydrate, taskMachine, type TaskEvent, type TaskSnapshot } from "../../machines/task.js";
import type { TaskRecord } from "../../machines/records.js";
import type { Fenced, Internal, NatsFailure } from "../errors.js";
import type { Stored } from "../store/task-store.js";
import type { TaskDefinition } from "../task.js";
import { execute } from "./execute.js";
import type { FiberClock } from "./fiber-clock.js";

/** What an attempt writes through: the task store, or an in-memory one for `runTask`. */
export interface AttemptStore {
  save(record: TaskRecord, expected: number): Effect.Effect<number, Fenced | NatsFailure>;
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
}

/** The lease an attempt holds: extended on every heartbeat (`details` from `ctx.heartbeat(details)`). */
export interface Heartbeat {
  working(details?: unknown): void;
}

interface Session {
  readonly actor: Actor<typeof taskMachine>;
  readonly definition: TaskDefinition;
  readonly lease: Heartbeat;
  readonly log: () => Logger;
  readonly abort: AbortController;
  readonly settled: Promise<TaskSnapshot>;
  /** The last record this attempt wrote (or started from), and its revision. */
  saved: Stored;
  /** The handler is running (started, not returned). */
  running: boolean;
}

/** Events from effects that finish after the actor stopped are dropped. */
const answer = (self: AnyActorRef, event: TaskEvent) => {
  if (self.getSnapshot().status === "active") self.send(event);
};

/** A snapshot an attempt can stop at: saved to a final or waiting status, or lost. */
const isSettled = (s: TaskSnapshot) => s.hasTag("settled") || s.hasTag("lost") || s.status !== "active";

export class TaskHost {
  private readonly sessions = new Map<string, Session>();
  private readonly machine;

  constructor(private readonly deps: TaskHostDeps) {
    const session = (id: string) => this.sessions.get(id);
    const { store, clock } = deps;
    // Provided once per host: per-attempt effects find their session by task id, so the
    // actor's context stays plain data.
    this.machine = taskMachine.provide({
      actions: {
        persist: ({ context, self }) => {
          const s = session(context.record.id);
          const program = store.save(context.record, context.revision).pipe(
            Effect.match({
              onSuccess: (revision) => {
                if (s !== undefined) s.saved = { record: context.record, revision };
                answer(self, { type: "SAVED", revision });
              },
              onFailure: (e) => answer(self, { type: "FENCED", reason: e.message }),
            }),
          );
          Effect.runFork(program);
        },
        execute: ({ context, self }) => {
          const s = session(context.record.id);
          if (s === undefined) return;
          s.running = true;
          const program = execute(s.definition, context.record, {
            attempt: context.record.attempt,
            signal: s.abort.signal,
            log: s.log,
            heartbeat: (details) => s.lease.working(details),
            now: clock.now,
            maxPayload: deps.maxPayload,
          });
          // Interrupted through the session's signal: deadline, cancellation, shutdown.
          void Effect.runPromise(program, { signal: s.abort.signal }).then(
            (execution) => {
              s.running = false;
              answer(self, { type: "EXECUTED", execution });
            },
            () => (s.running = false),
          );
        },
        interrupt: ({ context }) => {
          const s = session(context.record.id);
          if (s?.running) s.abort.abort();
        },
        heartbeat: ({ context }) => session(context.record.id)?.lease.working(),
      },
      delays: {
        // The deadline is absolute; a rehydrated actor waits only for what is left.
        deadline: ({ context }) =>
          context.deadlineAt === undefined ? Number.POSITIVE_INFINITY : Math.max(0, context.deadlineAt - clock.now()),
      },
    });
  }

  /** Whether this host runs an attempt of the task now. */
  has(id: string): boolean {
    return this.sessions.has(id);
  }

  /**
   * Run one attempt from the stored record: START, then wait until it is settled (saved
   * COMPLETED, FAILED, CANCELLED or RETRYING) or lost. Never throws.
   */
  async attempt(stored: Stored, definition: TaskDefinition, lease: Heartbeat): Promise<TaskSnapshot> {
    const { deps } = this;
    const id = stored.record.id;
    const attempt = stored.record.attempt + 1;
    let child: Logger | undefined;
    const log = () => (child ??= deps.log.child({ taskId: id, task: definition.name, attempt }));
    if (stored.record.status === "RUNNING") {
      log().warn({ lostWorker: stored.record.workerId }, "previous attempt lost its worker (WorkerLost); running again");
    }
    const input = { ...stored, policy: definition.policy };
    const actor = createActor(this.machine, { snapshot: hydrate(input), input, clock: deps.clock });
    // The restored snapshot (a RETRYING one is tagged settled) is not an outcome: only what follows START is.
    let begun = false;
    const settled = new Promise<TaskSnapshot>((resolve) => {
      actor.subscribe({
        next: (snapshot) => {
          if (begun && isSettled(snapshot)) resolve(snapshot);
        },
        error: (err) => {
          log().error({ err }, "task actor failed");
          resolve(actor.getSnapshot());
        },
        complete: () => resolve(actor.getSnapshot()),
      });
    });
    const session: Session = { actor, definition, lease, log, abort: new AbortController(), settled, saved: stored, running: false };
    this.sessions.set(id, session);
    try {
      actor.start();
      begun = true;
      actor.send({ type: "START", workerId: deps.workerId, at: deps.clock.now(), random: deps.random() });
      const snapshot = await settled;
      return snapshot.status === "error" ? await this.failInternal(session, snapshot.error) : snapshot;
    } finally {
      if (session.running) session.abort.abort();
      actor.stop();
      this.sessions.delete(id);
    }
  }

  /**
   * An actor that threw (a bug, a record it cannot handle): the task is failed `Internal`
   * from the last revision this attempt saved, so it never stays RUNNING.
   */
  private async failInternal(session: Session, error: unknown): Promise<TaskSnapshot> {
    const message = `task actor failed: ${error instanceof Error ? error.message : String(error)}`;
    const { record, revision } = session.saved;
    const failed = await Effect.runPromise(
      Effect.result(
        this.deps.store.apply(record.id, { type: "FAIL", failure: { _tag: "Internal", message }, at: this.deps.clock.now() }, { from: session.saved }),
      ),
    );
    const after = failed._tag === "Success" ? failed.success : undefined;
    return after === undefined
      ? // Fenced: a newer write owns the task.
        taskMachine.resolveState({ value: "LOST", context: { record, revision, policy: session.definition.policy, random: 0.5, lostReason: message } })
      : hydrate({ ...after, policy: session.definition.policy });
  }

  /**
   * Cancel a task this host runs: its handler is interrupted and CANCELLED is written.
   * Resolves with the final record, or `undefined` when no attempt of it runs here.
   */
  async cancel(id: string, reason: string): Promise<TaskRecord | undefined> {
    const s = this.sessions.get(id);
    if (s === undefined || !s.actor.getSnapshot().matches("RUNNING")) return undefined;
    s.actor.send({ type: "CANCEL", reason, at: this.deps.clock.now() });
    const snapshot = await s.settled;
    return snapshot.hasTag("lost") ? undefined : snapshot.context.record;
  }

  /** Shutdown past its timeout: abort every running handler and stop its actor (the caller hands the deliveries back). */
  interruptAll(): void {
    for (const s of this.sessions.values()) {
      s.log().warn("interrupted by shutdown; left to another worker");
      if (s.running) s.abort.abort();
      s.actor.stop();
    }
  }
}
