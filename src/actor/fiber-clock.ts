/**
 * The XState clock of every Troupe actor, on Effect fibers.
 *
 * Timers wait in a min-heap; one fiber sleeps (`Effect.sleep`) until the earliest is due,
 * fires everything due, and sleeps again. A timer earlier than the one the fiber sleeps for
 * interrupts that fiber and arms a new one. Clearing the last timer interrupts it too, so a
 * stopped actor leaves no fiber (and no Node timer) behind to keep a process alive; other
 * clears leave it asleep (it wakes, finds nothing due, and sleeps again), which is cheaper
 * than re-arming once per task.
 * One fiber for all timers, not one per timer: every task arms a heartbeat, and forking
 * and interrupting a fiber per task showed in the profile.
 *
 * Built inside an Effect so it captures that Effect's services: under `TestClock.layer()`
 * the machines' `after` timers and delayed events (deadline, heartbeat) fire on
 * `TestClock.adjust`, and tests never sleep.
 */
import { Clock, Context, Effect, Fiber } from "effect";

/** What `createActor(logic, { clock })` takes. */
interface XStateClock {
  setTimeout(fn: (...args: any[]) => void, timeout: number): any;
  clearTimeout(id: any): void;
}

export interface FiberClock extends XStateClock {
  /** Timers scheduled and not yet fired or cleared. */
  readonly pending: () => number;
  /** The time on this clock (epoch ms; under `TestClock`, the test's time). */
  readonly now: () => number;
}

interface Timer {
  readonly id: number;
  readonly at: number;
  readonly fn: () => void;
}

const before = (a: Timer, b: Timer) => a.at < b.at || (a.at === b.at && a.id < b.id);

/** A binary min-heap of timers by due time, then by order of scheduling. */
class TimerHeap {
  private readonly items: Timer[] = [];

  get top(): Timer | undefined {
    return this.items[0];
  }

  get size(): number {
    return this.items.length;
  }

  /** Keep only the timers `keep` says are live. */
  rebuild(keep: (t: Timer) => boolean): void {
    const live = this.items.filter(keep);
    this.items.length = 0;
    for (const t of live) this.push(t);
  }

  push(t: Timer): void {
    const h = this.items;
    h.push(t);
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): Timer | undefined {
    const h = this.items;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

export const makeFiberClock: Effect.Effect<FiberClock> = Effect.map(Effect.context<never>(), (services) =>
  fiberClockFrom(services),
);

/** Where a timer callback's error goes (its own host reports what failed; the clock only survives it). */
const reportTimerError = (error: unknown) => {
  process.emitWarning(`a timer callback threw: ${error instanceof Error ? error.message : String(error)}`, "TroupeTimerWarning");
};

export const fiberClockFrom = (services: Context.Context<never>, onError: (error: unknown) => void = reportTimerError): FiberClock => {
  const run = Effect.runForkWith(services);
  const clock = Context.get(services, Clock.Clock);
  const now = () => clock.currentTimeMillisUnsafe();
  const live = new Map<number, Timer>();
  const heap = new TimerHeap();
  let armed: { at: number; fiber: Fiber.Fiber<void> } | undefined;
  let next = 0;

  /** The earliest timer still live, dropping cleared ones from the top. */
  const earliest = (): Timer | undefined => {
    while (heap.top !== undefined && !live.has(heap.top.id)) heap.pop();
    return heap.top;
  };

  const fire = () => {
    armed = undefined;
    for (let t = earliest(); t !== undefined && t.at <= now(); t = earliest()) {
      heap.pop();
      live.delete(t.id);
      // Each callback on its own: one that throws must not keep the others (heartbeats,
      // leases, stop and disconnect timeouts) from firing, now or ever after.
      try {
        t.fn();
      } catch (error) {
        onError(error);
      }
    }
    arm();
  };

  const arm = () => {
    const top = earliest();
    if (armed !== undefined && (top === undefined || top.at < armed.at)) {
      run(Fiber.interrupt(armed.fiber));
      armed = undefined;
    }
    if (top === undefined || armed !== undefined) return;
    armed = { at: top.at, fiber: run(Effect.andThen(Effect.sleep(Math.max(0, top.at - now())), Effect.sync(fire))) };
  };

  return {
    setTimeout(fn: (...args: unknown[]) => void, timeout: number) {
      const id = ++next;
      if (!Number.isFinite(timeout)) return id; // a timer that never fires needs no entry
      const timer = { id, at: now() + Math.max(0, timeout), fn };
      live.set(id, timer);
      heap.push(timer);
      arm();
      return id;
    },
    clearTimeout(id: number) {
      if (!live.delete(id)) return;
      if (live.size === 0) return arm();
      // Cleared timers wait in the heap until they would have fired (a heartbeat's 10 s):
      // under load that is tens of thousands of dead entries kept alive, so drop them
      // once they are most of the heap.
      if (heap.size > 1_024 && heap.size > 4 * live.size) heap.rebuild((t) => live.has(t.id));
    },
    pending: () => live.size,
    now,
  };
};

/** The clock for hosts that run on real time. */
export const liveFiberClock = (onError?: (error: unknown) => void): FiberClock => fiberClockFrom(Context.empty() as Context.Context<never>, onError);
