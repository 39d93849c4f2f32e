/**
 * The task actor: `QUEUED → RUNNING (claiming → executing → failing) → RETRYING |
 * COMPLETED | FAILED | CANCELLED`, plus `LOST` when a write is fenced.
 *
 * Pure: no I/O, no clock reads, no randomness. Time and the jitter draw come in on events.
 * Two hosts run this one definition:
 * - a worker, holding the task's delivery (its lease), runs it as a live actor and carries
 *   out the actions its transitions name, `persist`, `execute`, `interrupt` and
 *   `heartbeat`, as Effect programs that answer with events (`SAVED`, `FENCED`, `EXECUTED`);
 * - the task store applies one event at a time to a stored record (a cancel, a give-up, a
 *   failed enqueue) and writes the result itself.
 * Both start from `hydrate(record)`, the state the record's status stands for, and take the
 * machine's transitions through transition plans (`src/actor/transition-plans.ts`), which
 * need every guard and assign named here. The same definition is what the visualizer draws.
 */
import { assign, cancel, raise, setup, type SnapshotFrom } from "xstate";
import { retryWait, type RetryPolicy } from "./backoff.js";
import { recordWith, type TaskFailure, type TaskRecord, type TaskStatus } from "./records.js";

export { TaskStatuses, TerminalStatuses, type TaskFailure, type TaskRecord, type TaskStatus } from "./records.js";
export type { RetryPolicy } from "./backoff.js";

export interface TaskPolicy {
  /** How long one attempt may run, in milliseconds; none when undefined. */
  readonly timeout?: number | undefined;
  readonly retry: RetryPolicy;
  /** Milliseconds between two lease extensions while the handler runs. */
  readonly heartbeatMs: number;
}

export interface TaskContext {
  readonly record: TaskRecord;
  /** KV revision of `record`: the fencing token every write compares against. */
  readonly revision: number;
  readonly policy: TaskPolicy;
  /** Absolute end of the current attempt (epoch ms), so a rehydrated actor waits only for what is left. */
  readonly deadlineAt?: number | undefined;
  /** This attempt's jitter draw, in [0, 1). */
  readonly random: number;
  /** Why this attempt stopped owning the task (lost its lease, or found it already settled). */
  readonly lostReason?: string | undefined;
}

export interface TaskInput {
  readonly record: TaskRecord;
  readonly revision: number;
  readonly policy: TaskPolicy;
}

/** The outcome of running the handler once; the host never rejects, it reports. */
export type Execution =
  | { readonly ok: true; readonly output: unknown; readonly at: number }
  | { readonly ok: false; readonly error: TaskFailure; readonly at: number };

export type TaskEvent =
  /** A worker holds the delivery: a new attempt. From RUNNING it means the last worker vanished. */
  | {
      readonly type: "START";
      readonly workerId: string;
      readonly at: number;
      readonly random?: number;
      /** The stream sequence of the work message this attempt came from. */
      readonly message?: number;
    }
  | { readonly type: "CANCEL"; readonly reason: string; readonly at: number }
  /** A failure imposed from outside the attempt: deliveries exhausted, enqueue failed, a defect. */
  | { readonly type: "FAIL"; readonly failure: TaskFailure; readonly at: number }
  /** The host's answer to `persist`: the write won, here is the new revision. */
  | { readonly type: "SAVED"; readonly revision: number }
  /** The host's answer to `persist`: the write lost its compare-and-set. */
  | { readonly type: "FENCED"; readonly reason: string }
  /** The host's answer to `execute`. */
  | { readonly type: "EXECUTED"; readonly execution: Execution }
  /** Extend the lease (raised on the `heartbeat` delay while RUNNING). */
  | { readonly type: "HEARTBEAT" }
  /** The handler reported progress (`ctx.progress(data)`): kept in the record, written while it runs. */
  | { readonly type: "PROGRESS"; readonly data: unknown; readonly at: number }
  /** The host's answer to `persistProgress`: the record with its progress is written at this revision. */
  | { readonly type: "PROGRESS_SAVED"; readonly revision: number };

/** An ISO time; the last one is kept, since many transitions share a millisecond under load. */
let lastIso: { ms: number; text: string } = { ms: Number.NaN, text: "" };
const iso = (ms: number): string => {
  if (ms !== lastIso.ms) lastIso = { ms, text: new Date(ms).toISOString() };
  return lastIso.text;
};

/** The event a write of this status publishes on `troupe.events.task.<id>.<event>`. */
export const eventOf = (status: TaskStatus): string =>
  status === "RUNNING" ? "started" : status.toLowerCase();

/** The state a stored record stands for: where a worker or the store picks the actor up. */
export const stateOf = (status: TaskStatus) => {
  switch (status) {
    case "QUEUED":
      return "QUEUED" as const;
    case "RUNNING":
      return { RUNNING: "executing" } as const;
    case "RETRYING":
      return { RETRYING: "waiting" } as const;
    default:
      return { [status]: "saved" } as Record<typeof status, "saved">;
  }
};

/** The write of a status (compare-and-set) that comes before anything else: SAVED goes on, FENCED is LOST. */
const saving = (event: string, target: string) => ({
  entry: { type: "persist" as const, params: { event } },
  on: {
    SAVED: { target, actions: "adoptRevision" as const },
    FENCED: { target: "#task.LOST" as const, actions: "recordLoss" as const },
  },
});

/** A final status: saved, then the lease is settled. */
const persisted = (event: string) => ({
  initial: "saving" as const,
  states: {
    saving: saving(event, "saved"),
    saved: { type: "final" as const, tags: ["settled" as const] },
  },
});

/** What every state that waits for a worker (QUEUED, RETRYING, a RUNNING whose worker vanished) accepts. */
const waiting = {
  START: { target: "#task.RUNNING", reenter: true, actions: "begin" },
  CANCEL: { target: "#task.CANCELLED", actions: "markCancelled" },
  FAIL: { target: "#task.FAILED", actions: "markFailed" },
} as const;

export const taskMachine = setup({
  types: {
    context: {} as TaskContext,
    input: {} as TaskInput,
    events: {} as TaskEvent,
    tags: {} as "settled" | "lost",
  },
  actions: {
    /** Host: write `context.record` against `context.revision`, publish the event, answer SAVED or FENCED. */
    persist: (_, _params: { event: string }) => {},
    /** Host: run the handler for `context.record`, answer EXECUTED. */
    execute: () => {},
    /** Host: abort the running handler (deadline, cancellation). */
    interrupt: () => {},
    /**
     * Host: write the record with its latest progress (publishing `progress`), after any
     * write of this attempt in flight and before any that follows; answer PROGRESS_SAVED or
     * FENCED. Progress reported while one is written is coalesced into the next write.
     */
    persistProgress: () => {},
    /** Host: extend the lease (a JetStream in-progress ack). */
    heartbeat: () => {},
    scheduleHeartbeat: raise({ type: "HEARTBEAT" }, { delay: "heartbeat", id: "heartbeat" }),
    stopHeartbeat: cancel("heartbeat"),
    begin: assign(({ context, event }) => {
      if (event.type !== "START") return {};
      return {
        record: recordWith(context.record, {
          status: "RUNNING",
          attempt: context.record.attempt + 1,
          workerId: event.workerId,
          message: event.message,
          startedAt: iso(event.at),
          finishedAt: undefined,
          error: undefined,
          retryAt: undefined,
          progress: undefined,
          // Still RUNNING when a worker starts it again: the attempt before lost its worker.
          lostAttempts: (context.record.lostAttempts ?? 0) + (context.record.status === "RUNNING" ? 1 : 0),
        }),
        deadlineAt: context.policy.timeout === undefined ? undefined : event.at + context.policy.timeout,
        random: event.random ?? 0.5,
      };
    }),
    adoptRevision: assign(({ event }) => (event.type === "SAVED" || event.type === "PROGRESS_SAVED" ? { revision: event.revision } : {})),
    recordProgress: assign(({ context, event }) =>
      event.type === "PROGRESS" ? { record: recordWith(context.record, { progress: { data: event.data, at: iso(event.at) } }) } : {},
    ),
    recordLoss: assign(({ event }) => (event.type === "FENCED" ? { lostReason: event.reason } : {})),
    markCancelled: assign(({ context, event }) =>
      event.type !== "CANCEL"
        ? {}
        : {
            record: recordWith(context.record, {
              status: "CANCELLED",
              error: { _tag: "Cancelled", message: event.reason, retryable: false },
              finishedAt: iso(event.at),
            }),
          },
    ),
    markFailed: assign(({ context, event }) =>
      event.type !== "FAIL"
        ? {}
        : { record: recordWith(context.record, { status: "FAILED", error: { ...event.failure, retryable: false }, finishedAt: iso(event.at) }) },
    ),
    /** The handler returned: the output recorded. */
    complete: assign(({ context, event }) =>
      event.type === "EXECUTED" && event.execution.ok
        ? { record: recordWith(context.record, { status: "COMPLETED", output: event.execution.output, finishedAt: iso(event.execution.at) }) }
        : {},
    ),
    /** The handler failed: its error recorded, to be retried or not. */
    recordError: assign(({ context, event }) =>
      event.type === "EXECUTED" && !event.execution.ok
        ? { record: recordWith(context.record, { error: event.execution.error, finishedAt: iso(event.execution.at) }) }
        : {},
    ),
    /** The attempt ran past its deadline. */
    recordTimeout: assign(({ context }) => ({
      record: recordWith(context.record, {
        error: {
          _tag: "Timeout",
          message: `attempt ${context.record.attempt} ran past its ${context.policy.timeout} ms timeout`,
          retryable: true,
        },
        finishedAt: iso(context.deadlineAt ?? 0),
      }),
    })),
    /** Another attempt follows, after the backoff: `retryAt` is when. */
    scheduleRetry: assign(({ context }) => {
      const finished = Date.parse(context.record.finishedAt ?? "") || 0;
      const wait = retryWait(context.policy.retry, context.record.attempt, context.random);
      return { record: recordWith(context.record, { status: "RETRYING", retryAt: iso(finished + wait) }) };
    }),
    /** No attempt follows: the recorded error says so. */
    giveUp: assign(({ context }) => ({
      record: recordWith(context.record, {
        status: "FAILED",
        error: context.record.error === undefined ? undefined : { ...context.record.error, retryable: false },
      }),
    })),
  },
  guards: {
    succeeded: ({ event }) => event.type === "EXECUTED" && event.execution.ok,
    canRetry: ({ context }) =>
      context.record.error?.retryable !== false && context.record.attempt < context.policy.retry.attempts,
    hasDeadline: ({ context }) => context.deadlineAt !== undefined,
  },
  delays: {
    heartbeat: ({ context }) => context.policy.heartbeatMs,
    // What is left of the attempt. This default assumes the attempt just started; hosts
    // provide one that reads their clock, so a rehydrated actor waits only for the rest.
    deadline: ({ context }) =>
      context.deadlineAt === undefined
        ? Number.POSITIVE_INFINITY
        : Math.max(0, context.deadlineAt - (Date.parse(context.record.startedAt ?? "") || 0)),
  },
}).createMachine({
  id: "task",
  context: ({ input }) => ({ record: input.record, revision: input.revision, policy: input.policy, random: 0.5 }),
  initial: "QUEUED",
  states: {
    QUEUED: { on: waiting },
    RUNNING: {
      entry: "scheduleHeartbeat",
      exit: "stopHeartbeat",
      initial: "claiming",
      states: {
        // The RUNNING write is the claim: it wins only against the revision this lease saw.
        claiming: saving("started", "executing"),
        executing: {
          entry: "execute",
          exit: "interrupt",
          on: {
            // Cancelled while the handler runs; during the claim a CANCEL would race the
            // claim's own answer, so the host holds it until the claim is saved.
            CANCEL: { target: "#task.CANCELLED", actions: "markCancelled" },
            PROGRESS: { actions: ["recordProgress", "persistProgress"] },
            PROGRESS_SAVED: { actions: "adoptRevision" },
            // A progress write lost: another attempt owns the task.
            FENCED: { target: "#task.LOST", actions: "recordLoss" },
            EXECUTED: [
              { guard: "succeeded", target: "#task.COMPLETED", actions: "complete" },
              { target: "failing", actions: "recordError" },
            ],
          },
          after: {
            deadline: { guard: "hasDeadline", target: "failing", actions: "recordTimeout" },
          },
        },
        failing: {
          always: [
            { guard: "canRetry", target: "#task.RETRYING", actions: "scheduleRetry" },
            { target: "#task.FAILED", actions: "giveUp" },
          ],
        },
      },
      on: {
        START: waiting.START,
        FAIL: waiting.FAIL,
        HEARTBEAT: { actions: ["heartbeat", "scheduleHeartbeat"] },
      },
    },
    RETRYING: {
      initial: "saving",
      states: {
        saving: saving("retrying", "waiting"),
        /** Recorded; the delivery waits on the server (a delayed NAK) for the next attempt. */
        waiting: { tags: ["settled"], on: waiting },
      },
    },
    COMPLETED: persisted("completed"),
    FAILED: persisted("failed"),
    CANCELLED: persisted("cancelled"),
    /** This attempt no longer owns the task: a newer write won. Its outcome is discarded. */
    LOST: { type: "final", tags: ["lost"] },
  },
});

export type TaskSnapshot = SnapshotFrom<typeof taskMachine>;

/**
 * A record at rest under no policy: what a host's idle actor scope is made from, and where a
 * new record starts. Transitions applied from outside an attempt (cancel, give-up) consult
 * no policy either.
 */
export const NO_POLICY: TaskPolicy = { retry: { attempts: 1, backoff: "fixed", delay: 0, maxDelay: 0, jitter: 0 }, heartbeatMs: 1 };
export const RESTING: TaskInput = {
  record: { id: "", task: "", queue: "", status: "QUEUED", attempt: 0, input: null, createdAt: "" },
  revision: 0,
  policy: NO_POLICY,
};

/** The snapshot a stored record stands for, ready to take an event; `resolve` is a host's own machine's. */
export const hydrate = (
  input: TaskInput,
  resolve: (value: ReturnType<typeof stateOf>, context: TaskContext) => TaskSnapshot = (value, context) =>
    taskMachine.resolveState({ value, context }),
): TaskSnapshot =>
  resolve(stateOf(input.record.status), { record: input.record, revision: input.revision, policy: input.policy, random: 0.5 });
