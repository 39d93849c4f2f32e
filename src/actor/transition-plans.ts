/**
 * A machine's own transitions, learned once and replayed. Given the same state and the same
 * event, XState takes the same transitions for the same guard outcomes: what varies is only
 * what the guards answer, what the assigns compute and what the delays come to, all of them
 * the machine's own functions of context and event. So the first time a state meets an event,
 * XState computes the transition (the machine's transition, with its guards, assigns and
 * delays instrumented) and the steps it took are kept: each guard's answer, each assign, each
 * action with its params, each delay. Later the same state and event replay those steps with
 * the machine's own implementations: a guard that answers otherwise ends the replay, and
 * XState computes that path too. The result is the snapshot XState made for that
 * configuration with the new context, and the actions in XState's order.
 *
 * Replaying is what makes hosting the task machine cheap: XState spends ~15–20 µs per
 * transition finding the same transition sets for every task; a replay is a few calls.
 *
 * It holds for machines whose guards, assigns and delays are named implementations (given to
 * `setup`), pure, and whose assigns are functions; whose params are static (not functions
 * of context); that spawn nothing. `test/actor/transition-plans.test.ts` checks replays against XState.
 */
import { assign, type ActorScope, type AnyActorRef, type AnyEventObject, type AnyStateMachine, createActor } from "xstate";

/** An action a transition names, as the host carries it out. */
export interface PlannedAction {
  readonly type: string;
  readonly params?: unknown;
  readonly info: { readonly context: any; readonly event: AnyEventObject };
}

type Args = { readonly context: any; readonly event: AnyEventObject };
type Fn = (args: any, params?: unknown) => any;

type Step =
  | { readonly kind: "guard"; readonly fn: Fn; readonly params: unknown; readonly answer: boolean }
  | { readonly kind: "assign"; readonly fn: Fn; readonly params: unknown }
  | { readonly kind: "delay"; readonly fn: Fn | number; readonly params: unknown }
  | { readonly kind: "action"; readonly type: string; readonly params: unknown };

interface Plan {
  readonly steps: ReadonlyArray<Step>;
  /** The snapshot XState made at the end of this path; replays give it their context. */
  readonly template: Record<string, unknown>;
}

/** The snapshot shape the plans read and make (XState's machine snapshot). */
interface Snapshot {
  readonly value: unknown;
  readonly context: unknown;
}

export class TransitionPlans<S extends Snapshot, E extends AnyEventObject> {
  /** The machine every snapshot belongs to: the given one, its implementations instrumented. */
  readonly machine: AnyStateMachine;
  private readonly plans = new Map<string, Plan[]>();
  /** Transitions computed by XState, and transitions replayed. */
  readonly counts = { learned: 0, replayed: 0 };
  private readonly keys = new WeakMap<object, string>();
  /** Snapshots XState resolved, by value: templates for `resolve`. */
  private readonly resolved = new Map<string, Record<string, unknown>>();
  /** Steps of the transition XState is computing now; instrumentation writes here. */
  private trace: Step[] | undefined;
  private readonly scope: ActorScope<any, any>;

  /** `input`: any the machine's context accepts, for the actor scope transitions run in. */
  constructor(machine: AnyStateMachine, input: unknown) {
    checkNamed(machine);
    const { guards = {}, actions = {}, delays = {} } = machine.implementations as {
      guards?: Record<string, Fn>;
      actions?: Record<string, any>;
      delays?: Record<string, Fn | number>;
    };
    const record = (step: Step) => this.trace?.push(step);
    const instrumented = {
      guards: Object.fromEntries(
        Object.entries(guards).map(([name, fn]) => [
          name,
          (args: Args, params?: unknown) => {
            const answer = Boolean(fn(args, params));
            record({ kind: "guard", fn, params, answer });
            return answer;
          },
        ]),
      ),
      actions: Object.fromEntries(
        Object.entries(actions)
          .filter(([, action]) => action?.type === "xstate.assign")
          .map(([name, action]) => {
            const fn = action.assignment;
            if (typeof fn !== "function") throw new Error(`transition plans: assign "${name}" must be a function`);
            return [
              name,
              assign((args: Args, params?: unknown) => {
                record({ kind: "assign", fn, params });
                return fn(args, params);
              }),
            ];
          }),
      ),
      delays: Object.fromEntries(
        Object.entries(delays).map(([name, delay]) => [
          name,
          (args: Args, params?: unknown) => {
            record({ kind: "delay", fn: delay, params });
            return typeof delay === "function" ? delay(args, params) : delay;
          },
        ]),
      ),
    };
    this.machine = machine.provide(instrumented as never);
    this.scope = collectingScope(this.machine, input, () => {});
  }

  /** The machine's initial snapshot for `input` (its initial state's entry actions are the host's to run; the machines hosted so far have none). */
  initial(input: unknown): S {
    return this.machine.getInitialSnapshot(this.scope, input) as unknown as S;
  }

  /** The snapshot of `value` with `context`, belonging to this machine (XState resolves each value once). */
  resolve(value: unknown, context: unknown): S {
    const key = typeof value === "string" ? value : JSON.stringify(value);
    let template = this.resolved.get(key);
    if (template === undefined) {
      const resolved = this.machine.resolveState({ value: value as never, context: context as never }) as unknown as Record<string, unknown>;
      // Kept without its context: the first record a host saw need not live as long as the host.
      this.resolved.set(key, { ...resolved, context: undefined });
      return resolved as unknown as S;
    }
    return { ...template, context } as unknown as S;
  }

  /** The snapshot `event` leads to from `snapshot`, and the actions to carry out, in order. */
  transition(snapshot: S, event: E): { readonly snapshot: S; readonly actions: PlannedAction[] } {
    const key = `${this.keyOf(snapshot)}|${event.type}`;
    const known = this.plans.get(key);
    if (known !== undefined) {
      for (const plan of known) {
        const replayed = this.replay(plan, snapshot, event);
        if (replayed !== undefined) {
          this.counts.replayed++;
          return replayed;
        }
      }
    }
    return this.learn(key, snapshot, event);
  }

  private replay(plan: Plan, snapshot: S, event: E): { snapshot: S; actions: PlannedAction[] } | undefined {
    let context = snapshot.context as any;
    const actions: PlannedAction[] = [];
    let delay: number | undefined;
    for (const step of plan.steps) {
      switch (step.kind) {
        case "guard":
          if (Boolean(step.fn({ context, event }, step.params)) !== step.answer) return undefined;
          break;
        case "assign":
          context = Object.assign({}, context, step.fn({ context, event }, step.params));
          break;
        case "delay":
          delay = typeof step.fn === "function" ? step.fn({ context, event }, step.params) : step.fn;
          break;
        case "action": {
          let params = step.params;
          if (step.type === "xstate.raise" && delay !== undefined) {
            params = { ...(params as object), delay };
            delay = undefined;
          }
          actions.push({ type: step.type, params, info: { context, event } });
          break;
        }
      }
    }
    const next = { ...plan.template, context } as unknown as S;
    return { snapshot: next, actions };
  }

  /** XState computes the transition, with the steps it takes recorded as a plan. */
  private learn(key: string, snapshot: S, event: E): { snapshot: S; actions: PlannedAction[] } {
    this.counts.learned++;
    const trace: Step[] = [];
    const actions: PlannedAction[] = [];
    this.trace = trace;
    let next: S;
    const scope = {
      ...this.scope,
      actionExecutor: (action: PlannedAction) => {
        trace.push({ kind: "action", type: action.type, params: action.params });
        actions.push(action);
      },
    };
    try {
      next = this.machine.transition(snapshot as never, event, scope) as unknown as S;
    } finally {
      this.trace = undefined;
    }
    const plans = this.plans.get(key) ?? [];
    plans.push({ steps: trace, template: { ...(next as unknown as Record<string, unknown>), context: undefined } });
    this.plans.set(key, plans);
    return { snapshot: next, actions };
  }

  /** Which configuration a snapshot is in: its value, as a string made once per value object. */
  private keyOf(snapshot: S): string {
    const value = snapshot.value;
    if (typeof value === "string") return value;
    const object = value as object;
    let key = this.keys.get(object);
    if (key === undefined) {
      key = JSON.stringify(value);
      this.keys.set(object, key);
    }
    return key;
  }
}

/**
 * The scope a transition runs in, outside any running actor: the actions it names go to
 * `collect` instead of being executed. `input` is any the machine's context accepts.
 */
export const collectingScope = (machine: AnyStateMachine, input: unknown, collect: (action: PlannedAction) => void): ActorScope<any, any> => {
  const self = createActor(machine, { input: input as never }) as unknown as AnyActorRef;
  return {
    self,
    id: "",
    sessionId: "",
    system: self.system,
    logger: () => {},
    defer: () => {},
    emit: () => {},
    stopChild: () => {},
    actionExecutor: collect,
  } as unknown as ActorScope<any, any>;
};

/**
 * Refuse a machine whose guards or assigns are written inline: only named ones are
 * instrumented, and a replay must see every one of them.
 */
const checkNamed = (machine: AnyStateMachine): void => {
  const visit = (node: any): void => {
    const transitions: any[] = [...(node.transitions?.values() ?? [])].flat().concat(node.always ?? []);
    for (const t of transitions) {
      if (typeof t.guard === "function") throw new Error(`transition plans: an inline guard in state "${node.id}"; name it in setup()`);
      checkActions(node, t.actions);
    }
    checkActions(node, node.entry);
    checkActions(node, node.exit);
    for (const child of Object.values(node.states ?? {})) visit(child);
  };
  const checkActions = (node: any, actions: unknown): void => {
    for (const a of (actions as unknown[] | undefined) ?? []) {
      if (typeof a === "function" && (a as { type?: string }).type === "xstate.assign") {
        throw new Error(`transition plans: an inline assign in state "${node.id}"; name it in setup()`);
      }
      if (typeof a === "object" && a !== null && typeof (a as { params?: unknown }).params === "function") {
        throw new Error(`transition plans: params computed from context in state "${node.id}"; a replay would repeat the first`);
      }
    }
  };
  for (const [name, action] of Object.entries((machine.implementations.actions ?? {}) as Record<string, any>)) {
    if (action?.type === "xstate.raise" && typeof action.event === "function") {
      throw new Error(`transition plans: action "${name}" raises an event computed from context; a replay would repeat the first`);
    }
  }
  visit(machine.root);
};
