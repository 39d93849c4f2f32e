/**
 * `defineWorkflow`: a DAG of steps, each running a task. Validated when made: unknown
 * step references, cycles, and `${...}` references to steps that are not ancestors are
 * errors naming the step.
 */
import { Schema } from "effect";
import type { FailurePolicy, StepDefinition } from "../machines/records.js";
import { referencedNames } from "../machines/workflow.js";
import { InvalidDefinition } from "./errors.js";
import { DEFAULT_QUEUE, isValidQueueName, isValidTaskName } from "./nats/topology.js";
import type { OutputOf, TaskDefinition } from "./task.js";

export interface WorkflowStep {
  /** The task to run: a definition, or a task name (then `queue` says where, default `default`). */
  readonly task: TaskDefinition | string;
  readonly queue?: string;
  /** Steps that must complete first. */
  readonly after?: ReadonlyArray<string>;
  /** The task's input; `${input.path}` and `${step.path}` are substituted. */
  readonly input: unknown;
}

export interface WorkflowOptions<I, IE, S extends Record<string, WorkflowStep>> {
  readonly name: string;
  readonly input: Schema.Codec<I, IE>;
  readonly steps: S;
  /** `failFast` (default): a failed step fails the run and cancels the rest. `continue`: independent branches finish. */
  readonly failurePolicy?: FailurePolicy;
}

type StepOutput<T> = T extends { task: infer D } ? (D extends TaskDefinition ? OutputOf<D> : unknown) : unknown;
export type WorkflowOutputs<S> = { readonly [K in keyof S]: StepOutput<S[K]> };

export interface WorkflowDefinition<I = any, S = Record<string, WorkflowStep>, IE = any> {
  readonly _tag: "WorkflowDefinition";
  readonly name: string;
  readonly input: Schema.Codec<I, IE>;
  readonly steps: Readonly<Record<string, StepDefinition>>;
  /** The definitions of the steps given one (not a task name): their outputs decode with its schema. */
  readonly tasks: Readonly<Record<string, TaskDefinition>>;
  readonly policy: FailurePolicy;
  /** Phantom: the typed step outputs of `result()`. */
  readonly _outputs?: WorkflowOutputs<S>;
}

export type WorkflowInputOf<W> = W extends WorkflowDefinition<infer I, any, any> ? I : never;
export type WorkflowOutputsOf<W> = W extends WorkflowDefinition<any, infer S, any> ? WorkflowOutputs<S> : never;

const STEP_NAME = /^[A-Za-z0-9_-]+$/;

const invalid = (workflow: string, message: string) => new InvalidDefinition({ message: `workflow "${workflow}": ${message}` });

export const defineWorkflow = <I, IE, S extends Record<string, WorkflowStep>>(
  options: WorkflowOptions<I, IE, S>,
): WorkflowDefinition<I, S, IE> => {
  const { name } = options;
  if (!isValidTaskName(name)) throw invalid(name, "use dot-separated segments of letters, digits, `_` and `-` for its name");
  const entries = Object.entries(options.steps);
  if (entries.length === 0) throw invalid(name, "it has no steps");
  const steps: Record<string, StepDefinition> = {};
  const tasks: Record<string, TaskDefinition> = {};
  for (const [step, def] of entries) {
    if (typeof def.task !== "string") tasks[step] = def.task;
    if (!STEP_NAME.test(step) || step === "input") throw invalid(name, `step name "${step}": letters, digits, "_" and "-", and not "input"`);
    const task = typeof def.task === "string" ? def.task : def.task.name;
    const queue = typeof def.task === "string" ? (def.queue ?? DEFAULT_QUEUE) : def.task.queue;
    if (!isValidTaskName(task)) throw invalid(name, `step "${step}" names an invalid task "${task}"`);
    if (!isValidQueueName(queue)) throw invalid(name, `step "${step}" names an invalid queue "${queue}"`);
    const after = [...(def.after ?? [])];
    for (const dep of after) {
      if (!(dep in options.steps)) throw invalid(name, `step "${step}" runs after unknown step "${dep}"`);
      if (dep === step) throw invalid(name, `step "${step}" runs after itself`);
    }
    steps[step] = { task, queue, after, input: def.input };
  }
  // Cycles: depth-first, reporting the loop.
  const state = new Map<string, "visiting" | "done">();
  const visit = (step: string, path: string[]) => {
    if (state.get(step) === "done") return;
    if (state.get(step) === "visiting") {
      const loop = [...path.slice(path.indexOf(step)), step];
      throw invalid(name, `step "${step}" is in a cycle: ${loop.join(" → ")}`);
    }
    state.set(step, "visiting");
    for (const dep of steps[step]!.after) visit(dep, [...path, step]);
    state.set(step, "done");
  };
  for (const step of Object.keys(steps)) visit(step, []);
  // References: only the run's input and the step's ancestors.
  const ancestors = (step: string, seen = new Set<string>()): Set<string> => {
    for (const dep of steps[step]!.after) {
      if (!seen.has(dep)) {
        seen.add(dep);
        ancestors(dep, seen);
      }
    }
    return seen;
  };
  for (const [step, def] of Object.entries(steps)) {
    const mine = ancestors(step);
    for (const ref of referencedNames(def.input)) {
      if (ref === "input" || mine.has(ref)) continue;
      throw invalid(
        name,
        ref in steps
          ? `step "${step}" references \${${ref}...} but "${ref}" is not one of its ancestors (add it to "after")`
          : `step "${step}" references \${${ref}...}, which is neither "input" nor a step`,
      );
    }
  }
  return { _tag: "WorkflowDefinition", name, input: options.input, steps, tasks, policy: options.failurePolicy ?? "failFast" };
};

/** The field types a workflow document may declare for its input (`?` after one: optional). */
const FIELD_TYPES: Readonly<Record<string, Schema.Top>> = {
  string: Schema.String,
  number: Schema.Number,
  integer: Schema.Int,
  boolean: Schema.Boolean,
  object: Schema.Record(Schema.String, Schema.Unknown),
  array: Schema.Array(Schema.Unknown),
  any: Schema.Unknown,
};

/** A document's `input: { field: type }` as a Schema; any input when it declares none. */
const documentInput = (workflow: string, declared: unknown): Schema.Codec<unknown, unknown> => {
  if (declared === undefined) return Schema.Unknown;
  if (declared === null || typeof declared !== "object" || Array.isArray(declared)) {
    throw invalid(workflow, "`input` declares the input's fields, e.g. `input: { url: string, width: number? }`");
  }
  const fields: Record<string, Schema.Top> = {};
  for (const [field, type] of Object.entries(declared)) {
    const optional = typeof type === "string" && type.endsWith("?");
    const base = FIELD_TYPES[typeof type === "string" ? type.replace(/\?$/, "") : ""];
    if (base === undefined) {
      throw invalid(workflow, `input field "${field}" has type ${JSON.stringify(type)}; use one of ${Object.keys(FIELD_TYPES).join(", ")} (add "?" for optional)`);
    }
    fields[field] = optional ? Schema.optional(base) : base;
  }
  return Schema.Struct(fields) as unknown as Schema.Codec<unknown, unknown>;
};

/**
 * A workflow from a JSON or YAML document (the CLI's form): tasks by name; the input is
 * checked against the document's `input` declaration, when it has one.
 */
export const workflowFromDocument = (doc: unknown): WorkflowDefinition => {
  if (doc === null || typeof doc !== "object") throw new InvalidDefinition({ message: "a workflow document is an object" });
  const d = doc as { name?: unknown; failurePolicy?: unknown; steps?: unknown; input?: unknown };
  if (typeof d.name !== "string") throw new InvalidDefinition({ message: "a workflow document needs a `name`" });
  if (d.steps === null || typeof d.steps !== "object") throw invalid(d.name, "`steps` must be an object of steps");
  if (d.failurePolicy !== undefined && d.failurePolicy !== "failFast" && d.failurePolicy !== "continue") {
    throw invalid(d.name, "`failurePolicy` is `failFast` or `continue`");
  }
  const steps: Record<string, WorkflowStep> = {};
  for (const [step, raw] of Object.entries(d.steps as Record<string, unknown>)) {
    const s = (raw ?? {}) as { task?: unknown; queue?: unknown; after?: unknown; input?: unknown };
    if (typeof s.task !== "string") throw invalid(d.name, `step "${step}" needs a \`task\` (a task name)`);
    if (s.after !== undefined && !(Array.isArray(s.after) && s.after.every((a) => typeof a === "string"))) {
      throw invalid(d.name, `step "${step}": \`after\` is a list of step names`);
    }
    steps[step] = {
      task: s.task,
      ...(typeof s.queue === "string" ? { queue: s.queue } : {}),
      ...(s.after === undefined ? {} : { after: s.after as string[] }),
      input: s.input ?? {},
    };
  }
  return defineWorkflow({
    name: d.name,
    input: documentInput(d.name, d.input),
    steps,
    ...(d.failurePolicy === undefined ? {} : { failurePolicy: d.failurePolicy as FailurePolicy }),
  });
};
