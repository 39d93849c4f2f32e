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
  | { readonly type: "TASK_STARTED" }
  | { readonly type: "TASK_FINISHED"; readonly ok: boolean }
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
    TASK_STARTED: { actions: assign({ running: ({ context }) => context.running + 1 }) },
    TASK_FINISHED: {
      actions: assign(({ context, event }) => ({
        running: context.running - 1,
        processed: context.processed + 1,
        failed: context.failed + (event.ok ? 0 : 1),
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

