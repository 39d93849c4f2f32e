import { describe, expect, it, vi } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import { workerMachine } from "../../machines/worker.js";

describe("worker machine", () => {
  it("moves ready ⇄ busy with its capacity, drains, stops, and beats on its delay", () => {
    const beat = vi.fn();
    const register = vi.fn();
    const deregister = vi.fn();
    const clock = new SimulatedClock();
    const actor = createActor(workerMachine.provide({ actions: { beat, register, deregister } }), {
      input: { concurrency: 2, heartbeatMs: 1_000 },
      clock,
    });
    actor.start();
    expect(actor.getSnapshot().value).toBe("starting");
    actor.send({ type: "STARTED" });
    expect(register).toHaveBeenCalledTimes(1);
    expect(actor.getSnapshot().value).toBe("ready");
    actor.send({ type: "TASKS", started: 1, finished: 0, failed: 0 });
    expect(actor.getSnapshot().value).toBe("ready");
    actor.send({ type: "TASKS", started: 1, finished: 0, failed: 0 });
    expect(actor.getSnapshot().value).toBe("busy");
    actor.send({ type: "TASKS", started: 0, finished: 1, failed: 1 });
    expect(actor.getSnapshot().value).toBe("ready");
    expect(actor.getSnapshot().context).toMatchObject({ running: 1, processed: 1, failed: 1 });
    // A batch: two started and three finished in one report.
    actor.send({ type: "TASKS", started: 2, finished: 3, failed: 0 });
    expect(actor.getSnapshot().value).toBe("ready");
    expect(actor.getSnapshot().context).toMatchObject({ running: 0, processed: 4, failed: 1 });

    clock.increment(999);
    expect(beat).toHaveBeenCalledTimes(0);
    clock.increment(1);
    expect(beat).toHaveBeenCalledTimes(1);
    clock.increment(1_000);
    expect(beat).toHaveBeenCalledTimes(2);

    actor.send({ type: "DISCONNECTED" });
    expect(actor.getSnapshot().value).toBe("disconnected");
    actor.send({ type: "RECONNECTED" });
    actor.send({ type: "STOP" });
    expect(actor.getSnapshot().value).toBe("draining");
    actor.send({ type: "DRAINED" });
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(deregister).toHaveBeenCalledTimes(1);
  });
});
