import { describe, expect, it } from "vitest";
import { assign, setup } from "xstate";
import { hydrate, taskMachine, type TaskEvent, type TaskSnapshot } from "../../machines/task.js";
import type { TaskRecord } from "../../machines/records.js";
import { collectingScope, TransitionPlans, type PlannedAction } from "../../src/actor/transition-plans.js";

/** A small deterministic generator, so a failure can be replayed. */
const seeded = (seed: number) => () => {
  seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
  return seed / 2 ** 31;
};

const record = (status: TaskRecord["status"], attempt: number): TaskRecord => ({
  id: "t1",
  task: "plans.test",
  queue: "default",
  status,
  attempt,
  input: { n: 1 },
  createdAt: "2026-01-01T00:00:00.000Z",
  ...(status === "RUNNING" ? { startedAt: "2026-01-01T00:00:01.000Z", workerId: "w0" } : {}),
});

describe("transition plans", () => {
  it("replay exactly what XState computes, for every state, event and guard outcome met on random walks", () => {
    const now = { t: 1_000_000 };
    const machine = taskMachine.provide({
      delays: { deadline: ({ context }) => (context.deadlineAt === undefined ? Number.POSITIVE_INFINITY : Math.max(0, context.deadlineAt - now.t)) },
    });
    const input = { record: record("QUEUED", 0), revision: 0, policy: { retry: { attempts: 1, backoff: "fixed" as const, delay: 0, maxDelay: 0, jitter: 0 }, heartbeatMs: 1 } };
    const plans = new TransitionPlans<TaskSnapshot, TaskEvent>(machine, input);
    // The reference: XState's own transition, with its actions collected.
    let collected: PlannedAction[] = [];
    const scope = collectingScope(plans.machine, input, (a) => void collected.push(a));
    const reference = (snapshot: TaskSnapshot, event: TaskEvent) => {
      collected = [];
      const next = plans.machine.transition(snapshot, event, scope) as TaskSnapshot;
      return { next, actions: collected };
    };
    const shape = (a: PlannedAction) => ({ type: a.type, params: a.params, context: a.info.context });

    const random = seeded(42);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const failure = (retryable: boolean) => ({ _tag: "Execution" as const, message: "boom", retryable });
    const events = (): TaskEvent => {
      now.t += Math.floor(random() * 5_000);
      return pick<() => TaskEvent>([
        () => ({ type: "START", workerId: pick(["w1", "w2"]), at: now.t, random: random(), message: pick([1, 2]) }),
        () => ({ type: "SAVED", revision: Math.floor(random() * 100) }),
        () => ({ type: "FENCED", reason: "lost" }),
        () => ({ type: "EXECUTED", execution: { ok: true, output: random(), at: now.t } }),
        () => ({ type: "EXECUTED", execution: { ok: false, error: failure(random() < 0.7), at: now.t } }),
        () => ({ type: "CANCEL", reason: "by test", at: now.t }),
        () => ({ type: "FAIL", failure: { _tag: "WorkerLost", message: "gone" }, at: now.t }),
        () => ({ type: "HEARTBEAT" }),
        () => ({ type: "xstate.after.deadline.task.RUNNING.executing" }) as unknown as TaskEvent,
      ])();
    };

    let steps = 0;
    for (let walk = 0; walk < 400; walk++) {
      const policy = {
        timeout: pick([undefined, 100, 10_000]),
        retry: { attempts: pick([1, 2, 3]), backoff: pick(["fixed", "exponential"] as const), delay: 1_000, maxDelay: 60_000, jitter: pick([0, 0.2]) },
        heartbeatMs: pick([100, 10_000]),
      };
      let snapshot = hydrate({ record: record(pick(["QUEUED", "RUNNING", "RETRYING", "COMPLETED"] as const), pick([0, 1, 2])), revision: 3, policy }, plans.resolve.bind(plans));
      for (let i = 0; i < 12 && snapshot.status === "active"; i++) {
        const event = events();
        const expected = reference(snapshot, event);
        const got = plans.transition(snapshot, event);
        expect(got.snapshot.value).toEqual(expected.next.value);
        expect(got.snapshot.status).toBe(expected.next.status);
        expect([...got.snapshot.tags]).toEqual([...expected.next.tags]);
        expect(got.snapshot.context).toEqual(expected.next.context);
        expect(got.actions.map(shape)).toEqual(expected.actions.map(shape));
        snapshot = got.snapshot;
        steps++;
      }
    }
    expect(steps).toBeGreaterThan(2_000);
    // Most transitions were replays, not computed again.
    expect(plans.counts.replayed).toBeGreaterThan(plans.counts.learned * 10);
  });

  it("refuse a machine with an inline guard or assign, which a replay could not see", () => {
    const inlineGuard = setup({ types: { events: {} as { type: "GO" } } }).createMachine({
      initial: "a",
      states: { a: { on: { GO: { guard: () => true, target: "b" } } }, b: {} },
    });
    expect(() => new TransitionPlans(inlineGuard, undefined)).toThrow(/inline guard/);
    const inlineAssign = setup({ types: { context: {} as { n: number }, events: {} as { type: "GO" } } }).createMachine({
      context: { n: 0 },
      initial: "a",
      states: { a: { on: { GO: { actions: assign({ n: 1 }) } } } },
    });
    expect(() => new TransitionPlans(inlineAssign, undefined)).toThrow(/inline assign/);
  });
});
