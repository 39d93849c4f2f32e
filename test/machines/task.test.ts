import { describe, expect, it, vi } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import { taskMachine, type TaskPolicy, type TaskRecord } from "../../machines/task.js";
import { backoffDelay } from "../../machines/backoff.js";

const record: TaskRecord = {
  id: "t1",
  task: "math.add",
  queue: "default",
  status: "QUEUED",
  attempt: 0,
  input: { a: 1, b: 2 },
  createdAt: new Date(0).toISOString(),
};
const policy = (over: Partial<TaskPolicy> = {}): TaskPolicy => ({
  retry: { attempts: 1, backoff: "fixed", delay: 1_000, maxDelay: 10_000, jitter: 0 },
  heartbeatMs: 10_000,
  ...over,
});

/** The machine with recording placeholders: the test plays the host's answers. */
const start = (p: TaskPolicy = policy()) => {
  const persist = vi.fn();
  const execute = vi.fn();
  const interrupt = vi.fn();
  const clock = new SimulatedClock();
  const actor = createActor(taskMachine.provide({ actions: { persist, execute, interrupt } }), {
    input: { record, revision: 1, policy: p },
    clock,
  });
  actor.start();
  actor.send({ type: "START", workerId: "w1", at: 1_000 });
  return { actor, persist, execute, interrupt, clock };
};

describe("task machine", () => {
  it("claims with a RUNNING write, runs, and persists COMPLETED before it is settled", () => {
    const { actor, persist, execute } = start();
    expect(actor.getSnapshot().value).toEqual({ RUNNING: "claiming" });
    expect(persist).toHaveBeenCalledTimes(1);
    expect(persist.mock.calls[0]![1]).toEqual({ event: "started" });
    expect(actor.getSnapshot().context.record).toMatchObject({ status: "RUNNING", attempt: 1, workerId: "w1" });
    expect(execute).not.toHaveBeenCalled();

    actor.send({ type: "SAVED", revision: 2 });
    expect(actor.getSnapshot().value).toEqual({ RUNNING: "executing" });
    expect(actor.getSnapshot().context.revision).toBe(2);
    expect(execute).toHaveBeenCalledTimes(1);

    actor.send({ type: "EXECUTED", execution: { ok: true, output: 3, at: 1_005 } });
    expect(actor.getSnapshot().value).toEqual({ COMPLETED: "saving" });
    expect(actor.getSnapshot().hasTag("settled")).toBe(false);
    expect(persist.mock.calls[1]![1]).toEqual({ event: "completed" });

    actor.send({ type: "SAVED", revision: 3 });
    expect(actor.getSnapshot().hasTag("settled")).toBe(true);
    expect(actor.getSnapshot().context.record).toMatchObject({ status: "COMPLETED", output: 3, finishedAt: new Date(1_005).toISOString() });
  });

  it("goes LOST when the claim loses its compare-and-set, and never runs the handler", () => {
    const { actor, execute } = start();
    actor.send({ type: "FENCED", reason: "wrong last sequence" });
    expect(actor.getSnapshot().value).toBe("LOST");
    expect(actor.getSnapshot().hasTag("lost")).toBe(true);
    expect(actor.getSnapshot().context.lostReason).toBe("wrong last sequence");
    expect(execute).not.toHaveBeenCalled();
  });

  it("fails with Timeout when the deadline passes, interrupting the handler", () => {
    const { actor, clock, interrupt } = start(policy({ timeout: 500 }));
    actor.send({ type: "SAVED", revision: 2 });
    clock.increment(499);
    expect(actor.getSnapshot().value).toEqual({ RUNNING: "executing" });
    clock.increment(1);
    expect(actor.getSnapshot().value).toEqual({ FAILED: "saving" });
    expect(interrupt).toHaveBeenCalledTimes(1);
    expect(actor.getSnapshot().context.record.error).toMatchObject({ _tag: "Timeout" });
    expect(actor.getSnapshot().context.record.finishedAt).toBe(new Date(1_500).toISOString());
  });

  it("retries a retryable failure while attempts remain, with its backoff", () => {
    const { actor } = start(policy({ retry: { attempts: 3, backoff: "exponential", delay: 100, maxDelay: 1_000, jitter: 0 } }));
    actor.send({ type: "SAVED", revision: 2 });
    actor.send({ type: "EXECUTED", execution: { ok: false, error: { _tag: "Execution", message: "boom", retryable: true }, at: 2_000 } });
    expect(actor.getSnapshot().value).toEqual({ RETRYING: "saving" });
    expect(actor.getSnapshot().context.record.retryAt).toBe(new Date(2_100).toISOString());
  });

  it("fails at once on a non-retryable error", () => {
    const { actor } = start(policy({ retry: { attempts: 3, backoff: "fixed", delay: 100, maxDelay: 1_000, jitter: 0 } }));
    actor.send({ type: "SAVED", revision: 2 });
    actor.send({ type: "EXECUTED", execution: { ok: false, error: { _tag: "Execution", message: "no", retryable: false }, at: 2_000 } });
    expect(actor.getSnapshot().value).toEqual({ FAILED: "saving" });
  });

  it("is cancelled from RUNNING and interrupts the handler", () => {
    const { actor, interrupt } = start();
    actor.send({ type: "SAVED", revision: 2 });
    actor.send({ type: "CANCEL", reason: "user asked", at: 3_000 });
    expect(actor.getSnapshot().value).toEqual({ CANCELLED: "saving" });
    expect(interrupt).toHaveBeenCalledTimes(1);
    expect(actor.getSnapshot().context.record).toMatchObject({ status: "CANCELLED", error: { _tag: "Cancelled" } });
  });

  it("computes backoff delays per policy, capped at maxDelay", () => {
    const base = { attempts: 5, delay: 100, maxDelay: 350, jitter: 0 };
    expect([1, 2, 3].map((n) => backoffDelay({ ...base, backoff: "fixed" }, n))).toEqual([100, 100, 100]);
    expect([1, 2, 3, 4].map((n) => backoffDelay({ ...base, backoff: "linear" }, n))).toEqual([100, 200, 300, 350]);
    expect([1, 2, 3, 4].map((n) => backoffDelay({ ...base, backoff: "exponential" }, n))).toEqual([100, 200, 350, 350]);
  });
});
