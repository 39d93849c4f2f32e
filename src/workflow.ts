/**
 * `defineWorkflow`: a DAG of steps, each running a task. Checked when compiled: each
 * step's literal input against its task's input type (a field may instead be a `${...}`
 * reference), and `after` against the step names. Validated when made: unknown step
 * references, cycles, `${...}` references to steps that are not ancestors, and
 * `${input...}` references to fields the input schema does not have are errors naming
 * the step.
 */
import { Schema, SchemaAST } from "effect";
import type { FailurePolicy, StepDefinition } from "../machines/records.js";
import { pathParts, referencePaths } from "../machines/workflow.js";
import { InvalidDefinition } from "./errors.js";
import { DEFAULT_QUEUE, isValidQueueName, isValidTaskName } from "./nats/topology.js";
import type { OutputOf, TaskDefinition } from "./task.js";

/** A step whose input is not checked when compiled: the document form, a step record built in a loop. */
export interface WorkflowStep {
  /** The task to run: a definition, or a task name (then `queue` says where, default `default`). */
  readonly task: TaskDefinition | string;
  readonly queue?: string;
  /** Steps that must complete first. */
  readonly after?: ReadonlyArray<string>;
  /** The task's input; `${input.path}` and `${step.path}` are substituted. */
  readonly input: unknown;
}

/** A string holding a `${...}` reference: it stands for a value of any type until the run resolves it. */
export type StepReference = `${string}\${${string}}${string}`;

type IsAny<T> = 0 extends 1 & T ? true : false;

/**
 * What a step may give for a task input of (encoded) type `T`: the value itself, or a
 * `${...}` reference in its place, at any depth. `unknown` for an untyped task.
 */
export type StepInput<T> =
  IsAny<T> extends true ? unknown
  : unknown extends T ? unknown
  : T extends string | number | boolean | bigint | null | undefined ? T | StepReference
  : T extends ReadonlyArray<infer E> ? ReadonlyArray<StepInput<E>> | StepReference
  : T extends object ? { readonly [K in keyof T]: StepInput<T[K]> } | StepReference
  : T | StepReference;

/** The wire form of a task's input: what a step's resolved input is checked against by the worker. */
type EncodedInputOf<D> = D extends TaskDefinition<any, any, infer IE, any> ? IE : unknown;

/**
 * The steps of a workflow whose step `K` runs task `T[K]`: its input typed from the
 * task's input, its `after` from the step names. Steps built as a `Record<string, ...>`
 * (no known names) are not checked when compiled.
 */
export type WorkflowSteps<T> = {
  readonly [K in keyof T]: {
    /** The task to run: a definition, or a task name (then `queue` says where, default `default`). */
    readonly task: T[K];
    readonly queue?: string;
    /** Steps that must complete first. */
    readonly after?: ReadonlyArray<NoInfer<keyof T & string>>;
    /** The task's input; `${input.path}` and `${step.path}` are substituted. */
    readonly input: NoInfer<string extends keyof T ? unknown : StepInput<EncodedInputOf<T[K]>>>;
  };
};

/** What `I` is when `input` was left out: it turns `name`'s type into the error message. */
declare const missingInput: unique symbol;
type MissingInput = typeof missingInput;
type NeedsInput = "defineWorkflow needs `input`: the Schema of the run's input (Schema.Struct({}) for none)";

export interface WorkflowOptions<I, IE, T> {
  readonly name: [I] extends [MissingInput] ? NeedsInput : string;
  readonly input?: Schema.Codec<I, IE>;
  /** Each step by name: `{ task, input, after?, queue? }`. */
  readonly steps: WorkflowSteps<T>;
  /** `failFast` (default): a failed step fails the run and cancels the rest. `continue`: independent branches finish. */
  readonly failurePolicy?: FailurePolicy;
}

/** Step outputs by step name, for a workflow whose step `K` runs task `T[K]`. */
export type WorkflowOutputs<T> = { readonly [K in keyof T]: T[K] extends TaskDefinition ? OutputOf<T[K]> : unknown };

export interface WorkflowDefinition<I = any, T = Record<string, TaskDefinition | string>, IE = any> {
  readonly _tag: "WorkflowDefinition";
  readonly name: string;
  readonly input: Schema.Codec<I, IE>;
  readonly steps: Readonly<Record<string, StepDefinition>>;
  /** The definitions of the steps given one (not a task name): their outputs decode with its schema. */
  readonly tasks: Readonly<Record<string, TaskDefinition>>;
  readonly policy: FailurePolicy;
  /** Phantom: the typed step outputs of `result()`. */
  readonly _outputs?: WorkflowOutputs<T>;
}

export type WorkflowInputOf<W> = W extends WorkflowDefinition<infer I, any, any> ? I : never;
export type WorkflowOutputsOf<W> = W extends WorkflowDefinition<any, infer T, any> ? WorkflowOutputs<T> : never;

const STEP_NAME = /^[A-Za-z0-9_-]+$/;

const invalid = (workflow: string, message: string, at: { step?: string; reference?: string } = {}) =>
  new InvalidDefinition({ message: `workflow "${workflow}": ${message}`, ...at });

/** An Effect Schema (a struct, a class, a primitive): it has an AST. */
const isCodec = (value: unknown) => (typeof value === "object" || typeof value === "function") && value !== null && "ast" in value;

/**
 * The part of an `${input...}` path (after `input`) that the input schema says cannot
 * exist, e.g. `"urll"`; `undefined` when it can, or when the schema cannot say (not an
 * object of known fields: a record, `Unknown`, an array, a recursive schema). Read on
 * the encoded side: references resolve in the input as it is sent.
 */
const absentInputField = (input: Schema.Top, parts: ReadonlyArray<string>): string | undefined => {
  let shapes: ReadonlyArray<SchemaAST.AST> = [SchemaAST.toEncoded(input.ast)];
  for (let i = 0; i < parts.length; i++) {
    const objects = shapes.flatMap((a) => (a._tag === "Union" ? a.types : [a])).filter((a) => a._tag !== "Undefined" && a._tag !== "Null");
    if (objects.length === 0 || !objects.every((a) => a._tag === "Objects" && a.indexSignatures.length === 0)) return undefined;
    shapes = (objects as ReadonlyArray<SchemaAST.Objects>).flatMap((o) => o.propertySignatures.filter((p) => p.name === parts[i]).map((p) => p.type));
    if (shapes.length === 0) return parts.slice(0, i + 1).join(".");
  }
  return undefined;
};

export const defineWorkflow = <I = MissingInput, IE = MissingInput, T extends Record<string, TaskDefinition | string> = Record<string, TaskDefinition | string>>(
  options: WorkflowOptions<I, IE, T>,
): WorkflowDefinition<I, T, IE> => {
  const name: string = options.name;
  if (!isValidTaskName(name)) throw invalid(name, "use dot-separated segments of letters, digits, `_` and `-` for its name");
  if (options.input === undefined) throw invalid(name, "`input` is missing: give the Schema of the run's input (Schema.Struct({}) for none)");
  if (!isCodec(options.input)) throw invalid(name, "`input` must be a Schema (e.g. Schema.Struct({ url: Schema.String }))");
  const input = options.input;
  if (options.steps === null || typeof options.steps !== "object") throw invalid(name, "`steps` must be an object of steps");
  const given = options.steps as Readonly<Record<string, WorkflowStep>>;
  const entries = Object.entries(given);
  if (entries.length === 0) throw invalid(name, "it has no steps");
  const steps: Record<string, StepDefinition> = {};
  const tasks: Record<string, TaskDefinition> = {};
  for (const [step, def] of entries) {
    if (!STEP_NAME.test(step) || step === "input") throw invalid(name, `step name "${step}": letters, digits, "_" and "-", and not "input"`, { step });
    if (def === null || typeof def !== "object" || def.task === undefined) throw invalid(name, `step "${step}" needs a \`task\` (a definition or a task name)`, { step });
    if (typeof def.task !== "string") tasks[step] = def.task;
    const task = typeof def.task === "string" ? def.task : def.task.name;
    const queue = typeof def.task === "string" ? (def.queue ?? DEFAULT_QUEUE) : def.task.queue;
    if (!isValidTaskName(task)) throw invalid(name, `step "${step}" names an invalid task "${task}"`, { step });
    if (!isValidQueueName(queue)) throw invalid(name, `step "${step}" names an invalid queue "${queue}"`, { step });
    const after = [...(def.after ?? [])];
    for (const dep of after) {
      if (!(dep in given)) throw invalid(name, `step "${step}" runs after unknown step "${dep}"`, { step });
      if (dep === step) throw invalid(name, `step "${step}" runs after itself`, { step });
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
    for (const path of referencePaths(def.input)) {
      const [ref, ...rest] = pathParts(path);
      const reference = `\${${path}}`;
      if (ref === "input") {
        const absent = absentInputField(input, rest);
        if (absent !== undefined) throw invalid(name, `step "${step}" references ${reference}, but the input schema has no field "${absent}"`, { step, reference });
        continue;
      }
      if (ref !== undefined && mine.has(ref)) continue;
      throw invalid(
        name,
        ref !== undefined && ref in steps
          ? `step "${step}" references ${reference} but "${ref}" is not one of its ancestors (add it to "after")`
          : `step "${step}" references ${reference}, which is neither "input" nor a step`,
        { step, reference },
      );
    }
  }
  return { _tag: "WorkflowDefinition", name, input, steps, tasks, policy: options.failurePolicy ?? "failFast" };
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
