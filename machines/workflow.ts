/**
 * The workflow actor: `PENDING → RUNNING → COMPLETED | FAILED | CANCELLED`.
 *
 * Pure. Coordinators hold no workflow in memory: for every event they rebuild the
 * snapshot from the KV record, take one transition (`transition()` from xstate), write
 * the new record with compare-and-set, and carry out what changed between the two
 * records: a step that became RUNNING is enqueued, one that became CANCELLED while running
 * is cancelled. The step inputs are resolved here (`${input.x}`, `${step.path}`), so a
 * reference to nothing fails the step as part of the transition.
 */
import { and, assign, setup, transition } from "xstate";
import type { StepFailure, StepState, StepStatus, WorkflowRecord, WorkflowStatus } from "./records.js";

export {
  StepStatuses,
  WorkflowStatuses,
  type FailurePolicy,
  type StepDefinition,
  type StepFailure,
  type StepState,
  type StepStatus,
  type WorkflowRecord,
  type WorkflowStatus,
} from "./records.js";

const settledSteps: ReadonlySet<StepStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED", "SKIPPED"]);
const terminal: ReadonlySet<WorkflowStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
export const isWorkflowTerminal = (status: WorkflowStatus) => terminal.has(status);

/** A step task's end, as a coordinator reports it to the run. */
export interface StepSettlement {
  readonly step: string;
  readonly status: "COMPLETED" | "FAILED" | "CANCELLED";
  readonly output?: unknown;
  readonly error?: StepFailure | undefined;
}

export type WorkflowEvent =
  | { readonly type: "START"; readonly at: number }
  /** Step tasks that ended; several at once, so a burst of completions is one transition. */
  | { readonly type: "STEPS_SETTLED"; readonly settled: ReadonlyArray<StepSettlement>; readonly at: number }
  | { readonly type: "CANCEL"; readonly reason: string; readonly at: number };

/** The task id of a step: deterministic, so enqueueing a step twice creates one task. */
export const stepTaskId = (runId: string, step: string) => `${runId}-${step}`;

const REF = /\$\{([^}]+)\}/g;
const WHOLE = /^\$\{([^}]+)\}$/;

class Unresolved extends Error {}

/** The key of a reference to a large value kept in the object store (src/store/payloads.ts). */
const PAYLOAD_REF = "troupe.payload";
const isStored = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && typeof (value as Record<string, unknown>)[PAYLOAD_REF] === "string";

/**
 * What `path` references. A path that reaches into a step's output kept in the object store
 * (too large for the record) resolves to that reference with the rest of the path
 * (`{ "troupe.payload": name, bytes, path: ["items"] }`): the worker reads the object and
 * picks the path before the handler runs. `whole`: the reference is the template's whole
 * string (inside a longer string a stored value cannot be interpolated here).
 */
const lookup = (scope: Record<string, unknown>, path: string, whole = true): unknown => {
  const parts = pathParts(path);
  let value: unknown = scope;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (isStored(value) && i > 0) {
      if (!whole) throw new Unresolved(`\${${path}} reaches into a stored output (over the payload threshold): use it as the whole value of an input field`);
      return { ...value, path: [...(Array.isArray(value.path) ? value.path : []), ...parts.slice(i)] };
    }
    if (value === null || typeof value !== "object" || !(part in (value as object))) {
      throw new Unresolved(`\${${path}} resolves to nothing`);
    }
    value = (value as Record<string, unknown>)[part];
  }
  if (value === undefined) throw new Unresolved(`\${${path}} resolves to nothing`);
  if (isStored(value) && !whole) throw new Unresolved(`\${${path}} is a stored output (over the payload threshold): use it as the whole value of an input field`);
  return value;
};

/**
 * Substitute `${input.path}` and `${step.path}`: a string that is one reference becomes
 * the referenced value (object, array, number); references inside a longer string are
 * interpolated. Throws when a reference resolves to nothing.
 */
const resolveTemplate = (template: unknown, scope: Record<string, unknown>): unknown => {
  if (typeof template === "string") {
    const whole = WHOLE.exec(template);
    if (whole) return lookup(scope, whole[1]!.trim());
    return template.replace(REF, (_m, path: string) => {
      const v = lookup(scope, path.trim(), false);
      return typeof v === "string" ? v : JSON.stringify(v);
    });
  }
  if (Array.isArray(template)) return template.map((t) => resolveTemplate(t, scope));
  if (template !== null && typeof template === "object") {
    return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, resolveTemplate(v, scope)]));
  }
  return template;
};

/** A reference's path as segments: `fetch.files[0].name` → `fetch`, `files`, `0`, `name`. */
export const pathParts = (path: string): string[] => path.replace(/\[(\d+)\]/g, ".$1").split(".").filter(Boolean);

/** Every `${path}` reference in a template, as written. */
export const referencePaths = (template: unknown): string[] => {
  const found: string[] = [];
  const walk = (t: unknown) => {
    if (typeof t === "string") for (const m of t.matchAll(REF)) found.push(m[1]!.trim());
    else if (Array.isArray(t)) t.forEach(walk);
    else if (t !== null && typeof t === "object") Object.values(t).forEach(walk);
  };
  walk(template);
  return found;
};

const firstSegment = (path: string) => path.split(/[.[]/)[0]!;

/**
 * The first `${input...}` reference in the steps' templates that the run's input does not
 * resolve, as `step "name": reason`; `undefined` when all resolve. Checked when a run
 * starts, so a missing input field is an error at once, not a failed step later.
 */
export const unresolvedInput = (steps: Readonly<Record<string, { readonly input: unknown }>>, input: unknown): string | undefined => {
  for (const [name, def] of Object.entries(steps)) {
    for (const path of referencePaths(def.input)) {
      if (firstSegment(path) !== "input") continue;
      try {
        lookup({ input }, path);
      } catch (e) {
        return `step "${name}": ${(e as Error).message}`;
      }
    }
  }
  return undefined;
};

/**
 * One scheduling pass: SKIP steps behind a failed dependency (policy `continue`), and move
 * every PENDING step whose dependencies all COMPLETED to RUNNING with its resolved input,
 * or to FAILED when its input references nothing.
 */
export const schedule = (record: WorkflowRecord): Record<string, StepState> => {
  const steps: Record<string, StepState> = { ...record.steps };
  // What `${...}` may reference: no step completes during a pass, so this is built once.
  let scope: Record<string, unknown> | undefined;
  const resolveScope = () => {
    if (scope !== undefined) return scope;
    scope = { input: record.input };
    for (const [other, state] of Object.entries(steps)) if (state.status === "COMPLETED") scope[other] = state.output;
    return scope;
  };
  const definitions = record.definition.steps;
  const names = Object.keys(definitions);
  let changed = true;
  while (changed) {
    changed = false;
    for (const name of names) {
      if (steps[name]?.status !== "PENDING") continue;
      const def = definitions[name]!;
      // Plain loops: a fan-in step has as many dependencies as the run has steps, and this
      // runs for every batch of completions.
      let blocked = false;
      let ready = true;
      for (const d of def.after) {
        const status = steps[d]?.status;
        if (status === "FAILED" || status === "CANCELLED" || status === "SKIPPED") {
          blocked = true;
          break;
        }
        if (status !== "COMPLETED") ready = false;
      }
      if (blocked) {
        steps[name] = { status: "SKIPPED" };
        changed = true;
        continue;
      }
      if (!ready) continue;
      try {
        steps[name] = { status: "RUNNING", taskId: stepTaskId(record.id, name), input: resolveTemplate(def.input, resolveScope()) };
      } catch (e) {
        steps[name] = { status: "FAILED", error: { _tag: "InvalidInput", message: `step "${name}": ${(e as Error).message}` } };
        changed = true;
      }
    }
  }
  return steps;
};

const allSettled = (steps: Readonly<Record<string, StepState>>) => Object.values(steps).every((s) => settledSteps.has(s.status));
const anyFailed = (steps: Readonly<Record<string, StepState>>) => Object.values(steps).some((s) => s.status === "FAILED");

/** Everything not yet settled is cancelled (a running step's task is cancelled by the host). */
const cancelOpen = (steps: Readonly<Record<string, StepState>>): Record<string, StepState> =>
  Object.fromEntries(Object.entries(steps).map(([n, s]) => [n, settledSteps.has(s.status) ? s : { ...s, status: "CANCELLED" as const }]));

export interface WorkflowContext {
  readonly record: WorkflowRecord;
}

const iso = (ms: number) => new Date(ms).toISOString();

export const workflowMachine = setup({
  types: {
    context: {} as WorkflowContext,
    input: {} as { record: WorkflowRecord },
    events: {} as WorkflowEvent,
  },
  guards: {
    failedFast: ({ context }) => context.record.policy === "failFast" && anyFailed(context.record.steps),
    allSettled: ({ context }) => allSettled(context.record.steps),
    anyFailed: ({ context }) => anyFailed(context.record.steps),
  },
  actions: {
    scheduleSteps: assign(({ context }) => ({ record: { ...context.record, steps: schedule(context.record) } })),
  },
}).createMachine({
  id: "workflow",
  context: ({ input }) => ({ record: input.record }),
  initial: "PENDING",
  states: {
    PENDING: {
      on: {
        START: { target: "RUNNING", actions: ["scheduleSteps"] },
        CANCEL: { target: "CANCELLED" },
      },
    },
    RUNNING: {
      entry: assign(({ context }) => ({ record: { ...context.record, status: "RUNNING" as const } })),
      always: [
        { guard: "failedFast", target: "FAILED" },
        { guard: and(["allSettled", "anyFailed"]), target: "FAILED" },
        { guard: "allSettled", target: "COMPLETED" },
      ],
      on: {
        STEPS_SETTLED: {
          actions: [
            assign(({ context, event }) => {
              const steps = { ...context.record.steps };
              for (const s of event.settled) {
                const current = steps[s.step];
                // Only a running step settles: a repeated completion changes nothing.
                if (current?.status === "RUNNING") steps[s.step] = { ...current, status: s.status, output: s.output, error: s.error };
              }
              return { record: { ...context.record, steps } };
            }),
            "scheduleSteps",
          ],
        },
        CANCEL: { target: "CANCELLED" },
      },
    },
    COMPLETED: {
      type: "final",
      entry: assign(({ context }) => ({ record: { ...context.record, status: "COMPLETED" as const } })),
    },
    FAILED: {
      type: "final",
      entry: assign(({ context }) => {
        const failed = Object.entries(context.record.steps).filter(([, s]) => s.status === "FAILED").map(([n]) => n);
        return {
          record: {
            ...context.record,
            status: "FAILED" as const,
            steps: cancelOpen(context.record.steps),
            error: { _tag: "StepFailed", message: `step${failed.length > 1 ? "s" : ""} ${failed.join(", ")} failed` },
          },
        };
      }),
    },
    CANCELLED: {
      type: "final",
      entry: assign(({ context, event }) => ({
        record: {
          ...context.record,
          status: "CANCELLED" as const,
          steps: cancelOpen(context.record.steps),
          error: { _tag: "Cancelled", message: (event as { reason?: string }).reason ?? "cancelled" },
        },
      })),
    },
  },
});

/**
 * One transition on a stored record: rebuild the snapshot, take the event, return the
 * record to write (stamped `finishedAt` when the run ends). Unchanged when nothing applies.
 */
export const advance = (record: WorkflowRecord, event: WorkflowEvent): WorkflowRecord => {
  const snapshot = workflowMachine.resolveState({ value: record.status, context: { record } });
  const [next] = transition(workflowMachine, snapshot, event);
  const after = next.context.record;
  const ended = after.status !== record.status && (after.status === "COMPLETED" || after.status === "FAILED" || after.status === "CANCELLED");
  return ended ? { ...after, finishedAt: iso(event.at) } : after;
};

