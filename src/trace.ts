/**
 * Traces, through `@opentelemetry/api` only: the spans are recorded by whatever SDK the user
 * registered, and cost nothing while none is (every entry point asks `tracer()` first and
 * builds no attributes, headers or contexts without one).
 *
 * - `troupe.submit <task>` (PRODUCER): an enqueue, ended once its work message is published.
 *   Its context rides in the work message's headers (`traceparent`, `tracestate`).
 * - `troupe.attempt <task>` (CONSUMER): one attempt, a child of the submit read from those
 *   headers (every delivery of a message carries the same ones, so retries share a parent).
 *   The handler runs in its context, in process or, carried over the executor protocol, in an
 *   isolated executor.
 * - `troupe.start <workflow>` (PRODUCER): a workflow run's start; its context is kept in the
 *   run, and its steps' submits join that trace.
 *
 * Contexts go through the registered propagator; with none registered, W3C `traceparent` and
 * `tracestate` are written and read here, so a trace is never cut between two processes.
 */
import {
  context,
  createTraceState,
  defaultTextMapGetter,
  isSpanContextValid,
  propagation,
  ProxyTracerProvider,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";
import type { MsgHdrs } from "@nats-io/transport-node";
import type { TaskFailure } from "../machines/records.js";
import { DEFAULT_PRIORITY } from "./nats/topology.js";
import { VERSION } from "./version.js";

/** A context as headers: `traceparent` and `tracestate` (or what the registered propagator writes). */
export type TraceCarrier = Record<string, string>;

let seen: TracerProvider | undefined;
let tracerOfSeen: Tracer | undefined;

/** Troupe's tracer, or `undefined` while no tracer provider is registered (the API's no-op). */
export const tracer = (): Tracer | undefined => {
  const global = trace.getTracerProvider();
  const delegate = global instanceof ProxyTracerProvider ? global.getDelegate() : global;
  if (delegate !== seen) {
    seen = delegate;
    tracerOfSeen = global instanceof ProxyTracerProvider ? global.getDelegateTracer("troupe", VERSION) : global.getTracer("troupe", VERSION);
  }
  return tracerOfSeen;
};

const headersGetter: TextMapGetter<MsgHdrs> = {
  keys: (h) => h.keys(),
  get: (h, key) => (h.has(key) ? h.get(key) : undefined),
};

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** `ctx`'s span context into `carrier`: through the registered propagator, else as W3C headers. */
const inject = (ctx: Context, carrier: TraceCarrier): void => {
  if (propagation.fields().length > 0) return propagation.inject(ctx, carrier);
  const span = trace.getSpanContext(ctx);
  if (span === undefined || !isSpanContextValid(span)) return;
  carrier.traceparent = `00-${span.traceId}-${span.spanId}-0${span.traceFlags & TraceFlags.SAMPLED}`;
  const state = span.traceState?.serialize();
  if (state) carrier.tracestate = state;
};

/** The context a carrier holds (the root context when it holds none). */
const extract = <C>(carrier: C, getter: TextMapGetter<C>): Context => {
  if (propagation.fields().length > 0) return propagation.extract(ROOT_CONTEXT, carrier, getter);
  const parent = TRACEPARENT.exec(String(getter.get(carrier, "traceparent") ?? "").trim());
  if (parent === null) return ROOT_CONTEXT;
  const state = getter.get(carrier, "tracestate");
  const spanContext = {
    traceId: parent[1]!,
    spanId: parent[2]!,
    traceFlags: Number.parseInt(parent[3]!, 16) & TraceFlags.SAMPLED,
    isRemote: true,
    ...(state === undefined ? {} : { traceState: createTraceState(Array.isArray(state) ? state.join(",") : state) }),
  };
  return isSpanContextValid(spanContext) ? trace.setSpanContext(ROOT_CONTEXT, spanContext) : ROOT_CONTEXT;
};

/** `span`'s context, as a child of `parent`, written into a new carrier. */
const carrierWith = (parent: Context, span: Span): TraceCarrier => {
  const carrier: TraceCarrier = {};
  inject(trace.setSpan(parent, span), carrier);
  return carrier;
};

/** A failed span: status ERROR with the failure's tag, and the tag as `error.type`. */
const failed = (span: Span, tag: string, message: string): void => {
  span.setAttribute("error.type", tag);
  span.setStatus({ code: SpanStatusCode.ERROR, message: `${tag}: ${message}` });
};

/**
 * `publish` inside a PRODUCER span that is a child of `parent`: it is given the headers that
 * carry the span on, and the span ends when it settles, with error status when it rejects.
 */
const produced = <A>(
  t: Tracer,
  name: string,
  attributes: Attributes,
  parent: Context,
  publish: (trace: TraceCarrier) => Promise<A>,
): Promise<A> => {
  const span = t.startSpan(name, { kind: SpanKind.PRODUCER, attributes }, parent);
  return publish(carrierWith(parent, span)).then(
    (value) => {
      span.end();
      return value;
    },
    (error: unknown) => {
      const e = error as { readonly _tag?: unknown; readonly message?: unknown } | undefined;
      failed(span, typeof e?._tag === "string" ? e._tag : "Error", String(e?.message ?? error));
      span.end();
      throw error;
    },
  );
};

/** What a submit span describes (and what a task store's enqueue takes besides its input). */
export interface SubmittedTask {
  readonly id: string;
  readonly task: string;
  readonly queue: string;
  /** 1 (first) to 5 (last); the default, 3, when absent. */
  readonly priority?: number | undefined;
  /** The key its work is grouped under (its own subject and consumer). */
  readonly key?: string | undefined;
  /** The trace to join (a workflow run's); the active context when absent. */
  readonly trace?: TraceCarrier | undefined;
}

/**
 * `publish` (an enqueue) inside a `troupe.submit <task>` span: it is given the headers that
 * carry the span to the work message (`undefined` while tracing is off).
 */
export const traceSubmit = <A>(task: SubmittedTask, publish: (trace: TraceCarrier | undefined) => Promise<A>): Promise<A> => {
  const t = tracer();
  if (t === undefined) return publish(undefined);
  const attributes: Attributes = {
    "troupe.task.id": task.id,
    "troupe.task.name": task.task,
    "troupe.task.queue": task.queue,
    "troupe.task.priority": task.priority ?? DEFAULT_PRIORITY,
  };
  if (task.key !== undefined) attributes["troupe.task.key"] = task.key;
  const parent = task.trace === undefined ? context.active() : extract(task.trace, defaultTextMapGetter);
  return produced(t, `troupe.submit ${task.task}`, attributes, parent, publish);
};

/**
 * `start` (a workflow run's start) inside a `troupe.start <workflow>` span, a child of the
 * active context: it is given the context to keep in the run (`undefined` while tracing is off).
 */
export const traceStart = <A>(workflow: string, id: string, start: (trace: TraceCarrier | undefined) => Promise<A>): Promise<A> => {
  const t = tracer();
  if (t === undefined) return start(undefined);
  const attributes = { "troupe.workflow.id": id, "troupe.workflow.name": workflow };
  return produced(t, `troupe.start ${workflow}`, attributes, context.active(), start);
};

/** An attempt's span: the context its handler runs in, and its end. */
export interface AttemptSpan {
  readonly context: Context;
  /** `outcome`: how the delivery settled; `error`: the record's failure, for a failed or retrying attempt. */
  end(outcome: string, error?: TaskFailure): void;
}

/**
 * A `troupe.attempt <task>` span, a child of the submit whose context the work message's
 * headers carry; `undefined` while tracing is off.
 */
export const startAttemptSpan = (
  headers: MsgHdrs | undefined,
  task: { readonly id: string; readonly task: string },
  attempt: number,
  workerId: string,
): AttemptSpan | undefined => {
  const t = tracer();
  if (t === undefined) return undefined;
  const parent = headers === undefined ? ROOT_CONTEXT : extract(headers, headersGetter);
  const span = t.startSpan(
    `troupe.attempt ${task.task}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: { "troupe.task.id": task.id, "troupe.task.name": task.task, "troupe.task.attempt": attempt, "troupe.worker.id": workerId },
    },
    parent,
  );
  return {
    context: trace.setSpan(parent, span),
    end: (outcome, error) => {
      span.setAttribute("troupe.attempt.outcome", outcome);
      if ((outcome === "failed" || outcome === "retrying") && error !== undefined) failed(span, error._tag, error.message);
      else if (outcome === "lost") failed(span, "Fenced", "the attempt lost its lease; its outcome was discarded");
      span.end();
    },
  };
};

/** An attempt's context as a carrier, to cross into an executor. */
export const traceCarrier = (ctx: Context | undefined): TraceCarrier | undefined => {
  if (ctx === undefined) return undefined;
  const carrier: TraceCarrier = {};
  inject(ctx, carrier);
  return carrier;
};

/** The context a carrier from the worker holds, in an executor. */
export const traceContext = (carrier: TraceCarrier | undefined): Context | undefined =>
  carrier === undefined ? undefined : extract(carrier, defaultTextMapGetter);

/** `run` inside `ctx` (as is, when there is none): what a handler is called through. */
export const within = <A>(ctx: Context | undefined, run: () => A): A => (ctx === undefined ? run() : context.with(ctx, run));
