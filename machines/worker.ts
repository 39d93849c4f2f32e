/**
 * The worker actor: `starting → ready ⇄ busy → draining → stopped`, `disconnected` while
 * NATS is gone, `lost` when it stayed gone past `disconnectTimeout`. It owns the worker's
 * capacity and lifecycle: its `running` count is the one count of slots taken (the pull
 * loop asks it for free slots: none unless `ready`), `disconnected` pauses pulling and
 * `RECONNECTED` pulls at once, `draining` drives the stop (its timeout on the actor's
 * clock, then every running task interrupted), and it beats its heartbeat (the registry
 * entry in `troupe-workers`) on a delay.
 *
 * Pure: the host carries out `register`, `beat`, `deregister`, `pullNow`, `stopPulling`,
 * `interruptAll` and `finish`. Every guard and assign is named, so a host can replay its
 * transitions (`src/actor/transition-plans.ts`); the visualizer draws this definition.
 */
import { assign, raise, setup } from "xstate";

export interface WorkerContext {
  readonly concurrency: number;
  /** Deliveries being handled: slots taken. */
  readonly running: number;
  readonly processed: number;
  readonly failed: number;
  /** Milliseconds between two registry writes. */
  readonly heartbeatMs: number;
  /** How long the worker may be cut off from NATS before it gives up (ms); never when undefined. */
  readonly disconnectTimeoutMs?: number | undefined;
  /** How long a stop waits for running tasks before interrupting them (ms). */
  readonly stopTimeoutMs: number;
  /** Set when the worker gave up on NATS: its host exits non-zero once stopped. */
  readonly lost: boolean;
}

export interface WorkerInput {
  readonly concurrency: number;
  readonly heartbeatMs: number;
  readonly disconnectTimeoutMs?: number | undefined;
}

export type WorkerEvent =
  | { readonly type: "STARTED" }
  /** A delivery arrived: it takes a slot until its lease is settled. */
  | { readonly type: "LEASED" }
  /** A delivery's lease was settled; `failed` when its task ended FAILED. */
  | { readonly type: "RELEASED"; readonly failed: boolean }
  | { readonly type: "DISCONNECTED" }
  | { readonly type: "RECONNECTED" }
  /** Stop taking work; running tasks have `timeoutMs` to finish (0: interrupted at once). */
  | { readonly type: "STOP"; readonly timeoutMs: number }
  /** Stop now: interrupt what still runs (a second signal, a shutdown after a drain). */
  | { readonly type: "HURRY" }
  | { readonly type: "BEAT" };

export const workerMachine = setup({
  types: {
    context: {} as WorkerContext,
    input: {} as WorkerInput,
    events: {} as WorkerEvent,
  },
  actions: {
    /** Host: write the first registry entry. */
    register: () => {},
    /** Host: refresh the registry entry (and publish the heartbeat event). */
    beat: () => {},
    /** Host: delete the registry entry. */
    deregister: () => {},
    /** Host: ask for work now (back from a disconnection: the old pull requests are gone). */
    pullNow: () => {},
    /** Host: stop asking for work and withdraw the open pull requests. */
    stopPulling: () => {},
    /** Host: interrupt every running task and hand its delivery back. */
    interruptAll: () => {},
    /** Host: the worker has stopped: release what it holds (executors, service, reaper). */
    finish: () => {},
    scheduleBeat: raise({ type: "BEAT" }, { delay: "heartbeat", id: "beat" }),
    lease: assign(({ context }) => ({ running: context.running + 1 })),
    release: assign(({ context, event }) => ({
      running: context.running - 1,
      processed: context.processed + 1,
      failed: context.failed + (event.type === "RELEASED" && event.failed ? 1 : 0),
    })),
    setStopTimeout: assign(({ event }) => (event.type === "STOP" ? { stopTimeoutMs: event.timeoutMs } : {})),
    markLost: assign(() => ({ lost: true })),
  },
  guards: {
    full: ({ context }) => context.running >= context.concurrency,
    hasRoom: ({ context }) => context.running < context.concurrency,
    idle: ({ context }) => context.running === 0,
  },
  delays: {
    heartbeat: ({ context }) => context.heartbeatMs,
    disconnectTimeout: ({ context }) => context.disconnectTimeoutMs ?? Number.POSITIVE_INFINITY,
    stopTimeout: ({ context }) => context.stopTimeoutMs,
  },
}).createMachine({
  id: "worker",
  context: ({ input }) => ({
    concurrency: input.concurrency,
    heartbeatMs: input.heartbeatMs,
    disconnectTimeoutMs: input.disconnectTimeoutMs,
    stopTimeoutMs: 0,
    running: 0,
    processed: 0,
    failed: 0,
    lost: false,
  }),
  initial: "starting",
  on: {
    LEASED: { actions: "lease" },
    RELEASED: { actions: "release" },
    BEAT: { actions: ["beat", "scheduleBeat"] },
  },
  states: {
    starting: {
      on: { STARTED: { target: "ready", actions: ["register", "scheduleBeat"] } },
    },
    ready: {
      always: { guard: "full", target: "busy" },
      on: { STOP: { target: "draining", actions: "setStopTimeout" }, DISCONNECTED: "disconnected" },
    },
    busy: {
      always: { guard: "hasRoom", target: "ready" },
      on: { STOP: { target: "draining", actions: "setStopTimeout" }, DISCONNECTED: "disconnected" },
    },
    disconnected: {
      on: {
        RECONNECTED: { target: "ready", actions: "pullNow" },
        STOP: { target: "draining", actions: "setStopTimeout" },
      },
      after: { disconnectTimeout: "lost" },
    },
    draining: {
      entry: ["stopPulling", "beat"],
      always: { guard: "idle", target: "stopped" },
      initial: "finishing",
      states: {
        finishing: {
          after: { stopTimeout: "interrupting" },
          on: { HURRY: "interrupting" },
        },
        interrupting: {
          entry: "interruptAll",
          on: { HURRY: { actions: "interruptAll" } },
        },
      },
    },
    /** Cut off from NATS for too long: tasks interrupted (other workers take them after their lease). */
    lost: {
      entry: ["markLost", "stopPulling", "interruptAll"],
      always: { guard: "idle", target: "stopped" },
      on: { HURRY: { actions: "interruptAll" } },
    },
    stopped: {
      type: "final",
      entry: ["deregister", "finish"],
    },
  },
});
