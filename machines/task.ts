/**
 * The task actor: one attempt's view of a task, from the moment a worker holds its
 * delivery (its lease) until the outcome is persisted.
 *
 * Pure: no I/O, no clock reads. Hosts `.provide()` the `execute` and `persist` actors
 * and the `emit` action; time comes in on events and actor outputs so that a snapshot
 * replays the same way anywhere. The same definition is what the visualizer draws.
 */
import { assign, fromPromise, setup } from "xstate";

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

export interface PersistRequest {
  readonly record: TaskRecord;
  readonly revision: number;
  /** The event name published once the write wins (`started`, `completed`, ...). */
  readonly event: string;
}

export type TaskEvent =
  | { readonly type: "START"; readonly attempt: number; readonly workerId: string; readonly at: number }
  | { readonly type: "CANCEL"; readonly reason: string; readonly at: number };

const iso = (ms: number) => new Date(ms).toISOString();

/** The delay before attempt `attempt + 1`, before jitter. */
export const backoffDelay = (retry: RetryPolicy, attempt: number): number => {
  const n = Math.max(1, attempt);
  const raw =
    retry.backoff === "fixed" ? retry.delay : retry.backoff === "linear" ? retry.delay * n : retry.delay * 2 ** (n - 1);
  return Math.min(raw, retry.maxDelay);
};

const persisted = (status: TaskStatus, event: string) => ({
  initial: "saving" as const,
  states: {
    saving: {
      invoke: {
        src: "persist" as const,
        input: ({ context }: { context: TaskContext }): PersistRequest => ({
          record: context.record,
          revision: context.revision,
          event,
        }),
        onDone: { target: "saved" as const, actions: "adoptRevision" as const },
        onError: { target: "#task.LOST" as const, actions: "recordLoss" as const },
      },
    },
    saved: { type: "final" as const, tags: ["settled" as const] },
  },
  meta: { status },
});

const describe = (e: unknown): string =>
  e instanceof Error ? e.message : typeof e === "object" && e !== null && "message" in e ? String(e.message) : String(e);

export const taskMachine = setup({
  types: {
    context: {} as TaskContext,
    input: {} as TaskInput,
    events: {} as TaskEvent,
    tags: {} as "settled" | "lost",
  },
  actors: {
    execute: fromPromise<Execution, { record: TaskRecord; deadlineAt?: number | undefined }>(async () => {
      throw new Error("execute: provided by the host");
    }),
    persist: fromPromise<number, PersistRequest>(async () => {
      throw new Error("persist: provided by the host");
    }),
  },
  actions: {
    adoptRevision: assign({ revision: ({ event }) => (event as unknown as { output: number }).output }),
    recordLoss: assign({ lostReason: ({ event }) => describe((event as unknown as { error: unknown }).error) }),
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
    succeeded: ({ event }) => (event as unknown as { output: Execution }).output.ok,
    canRetry: ({ context }) =>
      context.record.error?.retryable !== false && context.record.attempt < context.policy.retry.attempts,
    hasDeadline: ({ context }) => context.deadlineAt !== undefined,
  },
  delays: {
    // What is left of the attempt; the host supplies one that reads its clock.
    deadline: ({ context }) => Math.max(0, (context.deadlineAt ?? 0) - (Date.parse(context.record.startedAt ?? "") || 0)),
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
              error: undefined,
              retryAt: undefined,
            },
            deadlineAt: context.policy.timeout === undefined ? undefined : event.at + context.policy.timeout,
          })),
        },
        CANCEL: { target: "CANCELLED", actions: "markCancelled" },
      },
    },
    RUNNING: {
      initial: "claiming",
      states: {
        // The RUNNING write is the claim: it wins only against the revision this lease saw.
        claiming: {
          invoke: {
            src: "persist",
            input: ({ context }) => ({ record: context.record, revision: context.revision, event: "started" }),
            onDone: { target: "executing", actions: "adoptRevision" },
            onError: { target: "#task.LOST", actions: "recordLoss" },
          },
        },
        executing: {
          invoke: {
            src: "execute",
            input: ({ context }) => ({ record: context.record, deadlineAt: context.deadlineAt }),
            onDone: [
              {
                guard: "succeeded",
                target: "#task.COMPLETED",
                actions: assign(({ context, event }) => {
                  const out = event.output as Extract<Execution, { ok: true }>;
                  return {
                    record: { ...context.record, status: "COMPLETED" as const, output: out.output, finishedAt: iso(out.at) },
                  };
                }),
              },
              {
                target: "failing",
                actions: assign(({ context, event }) => {
                  const out = event.output as Extract<Execution, { ok: false }>;
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
      on: { CANCEL: { target: "CANCELLED", actions: "markCancelled" } },
    },
    RETRYING: persisted("RETRYING", "retrying"),
    COMPLETED: persisted("COMPLETED", "completed"),
    FAILED: persisted("FAILED", "failed"),
    CANCELLED: persisted("CANCELLED", "cancelled"),
    /** This attempt no longer owns the task: a newer write won. Its outcome is discarded. */
    LOST: { type: "final", tags: ["lost"] },
  },
});

export type TaskMachine = typeof taskMachine;
