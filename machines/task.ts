/**
 * The task actor: one attempt's view of a task, from the moment a worker holds its
 * delivery (its lease) until the outcome is persisted.
 *
 * Pure: no I/O, no clock reads. Hosts `.provide()` the `persist`, `execute` and
 * `interrupt` actions, which start Effect programs and answer with events (`SAVED`,
 * `FENCED`, `EXECUTED`); time comes in on events so that a snapshot replays the same
 * way anywhere. The same definition is what the visualizer draws.
 */
import { assign, cancel, raise, setup } from "xstate";

export const TaskStatuses = ["QUEUED", "RUNNING", "RETRYING", "COMPLETED", "FAILED", "CANCELLED"] as const;
export type TaskStatus = (typeof TaskStatuses)[number];
export const TerminalStatuses: ReadonlySet<TaskStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** The error recorded on a failed attempt; `_tag` is one of the categories in docs/semantics.md. */
export interface TaskErrorInfo {
  readonly _tag: string;
  readonly message: string;
  readonly stack?: string | undefined;
  readonly retryable?: boolean | undefined;
}

/** What the `troupe-tasks` KV bucket holds under the task id (JSON). */
export interface TaskRecord {
  readonly id: string;
  readonly task: string;
  readonly queue: string;
  readonly status: TaskStatus;
  readonly attempt: number;
  readonly input: unknown;
  readonly output?: unknown;
  readonly error?: TaskErrorInfo | undefined;
  readonly createdAt: string;
  readonly startedAt?: string | undefined;
  readonly finishedAt?: string | undefined;
  readonly retryAt?: string | undefined;
  readonly workerId?: string | undefined;
  readonly idempotencyKey?: string | undefined;
  /** Attempts that ended with their worker gone (killed, hung past its lease). */
  readonly lostAttempts?: number | undefined;
  /** Not before: a delayed task waits (a NAK with the rest of the delay) until then. */
  readonly runAt?: string | undefined;
}

export interface RetryPolicy {
  /** Total attempts, the first included. */
  readonly attempts: number;
  readonly backoff: "fixed" | "linear" | "exponential";
  /** Base delay in milliseconds. */
  readonly delay: number;
  readonly maxDelay: number;
  /** 0..1: the share of the delay that is randomised. */
  readonly jitter: number;
}

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
  | { readonly ok: false; readonly error: TaskErrorInfo; readonly at: number };

export type TaskEvent =
  | {
      readonly type: "START";
      readonly attempt: number;
      readonly workerId: string;
      readonly at: number;
      /** The previous attempt's worker vanished (the record still said RUNNING). */
      readonly previousLost?: boolean;
    }
  | { readonly type: "CANCEL"; readonly reason: string; readonly at: number }
  /** The host's answer to `persist`: the write won, here is the new revision. */
  | { readonly type: "SAVED"; readonly revision: number }
  /** The host's answer to `persist`: the write lost its compare-and-set. */
  | { readonly type: "FENCED"; readonly reason: string }
  /** The host's answer to `execute`. */
  | { readonly type: "EXECUTED"; readonly execution: Execution }
  /** Extend the lease (raised on the `heartbeat` delay while RUNNING). */
  | { readonly type: "HEARTBEAT" };

const iso = (ms: number) => new Date(ms).toISOString();

/** The delay before attempt `attempt + 1`, before jitter. */
export const backoffDelay = (retry: RetryPolicy, attempt: number): number => {
  const n = Math.max(1, attempt);
  const raw =
    retry.backoff === "fixed" ? retry.delay : retry.backoff === "linear" ? retry.delay * n : retry.delay * 2 ** (n - 1);
  return Math.min(raw, retry.maxDelay);
};

/** A status whose record must be written (compare-and-set) before the lease is settled. */
const persisted = (event: string) => ({
  initial: "saving" as const,
  states: {
    saving: {
      entry: { type: "persist" as const, params: { event } },
      on: {
        SAVED: { target: "saved" as const, actions: "adoptRevision" as const },
        FENCED: { target: "#task.LOST" as const, actions: "recordLoss" as const },
      },
    },
    saved: { type: "final" as const, tags: ["settled" as const] },
  },
});

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
    /** Host: extend the lease (a JetStream in-progress ack). */
    heartbeat: () => {},
    scheduleHeartbeat: raise({ type: "HEARTBEAT" }, { delay: "heartbeat", id: "heartbeat" }),
    stopHeartbeat: cancel("heartbeat"),
    adoptRevision: assign({ revision: ({ event }) => (event as Extract<TaskEvent, { type: "SAVED" }>).revision }),
    recordLoss: assign({ lostReason: ({ event }) => (event as Extract<TaskEvent, { type: "FENCED" }>).reason }),
    markCancelled: assign(({ context, event }) => {
      const e = event as Extract<TaskEvent, { type: "CANCEL" }>;
      return {
        record: {
          ...context.record,
          status: "CANCELLED" as const,
          error: { _tag: "Cancelled", message: e.reason, retryable: false },
          finishedAt: iso(e.at),
        },
      };
    }),
  },
  guards: {
    succeeded: ({ event }) => (event as Extract<TaskEvent, { type: "EXECUTED" }>).execution.ok,
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
  context: ({ input }) => ({ record: input.record, revision: input.revision, policy: input.policy }),
  initial: "QUEUED",
  states: {
    QUEUED: {
      on: {
        START: {
          target: "RUNNING",
          actions: assign(({ context, event }) => ({
            record: {
              ...context.record,
              status: "RUNNING" as const,
              attempt: event.attempt,
              workerId: event.workerId,
              startedAt: iso(event.at),
              finishedAt: undefined,
              error: undefined,
              retryAt: undefined,
              lostAttempts: (context.record.lostAttempts ?? 0) + (event.previousLost ? 1 : 0),
            },
            deadlineAt: context.policy.timeout === undefined ? undefined : event.at + context.policy.timeout,
          })),
        },
        CANCEL: { target: "CANCELLED", actions: "markCancelled" },
      },
    },
    RUNNING: {
      entry: "scheduleHeartbeat",
      exit: "stopHeartbeat",
      initial: "claiming",
      states: {
        // The RUNNING write is the claim: it wins only against the revision this lease saw.
        claiming: {
          entry: { type: "persist", params: { event: "started" } },
          on: {
            SAVED: { target: "executing", actions: "adoptRevision" },
            FENCED: { target: "#task.LOST", actions: "recordLoss" },
          },
        },
        executing: {
          entry: "execute",
          exit: "interrupt",
          on: {
            EXECUTED: [
              {
                guard: "succeeded",
                target: "#task.COMPLETED",
                actions: assign(({ context, event }) => {
                  const out = event.execution as Extract<Execution, { ok: true }>;
                  return { record: { ...context.record, status: "COMPLETED" as const, output: out.output, finishedAt: iso(out.at) } };
                }),
              },
              {
                target: "failing",
                actions: assign(({ context, event }) => {
                  const out = event.execution as Extract<Execution, { ok: false }>;
                  return { record: { ...context.record, error: out.error, finishedAt: iso(out.at) } };
                }),
              },
            ],
          },
          after: {
            deadline: {
              guard: "hasDeadline",
              target: "failing",
              actions: assign(({ context }) => ({
                record: {
                  ...context.record,
                  error: {
                    _tag: "Timeout",
                    message: `attempt ${context.record.attempt} ran past its ${context.policy.timeout} ms timeout`,
                    retryable: true,
                  },
                  finishedAt: iso(context.deadlineAt ?? 0),
                },
              })),
            },
          },
        },
        failing: {
          always: [
            {
              guard: "canRetry",
              target: "#task.RETRYING",
              actions: assign(({ context }) => {
                const finished = Date.parse(context.record.finishedAt ?? "") || 0;
                return {
                  record: {
                    ...context.record,
                    status: "RETRYING" as const,
                    retryAt: iso(finished + backoffDelay(context.policy.retry, context.record.attempt)),
                  },
                };
              }),
            },
            { target: "#task.FAILED", actions: assign(({ context }) => ({ record: { ...context.record, status: "FAILED" as const } })) },
          ],
        },
      },
      on: {
        CANCEL: { target: "CANCELLED", actions: "markCancelled" },
        HEARTBEAT: { actions: ["heartbeat", "scheduleHeartbeat"] },
      },
    },
    RETRYING: persisted("retrying"),
    COMPLETED: persisted("completed"),
    FAILED: persisted("failed"),
    CANCELLED: persisted("cancelled"),
    /** This attempt no longer owns the task: a newer write won. Its outcome is discarded. */
    LOST: { type: "final", tags: ["lost"] },
  },
});

export type TaskMachine = typeof taskMachine;
