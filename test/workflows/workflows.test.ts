import { afterEach, describe, expect, expectTypeOf, it, vi } from "vitest";
import {
  defineTask,
  defineWorkflow,
  InvalidDefinition,
  InvalidInput,
  Schema,
  WorkflowFailed,
  type WorkflowRecord,
} from "../../src/index.js";
import { connectionOf, workflowFromDocument } from "../../src/internals.js";
import type { WorkflowInputOf, WorkflowOutputsOf } from "../../src/workflow.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { untilAborted } from "../helpers/handlers.js";
import { recordWhere } from "../helpers/records.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const calls = new Map<string, number>();
const count = (name: string) => calls.set(name, (calls.get(name) ?? 0) + 1);

const download = defineTask({
  name: "images.download",
  input: Schema.Struct({ url: Schema.String }),
  output: Schema.Struct({ path: Schema.String, bytes: Schema.Number }),
  handler: async ({ url }) => {
    count("download");
    return { path: `/tmp/${url.split("/").pop()}`, bytes: 1_000 };
  },
});
const resize = defineTask({
  name: "images.resize",
  input: Schema.Struct({ path: Schema.String, width: Schema.Number }),
  output: Schema.Struct({ path: Schema.String }),
  handler: async ({ path, width }) => {
    count(`resize-${width}`);
    if (width === 0) throw new Error("width 0 is not a size");
    return { path: `${path}@${width}` };
  },
});
const summarize = defineTask({
  name: "images.summarize",
  input: Schema.Struct({ files: Schema.Array(Schema.String), source: Schema.Unknown }),
  output: Schema.String,
  handler: async ({ files }) => {
    count("summarize");
    return files.join(",");
  },
});
const tasks = [download, resize, summarize];

const thumbnails = defineWorkflow({
  name: "images.thumbnails",
  input: Schema.Struct({ url: Schema.String }),
  steps: {
    fetch: { task: download, input: { url: "${input.url}" } },
    small: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", width: 128 } },
    large: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", width: 1024 } },
    report: { task: summarize, after: ["small", "large"], input: { files: ["${small.path}", "${large.path}"], source: "${fetch}" } },
  },
});

describe("workflows", () => {
  it("runs a diamond: fan-out after fetch, fan-in at report, with results passed by reference", async () => {
    calls.clear();
    const troupe = await connect(server());
    await troupe.worker({ tasks, concurrency: 4 });
    await troupe.coordinator();
    const wf = await troupe.start(thumbnails, { url: "https://example.com/cat.png" });
    const out = await wf.result();
    expect(out.fetch).toEqual({ path: "/tmp/cat.png", bytes: 1_000 });
    expect(out.small).toEqual({ path: "/tmp/cat.png@128" });
    expect(out.report).toBe("/tmp/cat.png@128,/tmp/cat.png@1024");
    const record = await wf.get();
    expect(record.status).toBe("COMPLETED");
    expect(record.steps.report?.input).toEqual({ files: ["/tmp/cat.png@128", "/tmp/cat.png@1024"], source: { path: "/tmp/cat.png", bytes: 1_000 } });
    expect(Object.values(record.steps).every((s) => s.taskId?.startsWith(`${wf.id}-`))).toBe(true);
    expect([...calls.values()].every((n) => n === 1)).toBe(true);
    expect(calls.size).toBe(4);
  });

  it("rejects bad workflow input at start", async () => {
    const troupe = await connect(server());
    const error = await troupe.start(thumbnails, { url: 42 } as never).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInput);
  });

  it("fails fast: a failed step fails the run, cancels running steps, never starts the rest", async () => {
    calls.clear();
    const slow = defineTask({
      name: "slow.wait",
      input: Schema.Struct({}),
      output: Schema.Void,
      handler: (_i, ctx) => untilAborted(ctx.signal, undefined),
    });
    const wf = defineWorkflow({
      name: "fails.fast",
      input: Schema.Struct({}),
      steps: {
        fetch: { task: download, input: { url: "x/a.png" } },
        broken: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", width: 0 } },
        waiting: { task: slow, after: ["fetch"], input: {} },
        never: { task: summarize, after: ["broken", "waiting"], input: { files: [], source: null } },
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [...tasks, slow], concurrency: 4 });
    await troupe.coordinator();
    const run = await troupe.start(wf, {});
    const error = await run.result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WorkflowFailed);
    const steps = (error as WorkflowFailed).steps;
    expect(steps.broken?.status).toBe("FAILED");
    expect(steps.broken?.error?.message).toContain("width 0");
    expect(steps.waiting?.status).toBe("CANCELLED");
    expect(steps.never?.status).toBe("SKIPPED"); // its dependency failed: it can never run
    expect(calls.get("summarize")).toBeUndefined();
    // The run's write is its end; its running steps are cancelled right after it.
    const waitingId = (await run.get()).steps.waiting!.taskId!;
    await vi.waitFor(async () => expect((await troupe.get(waitingId))?.status).toBe("CANCELLED"), { timeout: 10_000 });
  });

  it("continues independent branches under `continue`, skipping what depends on the failure", async () => {
    calls.clear();
    const wf = defineWorkflow({
      name: "keeps.going",
      input: Schema.Struct({}),
      failurePolicy: "continue",
      steps: {
        fetch: { task: download, input: { url: "x/b.png" } },
        broken: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", width: 0 } },
        fine: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", width: 64 } },
        after_broken: { task: summarize, after: ["broken"], input: { files: [], source: null } },
        after_fine: { task: summarize, after: ["fine"], input: { files: ["${fine.path}"], source: null } },
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks, concurrency: 4 });
    await troupe.coordinator();
    const run = await troupe.start(wf, {});
    const error = (await run.result().catch((e: unknown) => e)) as WorkflowFailed;
    expect(error).toBeInstanceOf(WorkflowFailed);
    expect(Object.fromEntries(Object.entries(error.steps).map(([n, s]) => [n, s.status]))).toEqual({
      fetch: "COMPLETED",
      broken: "FAILED",
      fine: "COMPLETED",
      after_broken: "SKIPPED",
      after_fine: "COMPLETED",
    });
  });

  it("fails a step whose reference resolves to nothing, with a clear error", async () => {
    const wf = defineWorkflow({
      name: "bad.reference",
      input: Schema.Struct({}),
      steps: {
        fetch: { task: download, input: { url: "x/c.png" } },
        use: { task: resize, after: ["fetch"], input: { path: "${fetch.nope.deeper}", width: 1 } },
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks });
    await troupe.coordinator();
    const error = (await (await troupe.start(wf, {})).result().catch((e: unknown) => e)) as WorkflowFailed;
    expect(error.steps.use).toMatchObject({ status: "FAILED", error: { _tag: "InvalidInput" } });
    expect(error.steps.use?.error?.message).toContain("${fetch.nope.deeper} resolves to nothing");
  });

  it("cancels a run: running steps are interrupted, pending ones never start", async () => {
    const slow = defineTask({
      name: "slow.cancel",
      input: Schema.Struct({}),
      output: Schema.Void,
      handler: (_i, ctx) => untilAborted(ctx.signal, undefined),
    });
    const wf = defineWorkflow({
      name: "to.cancel",
      input: Schema.Struct({}),
      steps: { first: { task: slow, input: {} }, second: { task: slow, after: ["first"], input: {} } },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [slow] });
    await troupe.coordinator();
    const run = await troupe.start(wf, {});
    const firstTask = (await run.get()).steps.first!.taskId!;
    await recordWhere(troupe, firstTask, (r) => r.status === "RUNNING");
    const cancelled = (await run.cancel("changed my mind")) as unknown as WorkflowRecord;
    expect(cancelled.status).toBe("CANCELLED");
    expect((await run.result().catch((e: unknown) => e)) as WorkflowFailed).toMatchObject({ status: "CANCELLED" });
    expect((await troupe.get(firstTask))?.status).toBe("CANCELLED");
    expect((await run.get()).steps.second?.status).toBe("CANCELLED");
    expect(await troupe.get(`${run.id}-second`)).toBeUndefined();
  });

  it("decodes each step's output with its task's schema, as TaskRun.result() does", async () => {
    const stamp = defineTask({
      name: "wf.stamp",
      input: Schema.Struct({ at: Schema.Number }),
      output: Schema.DateFromString,
      handler: async ({ at }) => new Date(at),
    });
    const wf = defineWorkflow({
      name: "dated",
      input: Schema.Struct({ at: Schema.Number }),
      steps: { when: { task: stamp, input: { at: "${input.at}" } }, named: { task: "wf.untyped", input: {} } },
    });
    const untyped = defineTask({ name: "wf.untyped", input: Schema.Struct({}), output: Schema.String, handler: async () => "plain" });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [stamp, untyped] });
    await troupe.coordinator();
    const run = await troupe.start(wf, { at: 86_400_000 });
    const out = await run.result({ timeout: "20 seconds" });
    expect(out.when).toBeInstanceOf(Date);
    expect((out.when as Date).toISOString()).toBe("1970-01-02T00:00:00.000Z");
    expect(out.named).toBe("plain"); // a step named by task only comes back as stored
    expect((await troupe.workflowRun(wf, run.id).result()).when).toBeInstanceOf(Date);
  });

  it("checks the input's ${input...} references at start, and says what a cancel did", async () => {
    const wf = defineWorkflow({
      name: "needs.input",
      input: Schema.Unknown,
      steps: { only: { task: download, input: { url: "${input.url}" } } },
    });
    const troupe = await connect(server());
    const error = await troupe.start(wf, { nope: 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInput);
    expect((error as InvalidInput).message).toContain("${input.url} resolves to nothing");

    const run = await troupe.start(wf, { url: "x/y.png" }); // no coordinator, no worker: it stays RUNNING
    expect(await run.cancel("first")).toMatchObject({ id: run.id, status: "CANCELLED", cancelled: true });
    const again = await run.cancel("second");
    expect(again).toMatchObject({ status: "CANCELLED", cancelled: false });
    expect(again.message).toContain("already ended");
  });

  it("runs a 1,000-step fan-out / fan-in", async () => {
    const part = defineTask({
      name: "fan.part",
      input: Schema.Struct({ i: Schema.Number, seed: Schema.Number }),
      output: Schema.Number,
      handler: async ({ i, seed }) => i + seed,
    });
    const total = defineTask({
      name: "fan.total",
      input: Schema.Struct({ parts: Schema.Array(Schema.Number) }),
      output: Schema.Number,
      handler: async ({ parts }) => parts.reduce((a, b) => a + b, 0),
    });
    const n = 998;
    const steps: Record<string, { task: typeof part | typeof total; after?: string[]; input: unknown }> = {
      seed: { task: part, input: { i: 0, seed: "${input.seed}" } },
    };
    for (let i = 0; i < n; i++) steps[`p${i}`] = { task: part, after: ["seed"], input: { i, seed: "${seed}" } };
    steps.total = { task: total, after: Object.keys(steps).filter((k) => k !== "seed"), input: { parts: Array.from({ length: n }, (_, i) => `\${p${i}}`) } };
    const wf = defineWorkflow({ name: "fan.big", input: Schema.Struct({ seed: Schema.Number }), steps });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [part, total], concurrency: 64 });
    await troupe.coordinator();
    await troupe.coordinator();
    const out = (await (await troupe.start(wf, { seed: 1 })).result()) as Record<string, number>;
    expect(Object.keys(out)).toHaveLength(1_000);
    expect(out.total).toBe(Array.from({ length: n }, (_, i) => i + 1).reduce((a, b) => a + b, 0));
  }, 120_000);

  it("refuses invalid definitions, naming the step", () => {
    const base = { name: "bad", input: Schema.Struct({}) };
    const attempt = (steps: Record<string, { task: string; after?: string[]; input: unknown }>) => {
      try {
        defineWorkflow({ ...base, steps });
        return undefined;
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidDefinition);
        return (e as Error).message;
      }
    };
    expect(attempt({ a: { task: "t", after: ["zz"], input: {} } })).toContain('step "a" runs after unknown step "zz"');
    expect(attempt({ a: { task: "t", after: ["b"], input: {} }, b: { task: "t", after: ["a"], input: {} } })).toMatch(/cycle: (a → b → a|b → a → b)/);
    expect(attempt({ a: { task: "t", input: {} }, b: { task: "t", input: { x: "${a.out}" } } })).toContain('step "b" references ${a.out} but "a" is not one of its ancestors');
    expect(attempt({ a: { task: "t", input: { x: "${nobody}" } } })).toContain('neither "input" nor a step');
    expect(attempt({})).toContain("no steps");
    expect(() => workflowFromDocument({ name: "doc", steps: { a: { input: {} } } })).toThrow(/needs a `task`/);
  });
});

describe("typed steps", () => {
  const Input = Schema.Struct({ url: Schema.String, size: Schema.Struct({ width: Schema.Number }) });
  const definitionError = (define: () => unknown) => {
    try {
      define();
    } catch (e) {
      expect(e).toBeInstanceOf(InvalidDefinition);
      return e as InvalidDefinition;
    }
    throw new Error("defined without an error");
  };

  it("checks a step's literal input against its task's input type when compiled", () => {
    // Each `@ts-expect-error` below fails the type check (`tsc`) if the line compiles.
    const wrongType = () =>
      defineWorkflow({
        name: "typed.wrong-type",
        input: Input,
        steps: {
          // @ts-expect-error `url` is a string: 5 is not one, nor a reference
          fetch: { task: download, input: { url: 5 } },
        },
      });
    const misspelt = () =>
      defineWorkflow({
        name: "typed.misspelt",
        input: Input,
        steps: {
          fetch: { task: download, input: { url: "${input.url}" } },
          // @ts-expect-error `widht` is no field of resize's input
          small: { task: resize, after: ["fetch"], input: { path: "${fetch.path}", widht: 128 } },
        },
      });
    const unknownAfter = () =>
      defineWorkflow({
        name: "typed.after",
        input: Input,
        steps: {
          fetch: { task: download, input: { url: "${input.url}" } },
          // @ts-expect-error `after` names steps of this workflow
          small: { task: resize, after: ["fetchh"], input: { path: "${fetch.path}", width: 128 } },
        },
      });
    // Types are not checked at run time: the first two define (their workers would refuse the input).
    expect(wrongType().steps.fetch?.input).toEqual({ url: 5 });
    expect(misspelt().steps.small?.input).toEqual({ path: "${fetch.path}", widht: 128 });
    expect(definitionError(unknownAfter).message).toContain('step "small" runs after unknown step "fetchh"');

    // A field takes its value or a `${...}` reference, at any depth; a step naming its task by string takes anything.
    const ok = defineWorkflow({
      name: "typed.ok",
      input: Input,
      steps: {
        fetch: { task: download, input: { url: "${input.url}" } },
        small: { task: resize, after: ["fetch"], input: { path: "s3://b/${fetch.path}", width: "${input.size.width}" } },
        report: { task: summarize, after: ["small"], input: { files: ["${small.path}", "/tmp/x"], source: { any: 1 } } },
        named: { task: "images.named", input: { whatever: [1] } },
      },
    });
    expectTypeOf<WorkflowOutputsOf<typeof ok>["small"]>().toEqualTypeOf<{ readonly path: string }>();
    expectTypeOf<WorkflowOutputsOf<typeof ok>["named"]>().toBeUnknown();
    expect(Object.keys(ok.steps)).toEqual(["fetch", "small", "report", "named"]);
    expectTypeOf<WorkflowInputOf<typeof ok>>().toEqualTypeOf<{ readonly url: string; readonly size: { readonly width: number } }>();
  });

  it("refuses a ${...} reference to an unknown step or input field when defined, naming the step and the reference", () => {
    const unknownStep = definitionError(() =>
      defineWorkflow({
        name: "refs.step",
        input: Input,
        steps: {
          fetch: { task: download, input: { url: "${input.url}" } },
          small: { task: resize, after: ["fetch"], input: { path: "${fecth.path}", width: 128 } },
        },
      }),
    );
    expect(unknownStep).toMatchObject({ step: "small", reference: "${fecth.path}" });
    expect(unknownStep.message).toBe('workflow "refs.step": step "small" references ${fecth.path}, which is neither "input" nor a step');

    const unknownField = definitionError(() =>
      defineWorkflow({ name: "refs.input", input: Input, steps: { fetch: { task: download, input: { url: "${input.urll}" } } } }),
    );
    expect(unknownField).toMatchObject({ step: "fetch", reference: "${input.urll}" });
    expect(unknownField.message).toBe('workflow "refs.input": step "fetch" references ${input.urll}, but the input schema has no field "urll"');

    const nested = definitionError(() =>
      defineWorkflow({
        name: "refs.nested",
        input: Input,
        steps: { fetch: { task: download, input: { url: "x" } }, small: { task: resize, input: { path: "p", width: "${input.size.height}" } } },
      }),
    );
    expect(nested).toMatchObject({ step: "small", reference: "${input.size.height}" });
    expect(nested.message).toContain('has no field "size.height"');

    // When the schema cannot say (any input, a record), the reference is checked when a run starts.
    for (const input of [Schema.Unknown, Schema.Record(Schema.String, Schema.String)]) {
      expect(defineWorkflow({ name: "refs.open", input, steps: { fetch: { task: download, input: { url: "${input.urll}" } } } }).steps.fetch).toBeDefined();
    }
  });

  it("checks a document's ${input...} references against its declared input when loaded", () => {
    const doc = (input: unknown) => ({ name: "doc.refs", input, steps: { a: { task: "math.add", input: { a: "${input.y}", b: 1 } } } });
    const error = definitionError(() => workflowFromDocument(doc({ x: "number" })));
    expect(error).toMatchObject({ step: "a", reference: "${input.y}" });
    expect(error.message).toContain('the input schema has no field "y"');
    expect(workflowFromDocument(doc({ x: "number", y: "number?" })).steps.a).toBeDefined();
    expect(workflowFromDocument(doc(undefined)).steps.a).toBeDefined(); // no declaration: checked at start
  });

  it("says in one line that a workflow's input was left out: when defined, and when started (or a task submitted)", async () => {
    const missing = definitionError(() =>
      // @ts-expect-error without `input`, `name` must be the error message (a one-line compile error)
      defineWorkflow({ name: "no.input", steps: { fetch: { task: download, input: { url: "x" } } } }),
    );
    expect(missing.message).toBe('workflow "no.input": `input` is missing: give the Schema of the run\'s input (Schema.Struct({}) for none)');

    const troupe = await connect(server());
    // @ts-expect-error the input is a required argument
    const error = await troupe.start(thumbnails).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInput);
    expect((error as InvalidInput).message).toBe('input of workflow "images.thumbnails" is missing: give one its input schema accepts');
    // @ts-expect-error the same for a task
    const submitted = await troupe.submit(download).catch((e: unknown) => e);
    expect(submitted).toMatchObject({ _tag: "InvalidInput", message: 'input of task "images.download" is missing: give one its input schema accepts' });
  });
});

describe("coordinator recovery", () => {
  it("a redelivered completion enqueues the next steps a dead coordinator recorded but never enqueued", async () => {
    const { advance } = await import("../../machines/workflow.js");
    const { encodeJson } = await import("../../src/nats/codec.js");
    const chain = defineWorkflow({
      name: "recover.chain",
      input: Schema.Struct({}),
      steps: {
        a: { task: download, input: { url: "x/a.png" } },
        b: { task: resize, after: ["a"], input: { path: "${a.path}", width: 8 } },
      },
    });
    const troupe = await connect(server());
    const run = await troupe.start(chain, {});
    // Play the coordinator that died: a's completion applied and written, b never enqueued.
    const entry = (await connectionOf(troupe).workflows.get(run.id))!;
    const before = entry.json<WorkflowRecord>();
    const after = advance(before, { type: "STEPS_SETTLED", settled: [{ step: "a", status: "COMPLETED", output: { path: "/tmp/a.png", bytes: 1 } }], at: Date.now() });
    expect(after.steps.b?.status).toBe("RUNNING");
    await connectionOf(troupe).workflows.update(run.id, encodeJson(after), entry.revision);
    const taskA = `${run.id}-a`;
    // a's task ended, as its worker would have written it; its notice (which only says what to read) is redelivered.
    const queued = (await troupe.get(taskA))!;
    await connectionOf(troupe).tasks.put(taskA, encodeJson({ ...queued, status: "COMPLETED", attempt: 1, output: { path: "/tmp/a.png", bytes: 1 } }));
    await connectionOf(troupe).js.publish(`troupe.steps.${run.id}.a.${taskA}`, encodeJson({ id: taskA }));
    expect(await troupe.get(`${run.id}-b`)).toBeUndefined();

    await troupe.coordinator({ reconcileEvery: 0 }); // no reconciliation: only the redelivery can do it
    await troupe.worker({ tasks: [resize] });
    const out = await run.result();
    expect(out.b).toEqual({ path: "/tmp/a.png@8" });
  });
});
