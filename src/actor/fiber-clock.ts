/**
 * The XState clock of every Troupe actor: `setTimeout` forks a fiber that runs
 * `Effect.sleep` and then the callback; `clearTimeout` interrupts that fiber.
 *
 * Built inside an Effect so it captures that Effect's services: under `TestClock.layer()`
 * the machines' `after` timers (deadline, heartbeat, backoff) fire on `TestClock.adjust`,
 * and tests never sleep.
 */
import { Context, Effect, Fiber } from "effect";
/** What `createActor(logic, { clock })` takes. */
interface XStateClock {
  setTimeout(fn: (...args: any[]) => void, timeout: number): any;
  clearTimeout(id: any): void;
}

export interface FiberClock extends XStateClock {
  /** Timers scheduled and not yet fired or cleared. */
  readonly pending: () => number;
}

export const makeFiberClock: Effect.Effect<FiberClock> = Effect.map(Effect.context<never>(), (services) =>
  fiberClockFrom(services),
);

export const fiberClockFrom = (services: Context.Context<never>): FiberClock => {
  const run = Effect.runForkWith(services);
  const fibers = new Map<number, Fiber.Fiber<void>>();
  let next = 0;
  return {
    setTimeout(fn: (...args: unknown[]) => void, timeout: number) {
      const id = ++next;
      if (!Number.isFinite(timeout)) return id; // a timer that never fires needs no fiber
      const fiber = run(
        Effect.andThen(
          Effect.sleep(Math.max(0, timeout)),
          Effect.sync(() => {
            fibers.delete(id);
            fn();
          }),
        ),
      );
      fibers.set(id, fiber);
      return id;
    },
    clearTimeout(id: number) {
      const fiber = fibers.get(id);
      if (fiber === undefined) return;
      fibers.delete(id);
      run(Fiber.interrupt(fiber));
    },
    pending: () => fibers.size,
  };
};

/** The clock for hosts that run on real time. */
export const liveFiberClock = (): FiberClock => fiberClockFrom(Context.empty() as Context.Context<never>);
