import { Effect } from "effect";
import { TestClock } from "effect/testing";
import { describe, expect, it, vi } from "vitest";
import { createActor } from "xstate";
import { taskMachine, type TaskRecord } from "../../machines/task.js";
import { fiberClockFrom, makeFiberClock } from "../../src/actor/fiber-clock.js";

const record: TaskRecord = {
  id: "t1",
  task: "slow",
  queue: "default",
  status: "QUEUED",
  attempt: 0,
  input: null,
  createdAt: new Date(0).toISOString(),
};

describe("fiber clock", () => {
  it("fires the deadline and the heartbeats when TestClock is adjusted, and not before", async () => {
    const program = Effect.gen(function* () {
      const clock = yield* makeFiberClock;
      const interrupt = vi.fn();
      const heartbeat = vi.fn();
      const actor = createActor(taskMachine.provide({ actions: { persist: () => {}, execute: () => {}, interrupt, heartbeat } }), {
        input: {
          record,
          revision: 1,
          policy: { timeout: 30_000, heartbeatMs: 7_000, retry: { attempts: 1, backoff: "fixed", delay: 0, maxDelay: 0, jitter: 0 } },
        },
        clock,
      });
      actor.start();
      actor.send({ type: "START", workerId: "w", at: 0 });
      actor.send({ type: "SAVED", revision: 2 });
      expect(clock.pending()).toBe(2); // the deadline and the next heartbeat

      yield* TestClock.adjust("6999 millis");
      expect(heartbeat).not.toHaveBeenCalled();
      yield* TestClock.adjust("1 millis");
      expect(heartbeat).toHaveBeenCalledTimes(1);

      yield* TestClock.adjust("22999 millis");
      expect(actor.getSnapshot().value).toEqual({ RUNNING: "executing" });
      expect(heartbeat).toHaveBeenCalledTimes(4); // at 7, 14, 21 and 28 s
      expect(interrupt).not.toHaveBeenCalled();

      yield* TestClock.adjust("1 millis");
      expect(actor.getSnapshot().value).toEqual({ FAILED: "saving" });
      expect(actor.getSnapshot().context.record.error?._tag).toBe("Timeout");
      expect(interrupt).toHaveBeenCalledTimes(1);
      expect(clock.pending()).toBe(0); // leaving RUNNING cancelled the heartbeat
      yield* TestClock.adjust("1 minute");
      expect(heartbeat).toHaveBeenCalledTimes(4);
      actor.stop();
    });
    await Effect.runPromise(Effect.provide(program, TestClock.layer()));
  });

  it("still fires every live timer, in order, after most timers were cleared (and dropped from its heap)", async () => {
    const program = Effect.gen(function* () {
      const clock = yield* makeFiberClock;
      const fired: number[] = [];
      const ids = Array.from({ length: 5_000 }, (_, i) => clock.setTimeout(() => fired.push(i), 1_000 + i));
      // Clear all but every 500th: far more dead timers than live ones.
      ids.forEach((id, i) => i % 500 !== 0 && clock.clearTimeout(id));
      expect(clock.pending()).toBe(10);
      yield* TestClock.adjust("999 millis");
      expect(fired).toEqual([]);
      yield* TestClock.adjust("5 seconds");
      expect(fired).toEqual(Array.from({ length: 10 }, (_, k) => k * 500));
      expect(clock.pending()).toBe(0);
    });
    await Effect.runPromise(Effect.provide(program, TestClock.layer()));
  });

  it("interrupts the timer fiber when the state is left first", async () => {
    const program = Effect.gen(function* () {
      const clock = yield* makeFiberClock;
      const fired = vi.fn();
      const id = clock.setTimeout(fired, 1_000);
      expect(clock.pending()).toBe(1);
      clock.clearTimeout(id);
      expect(clock.pending()).toBe(0);
      yield* TestClock.adjust("2 seconds");
      expect(fired).not.toHaveBeenCalled();
    });
    await Effect.runPromise(Effect.provide(program, TestClock.layer()));
  });

  it("fires timers in due order, an earlier one scheduled later included, each once", async () => {
    const program = Effect.gen(function* () {
      const clock = yield* makeFiberClock;
      const fired: string[] = [];
      clock.setTimeout(() => fired.push("c@300"), 300);
      clock.setTimeout(() => fired.push("a@100"), 100);
      const dropped = clock.setTimeout(() => fired.push("never"), 200);
      clock.setTimeout(() => fired.push("b@200"), 200);
      clock.clearTimeout(dropped);
      yield* TestClock.adjust("150 millis");
      expect(fired).toEqual(["a@100"]);
      clock.setTimeout(() => fired.push("d@+10"), 10); // due before b and c
      yield* TestClock.adjust("1 second");
      expect(fired).toEqual(["a@100", "d@+10", "b@200", "c@300"]);
      expect(clock.pending()).toBe(0);
    });
    await Effect.runPromise(Effect.provide(program, TestClock.layer()));
  });

  it("keeps firing every other timer, now and later, when one callback throws", async () => {
    const program = Effect.gen(function* () {
      const errors: unknown[] = [];
      const clock = fiberClockFrom(yield* Effect.context<never>(), (e) => errors.push(e));
      const fired: string[] = [];
      clock.setTimeout(() => fired.push("a"), 10);
      clock.setTimeout(() => {
        throw new Error("a timer's bug");
      }, 10);
      clock.setTimeout(() => fired.push("b"), 10);
      yield* TestClock.adjust("10 millis");
      expect(fired).toEqual(["a", "b"]);
      expect(errors).toHaveLength(1);
      // The clock goes on: a timer set after the throw still fires.
      clock.setTimeout(() => fired.push("c"), 5);
      yield* TestClock.adjust("5 millis");
      expect(fired).toEqual(["a", "b", "c"]);
      expect(clock.pending()).toBe(0);
    });
    await Effect.runPromise(Effect.provide(program, TestClock.layer()));
  });
});
