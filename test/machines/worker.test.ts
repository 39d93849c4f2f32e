import { describe, expect, it, vi } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import { workerMachine } from "../../machines/worker.js";

const start = (input: { concurrency: number; heartbeatMs: number; disconnectTimeoutMs?: number }) => {
  const handlers = {
    beat: vi.fn(),
    register: vi.fn(),
    deregister: vi.fn(),
    pullNow: vi.fn(),
    stopPulling: vi.fn(),
    interruptAll: vi.fn(),
    finish: vi.fn(),
  };
  const clock = new SimulatedClock();
  const actor = createActor(workerMachine.provide({ actions: handlers }), { input, clock });
  actor.start();
  return { actor, clock, handlers, state: () => actor.getSnapshot().value };
};

describe("worker machine", () => {
  it("owns the capacity: ready ⇄ busy with its slots, and beats on its delay", () => {
    const { actor, clock, handlers, state } = start({ concurrency: 2, heartbeatMs: 1_000 });
    expect(state()).toBe("starting");
    actor.send({ type: "STARTED" });
    expect(handlers.register).toHaveBeenCalledTimes(1);
    expect(state()).toBe("ready");
    actor.send({ type: "LEASED" });
    expect(state()).toBe("ready");
    actor.send({ type: "LEASED" });
    expect(state()).toBe("busy");
    actor.send({ type: "RELEASED", failed: true });
    expect(state()).toBe("ready");
    actor.send({ type: "RELEASED", failed: false });
    expect(actor.getSnapshot().context).toMatchObject({ running: 0, processed: 2, failed: 1 });

    clock.increment(999);
    expect(handlers.beat).toHaveBeenCalledTimes(0);
    clock.increment(1);
    expect(handlers.beat).toHaveBeenCalledTimes(1);
    clock.increment(1_000);
    expect(handlers.beat).toHaveBeenCalledTimes(2);
  });

  it("pauses while disconnected, pulls at once when back, and gives up past its disconnect timeout", () => {
    const { actor, clock, handlers, state } = start({ concurrency: 2, heartbeatMs: 10_000, disconnectTimeoutMs: 5_000 });
    actor.send({ type: "STARTED" });
    actor.send({ type: "LEASED" });
    actor.send({ type: "DISCONNECTED" });
    expect(state()).toBe("disconnected");
    clock.increment(4_000);
    actor.send({ type: "RECONNECTED" });
    expect(state()).toBe("ready");
    expect(handlers.pullNow).toHaveBeenCalledTimes(1);
    // A new disconnection starts its own timeout.
    actor.send({ type: "DISCONNECTED" });
    clock.increment(4_999);
    expect(state()).toBe("disconnected");
    clock.increment(1);
    expect(state()).toBe("lost");
    expect(handlers.stopPulling).toHaveBeenCalledTimes(1);
    expect(handlers.interruptAll).toHaveBeenCalledTimes(1);
    expect(handlers.finish).not.toHaveBeenCalled();
    actor.send({ type: "RELEASED", failed: false });
    expect(state()).toBe("stopped");
    expect(actor.getSnapshot().context.lost).toBe(true);
    expect(handlers.finish).toHaveBeenCalledTimes(1);
    expect(handlers.deregister).toHaveBeenCalledTimes(1);
  });

  it("drives a stop: drains, interrupts at its timeout, hurries on a second ask", () => {
    const { actor, clock, handlers, state } = start({ concurrency: 4, heartbeatMs: 10_000 });
    actor.send({ type: "STARTED" });
    actor.send({ type: "LEASED" });
    actor.send({ type: "LEASED" });
    actor.send({ type: "STOP", timeoutMs: 3_000 });
    expect(state()).toEqual({ draining: "finishing" });
    expect(handlers.stopPulling).toHaveBeenCalledTimes(1);
    actor.send({ type: "RELEASED", failed: false });
    clock.increment(2_999);
    expect(handlers.interruptAll).not.toHaveBeenCalled();
    clock.increment(1);
    expect(state()).toEqual({ draining: "interrupting" });
    expect(handlers.interruptAll).toHaveBeenCalledTimes(1);
    actor.send({ type: "HURRY" });
    expect(handlers.interruptAll).toHaveBeenCalledTimes(2);
    actor.send({ type: "RELEASED", failed: false });
    expect(state()).toBe("stopped");
    expect(handlers.finish).toHaveBeenCalledTimes(1);
    expect(actor.getSnapshot().context.lost).toBe(false);
  });

  it("stops at once when nothing runs", () => {
    const { actor, handlers, state } = start({ concurrency: 1, heartbeatMs: 10_000 });
    actor.send({ type: "STARTED" });
    actor.send({ type: "STOP", timeoutMs: 30_000 });
    expect(state()).toBe("stopped");
    expect(handlers.finish).toHaveBeenCalledTimes(1);
  });
});
