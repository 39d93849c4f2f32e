/**
 * Traces against a real server, with an OpenTelemetry SDK registered here as a user would:
 * submit → attempt → the handler's own spans as one trace, retries under one submit, the
 * context in the work message's headers (the registered propagator's, or W3C's without one),
 * workflow steps in their run's trace, and handlers in isolated executors.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { context, propagation, SpanKind, SpanStatusCode, trace, TraceFlags, type TextMapPropagator } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { defineTask, defineWorkflow, NonRetryableError, Schema, type Troupe } from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { tracedWork } from "../fixtures/traced-tasks.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
beforeAll(() => {
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
});
afterAll(async () => {
  trace.disable();
  context.disable();
  propagation.disable();
  await provider.shutdown();
});
afterEach(async () => {
  await closeAll();
  exporter.reset();
});

/** The test's own tracer (asked each time: a test unregisters the provider for a while). */
const tracer = () => trace.getTracer("traces-test");

/** The finished spans once `ready` holds of them; fails after 30 s with what was there. */
const spansWhere = async (ready: (spans: ReadableSpan[]) => boolean, what: string): Promise<ReadableSpan[]> => {
  const until = Date.now() + 30_000;
  for (;;) {
    const spans = exporter.getFinishedSpans();
    if (ready(spans)) return spans;
    if (Date.now() > until) throw new Error(`${what}: not seen in 30 s; finished spans: ${spans.map((s) => s.name).join(", ")}`);
    await sleep(20);
  }
};
const ofTask = (spans: ReadableSpan[], name: string, id: string) => spans.filter((s) => s.name === name && s.attributes["troupe.task.id"] === id);
const one = (spans: ReadableSpan[], name: string) => {
  const found = spans.filter((s) => s.name === name);
  expect(found, name).toHaveLength(1);
  return found[0]!;
};
const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;

/** The stored work message of a type nobody serves: its headers. */
const workHeaders = async (troupe: Troupe, task: string) => {
  const message = await connectionOf(troupe).jsm.streams.getMessage(Topology.TASKS_STREAM, { last_by_subj: Topology.taskSubject("default", task) });
  return message?.header;
};

const doubled = defineTask({
  name: "traces.double",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  // A span of the handler's own, started after an await: it must still be in the attempt's context.
  handler: async ({ n }) => {
    await sleep(5);
    return tracer().startActiveSpan("handler.work", async (span) => {
      await sleep(5);
      span.end();
      return n * 2;
    });
  },
});

const flaky = defineTask({
  name: "traces.flaky",
  input: Schema.Struct({}),
  output: Schema.String,
  retry: { attempts: 2, delay: "50 millis", jitter: 0 },
  handler: async (_input, ctx) => {
    if (ctx.attempt === 1) throw new Error("first attempt fails");
    return "second time lucky";
  },
});

const refused = defineTask({
  name: "traces.refused",
  input: Schema.Struct({}),
  output: Schema.String,
  handler: () => {
    throw new NonRetryableError("no");
  },
});

describe("traces", () => {
  it("submit, attempt and the handler's own span are one trace: submit → attempt → handler", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ tasks: [doubled] });
    const run = await troupe.submit(doubled, { n: 21 }, { priority: 2 });
    expect(await run.result({ timeout: 30_000 })).toBe(42);
    const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traces.double", run.id).length === 1 && s.some((x) => x.name === "handler.work"), "attempt and handler spans");

    const submit = one(spans, "troupe.submit traces.double");
    expect(submit.kind).toBe(SpanKind.PRODUCER);
    expect(submit.attributes).toMatchObject({ "troupe.task.id": run.id, "troupe.task.name": "traces.double", "troupe.task.queue": "default", "troupe.task.priority": 2 });
    expect(submit.attributes["troupe.task.key"]).toBeUndefined();
    expect(submit.status.code).toBe(SpanStatusCode.UNSET);
    expect(parentOf(submit)).toBeUndefined();

    const attempt = one(spans, "troupe.attempt traces.double");
    expect(attempt.kind).toBe(SpanKind.CONSUMER);
    expect(attempt.spanContext().traceId).toBe(submit.spanContext().traceId);
    expect(parentOf(attempt)).toBe(submit.spanContext().spanId);
    expect(attempt.attributes).toMatchObject({ "troupe.task.id": run.id, "troupe.task.attempt": 1, "troupe.worker.id": worker.id, "troupe.attempt.outcome": "completed" });
    expect(attempt.status.code).toBe(SpanStatusCode.UNSET);

    const handler = one(spans, "handler.work");
    expect(handler.spanContext().traceId).toBe(submit.spanContext().traceId);
    expect(parentOf(handler)).toBe(attempt.spanContext().spanId);
  });

  it("a failing-then-retried task has two attempt spans under its one submit, the first with error status", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [flaky] });
    const run = await troupe.submit(flaky, {});
    expect(await run.result({ timeout: 30_000 })).toBe("second time lucky");
    const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traces.flaky", run.id).length === 2, "two attempt spans");
    const submit = one(spans, "troupe.submit traces.flaky");
    const [first, second] = ofTask(spans, "troupe.attempt traces.flaky", run.id).sort(
      (a, b) => Number(a.attributes["troupe.task.attempt"]) - Number(b.attributes["troupe.task.attempt"]),
    );
    for (const attempt of [first!, second!]) {
      expect(attempt.spanContext().traceId).toBe(submit.spanContext().traceId);
      expect(parentOf(attempt)).toBe(submit.spanContext().spanId);
    }
    expect(first!.attributes).toMatchObject({ "troupe.task.attempt": 1, "troupe.attempt.outcome": "retrying", "error.type": "Execution" });
    expect(first!.status.code).toBe(SpanStatusCode.ERROR);
    expect(first!.status.message).toContain("Execution");
    expect(second!.attributes).toMatchObject({ "troupe.task.attempt": 2, "troupe.attempt.outcome": "completed" });
    expect(second!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it("a submit inside the caller's span is its child; a keyed task's key is an attribute; a failed attempt has error status", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [refused] });
    const run = await tracer().startActiveSpan("user.request", async (span) => {
      try {
        return await troupe.submit(refused, {}, { key: "tenant-7" });
      } finally {
        span.end();
      }
    });
    await expect(run.result({ timeout: 30_000 })).rejects.toMatchObject({ _tag: "Execution" });
    const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traces.refused", run.id).length === 1, "the attempt span");
    const request = one(spans, "user.request");
    const submit = one(spans, "troupe.submit traces.refused");
    expect(parentOf(submit)).toBe(request.spanContext().spanId);
    expect(submit.spanContext().traceId).toBe(request.spanContext().traceId);
    expect(submit.attributes["troupe.task.key"]).toBe("tenant-7");
    const attempt = one(spans, "troupe.attempt traces.refused");
    expect(parentOf(attempt)).toBe(submit.spanContext().spanId);
    expect(attempt.attributes).toMatchObject({ "troupe.attempt.outcome": "failed", "error.type": "Execution" });
    expect(attempt.status).toMatchObject({ code: SpanStatusCode.ERROR, message: "Execution: no" });
  });

  it("a failed task run again with retry has a submit span of its own, the new attempt under it", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [refused] });
    const run = await troupe.submit(refused, {});
    await expect(run.result({ timeout: 30_000 })).rejects.toMatchObject({ _tag: "Execution" });
    const first = await spansWhere((s) => ofTask(s, "troupe.attempt traces.refused", run.id).length === 1, "the first attempt's span");
    const firstSubmit = one(first, "troupe.submit traces.refused");
    exporter.reset();
    const again = await troupe.retry(run.id);
    await expect(again.result({ timeout: 30_000 })).rejects.toMatchObject({ _tag: "Execution" });
    const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traces.refused", run.id).length === 1, "the retried attempt's span");
    const submit = one(spans, "troupe.submit traces.refused");
    expect(submit.attributes["troupe.task.id"]).toBe(run.id);
    expect(submit.spanContext().spanId).not.toBe(firstSubmit.spanContext().spanId);
    expect(parentOf(one(spans, "troupe.attempt traces.refused"))).toBe(submit.spanContext().spanId);
  });

  it("the work message carries W3C traceparent without a registered propagator, and nothing (no span either) while no provider is registered", async () => {
    const troupe = await connect(server());
    const unserved = defineTask({ name: "traces.unserved", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: ({ n }) => n });
    const run = await troupe.submit(unserved, { n: 1 });
    const submit = one(await spansWhere((s) => ofTask(s, "troupe.submit traces.unserved", run.id).length === 1, "the submit span"), "troupe.submit traces.unserved");
    const headers = await workHeaders(troupe, "traces.unserved");
    expect(headers?.get("traceparent")).toBe(`00-${submit.spanContext().traceId}-${submit.spanContext().spanId}-01`);
    exporter.reset();
    trace.disable();
    try {
      await troupe.submit(unserved, { n: 2 });
      const untraced = await workHeaders(troupe, "traces.unserved");
      expect(untraced?.has("traceparent")).toBe(false);
      expect(untraced?.get(Topology.Headers.revision)).toBe("0");
    } finally {
      trace.setGlobalTracerProvider(provider);
    }
    expect(exporter.getFinishedSpans()).toHaveLength(0);
  });

  it("a registered propagator is the one that carries the context", async () => {
    const field = "x-test-trace";
    const testPropagator: TextMapPropagator = {
      inject: (ctx, carrier, setter) => {
        const span = trace.getSpanContext(ctx);
        if (span !== undefined) setter.set(carrier, field, `${span.traceId}.${span.spanId}`);
      },
      extract: (ctx, carrier, getter) => {
        const [traceId, spanId] = String(getter.get(carrier, field) ?? "").split(".");
        return traceId && spanId ? trace.setSpanContext(ctx, { traceId, spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true }) : ctx;
      },
      fields: () => [field],
    };
    propagation.setGlobalPropagator(testPropagator);
    try {
      const troupe = await connect(server());
      const unserved = defineTask({ name: "traces.propagated", input: Schema.Struct({}), output: Schema.Number, handler: () => 1 });
      const run = await troupe.submit(unserved, {});
      const headers = await workHeaders(troupe, "traces.propagated");
      expect(headers?.has("traceparent")).toBe(false);
      await troupe.worker({ tasks: [unserved] });
      expect(await run.result({ timeout: 30_000 })).toBe(1);
      const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traces.propagated", run.id).length === 1, "the attempt span");
      const submit = one(spans, "troupe.submit traces.propagated");
      expect(headers?.get(field)).toBe(`${submit.spanContext().traceId}.${submit.spanContext().spanId}`);
      expect(parentOf(one(spans, "troupe.attempt traces.propagated"))).toBe(submit.spanContext().spanId);
    } finally {
      propagation.disable();
    }
  });

  it("a workflow run's steps join the trace of its start", async () => {
    const first = defineTask({ name: "traces.step-one", input: Schema.Struct({ n: Schema.Number }), output: Schema.Struct({ n: Schema.Number }), handler: ({ n }) => ({ n: n + 1 }) });
    const second = defineTask({ name: "traces.step-two", input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: ({ n }) => n * 10 });
    const flow = defineWorkflow({
      name: "traces.flow",
      input: Schema.Struct({ n: Schema.Number }),
      steps: { one: { task: first, input: { n: "${input.n}" } }, two: { task: second, after: ["one"], input: { n: "${one.n}" } } },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [first, second] });
    await troupe.coordinator({ reconcileEvery: 0, scheduler: false });
    const run = await troupe.start(flow, { n: 1 });
    expect(await run.result({ timeout: 30_000 })).toMatchObject({ one: { n: 2 }, two: 20 });
    const spans = await spansWhere((s) => s.some((x) => x.name === "troupe.attempt traces.step-two"), "the second step's attempt");
    const start = one(spans, "troupe.start traces.flow");
    expect(start.kind).toBe(SpanKind.PRODUCER);
    expect(start.attributes).toMatchObject({ "troupe.workflow.id": run.id, "troupe.workflow.name": "traces.flow" });
    const traceId = start.spanContext().traceId;
    for (const step of ["traces.step-one", "traces.step-two"]) {
      const submit = one(spans, `troupe.submit ${step}`);
      expect(submit.spanContext().traceId, step).toBe(traceId);
      expect(parentOf(submit), step).toBe(start.spanContext().spanId);
      expect(parentOf(one(spans, `troupe.attempt ${step}`)), step).toBe(submit.spanContext().spanId);
    }
  });
});

describe.each(["thread", "process"] as const)("traces in an isolated worker: %s", (isolation) => {
  it("the handler's own span in the executor is a child of the attempt span", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    await troupe.worker({ module: "test/fixtures/traced-tasks.ts", isolation, executors: 1 });
    const run = await troupe.submit(tracedWork, {});
    const seen = await run.result({ timeout: 60_000 });
    const spans = await spansWhere((s) => ofTask(s, "troupe.attempt traced.work", run.id).length === 1, "the attempt span");
    const submit = one(spans, "troupe.submit traced.work");
    const attempt = one(spans, "troupe.attempt traced.work");
    expect(parentOf(attempt)).toBe(submit.spanContext().spanId);
    expect(seen).toEqual({ traceId: submit.spanContext().traceId, parentSpanId: attempt.spanContext().spanId });
  });
});
