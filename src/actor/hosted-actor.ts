/**
 * A machine hosted by its transitions: the actor shape (events in one at a time through a
 * mailbox, the machine's own transitions replayed through transition plans, delayed events
 * on the fiber clock) without an XState actor. The host names what each of the machine's
 * own actions does; `xstate.raise` with a delay and `xstate.cancel` are carried out here.
 * The worker is hosted this way: it hears of every delivery taken and settled, two events
 * per task, which a replay handles in a few calls.
 */
import type { AnyEventObject } from "xstate";
import type { FiberClock } from "./fiber-clock.js";
import type { PlannedAction, TransitionPlans } from "./transition-plans.js";

interface Snapshot {
  readonly value: unknown;
  readonly context: unknown;
  readonly status?: string;
}

export type ActionHandlers = Readonly<Record<string, (action: PlannedAction) => void>>;

export class HostedActor<S extends Snapshot, E extends AnyEventObject> {
  private current: S;
  private readonly mailbox: E[] = [];
  private busy = false;
  private stopped = false;
  private readonly timers = new Map<string, unknown>();

  constructor(
    private readonly plans: TransitionPlans<S, E>,
    initial: S,
    private readonly clock: FiberClock,
    private readonly handlers: ActionHandlers,
  ) {
    this.current = initial;
  }

  get snapshot(): S {
    return this.current;
  }

  /** Events go in one at a time; one sent while another is processed waits its turn. */
  send(event: E): void {
    if (this.stopped) return;
    this.mailbox.push(event);
    if (this.busy) return;
    this.busy = true;
    try {
      for (let next = this.mailbox.shift(); next !== undefined && !this.stopped; next = this.mailbox.shift()) {
        const { snapshot, actions } = this.plans.transition(this.current, next);
        this.current = snapshot;
        for (const action of actions) this.carryOut(action);
      }
    } finally {
      this.busy = false;
    }
  }

  /** No more events; its timers cleared. */
  stop(): void {
    this.stopped = true;
    this.mailbox.length = 0;
    for (const timer of this.timers.values()) this.clock.clearTimeout(timer);
    this.timers.clear();
  }

  private carryOut(action: PlannedAction): void {
    switch (action.type) {
      case "xstate.raise": {
        const { event, id, delay } = action.params as { event: E; id?: string; delay?: number };
        // A delay of infinity (an option turned off) is never due.
        if (delay !== undefined && Number.isFinite(delay)) this.schedule(id ?? event.type, event, delay);
        return;
      }
      case "xstate.cancel":
        return this.cancel((action.params as { sendId: string }).sendId);
      default:
        this.handlers[action.type]?.(action);
    }
  }

  private schedule(id: string, event: E, delay: number): void {
    this.cancel(id);
    this.timers.set(
      id,
      this.clock.setTimeout(() => {
        this.timers.delete(id);
        this.send(event);
      }, delay),
    );
  }

  private cancel(id: string): void {
    const timer = this.timers.get(id);
    if (timer === undefined) return;
    this.timers.delete(id);
    this.clock.clearTimeout(timer);
  }
}
