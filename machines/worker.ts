/**
 * The worker actor: `starting → ready ⇄ busy → draining → stopped`, `disconnected`
 * while NATS is gone. It counts the tasks it runs and beats its heartbeat (the
 * registry entry in `troupe-workers`) on a delay, so the host only reports facts.
 * Pure: the host `.provide()`s `register`, `beat` and `deregister`.
 */
import { assign, raise, setup } from "xstate";

export interface WorkerContext {
  readonly concurrency: number;
  readonly running: number;
  readonly processed: number;
  readonly failed: number;
  /** Milliseconds between two registry writes. */
  readonly heartbeatMs: number;
}

export interface WorkerInput {
  readonly concurrency: number;
  readonly heartbeatMs: number;
}

export type WorkerEvent =
  | { readonly type: "STARTED" }
  /**
   * Tasks started and finished since the last report (`failed` of the finished). The host
   * reports them in batches, not one event per task.
   */
  | { readonly type: "TASKS"; readonly started: number; readonly finished: number; readonly failed: number }
  | { readonly type: "DISCONNECTED" }
  | { readonly type: "RECONNECTED" }
  | { readonly type: "STOP" }
  | { readonly type: "DRAINED" }
  | { readonly type: "BEAT" };

export const workerMachine = setup({
  types: {
    context: {} as WorkerContext,
    input: {} as WorkerInput,
    events: {} as WorkerEvent,
  },
  actions: {
    register: () => {},
    beat: () => {},
    deregister: () => {},
    scheduleBeat: raise({ type: "BEAT" }, { delay: "heartbeat", id: "beat" }),
  },
  guards: {
    full: ({ context }) => context.running >= context.concurrency,
    idle: ({ context }) => context.running === 0,
  },
  delays: {
    heartbeat: ({ context }) => context.heartbeatMs,
  },
}).createMachine({
  id: "worker",
  context: ({ input }) => ({ concurrency: input.concurrency, heartbeatMs: input.heartbeatMs, running: 0, processed: 0, failed: 0 }),
  initial: "starting",
  on: {
    TASKS: {
      actions: assign(({ context, event }) => ({
        running: context.running + event.started - event.finished,
        processed: context.processed + event.finished,
        failed: context.failed + event.failed,
      })),
    },
    BEAT: { actions: ["beat", "scheduleBeat"] },
  },
  states: {
    starting: {
      on: { STARTED: { target: "ready", actions: ["register", "scheduleBeat"] } },
    },
    ready: {
      always: { guard: "full", target: "busy" },
      on: { STOP: "draining", DISCONNECTED: "disconnected" },
    },
    busy: {
      always: { guard: ({ context }) => context.running < context.concurrency, target: "ready" },
      on: { STOP: "draining", DISCONNECTED: "disconnected" },
    },
    disconnected: {
      on: { RECONNECTED: "ready", STOP: "draining" },
    },
    draining: {
      entry: "beat",
      on: { DRAINED: "stopped" },
    },
    stopped: {
      type: "final",
      entry: "deregister",
    },
  },
});

