/**
 * The `troupe-rpc` service: JSON-RPC 2.0 on `troupe.rpc` for any NATS client (docs/rpc.md).
 * A call submits the task its method names, durably and through a client's own `submit`
 * (a normal task: a record, events, retries), and answers with the task's output or
 * failure; a notification only enqueues. Every worker and gateway serves it in one queue
 * group, so one instance answers each request, for any method: a task the instance does not
 * know is looked up in the method directory and submitted by name, and its worker checks
 * the params.
 */
import { nuid, type Msg } from "@nats-io/transport-node";
import { Cause, Exit, Schema } from "effect";
import type { Logger } from "pino";
import type { TaskRecord } from "../../machines/records.js";
import { durationOption, type DurationInput } from "../duration.js";
import { InvalidInput, InvalidOption } from "../errors.js";
import { isPayloadRef } from "../store/payloads.js";
import { errorOfRecord } from "../failure.js";
import { decodeJson, decodeValueWith, encodeJson } from "../nats/codec.js";
import { asFailure, type NatsHandle } from "../nats/connection.js";
import { isValidTaskName, RPC_QUEUE, RPC_SERVICE, RPC_SUBJECT } from "../nats/topology.js";
import { decodeInput, untypedTask, type TaskDefinition } from "../task.js";
import { VERSION } from "../version.js";
import { MicroService } from "../worker/service.js";
import { findMethod, listMethods, methodEntry } from "./directory.js";
import { openRpcDocument, type OpenRpcDocument } from "./discover.js";
import { idOf, response, rpcError, RpcCode, RpcRequest, type RpcErrorObject, type RpcOutcome, type RpcResponse } from "./jsonrpc.js";
import { protocolOf } from "./protocol.js";

export interface RpcOptions {
  /** How long a call waits for its task to end (default 60 s); a request's `params._meta.timeout` overrides it. */
  readonly timeout?: DurationInput;
}

export interface GatewayOptions extends RpcOptions {
  /** Task definitions the gateway knows (it runs none): their params are checked here, before anything is submitted. */
  readonly tasks?: ReadonlyArray<TaskDefinition>;
  /** The service instance's id (default: a fresh `g-…`). */
  readonly id?: string;
}

/** What a call submits with: a Troupe client's `submit`, so that a call is a task like any other. */
export interface RpcSubmitter {
  submit(task: TaskDefinition, input: unknown, options?: RpcSubmitOptions): Promise<RpcRun>;
  /** A value with its large-payload references replaced by what they stand for. */
  resolvePayload(value: unknown): Promise<unknown>;
}

/** The submit options a request may carry in `params._meta`. */
export interface RpcSubmitOptions {
  readonly idempotencyKey?: string;
  readonly priority?: number;
  readonly key?: string;
}

export interface RpcRun {
  readonly id: string;
  /** The terminal record. */
  settledRecord(): Promise<TaskRecord>;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** The most requests one batch may hold: each is a task submitted and a wait held. */
export const MAX_BATCH = 100;
/** The longest `params._meta.timeout` a caller may ask for (or the service's own `timeout`, when longer): a wait holds a timer and a subscription. */
export const MAX_META_TIMEOUT_MS = 10 * 60_000;
/** A reply with no body: what a request that held only notifications gets once they are enqueued. */
const EMPTY = new Uint8Array(0);

/** `params._meta`: how long to wait, and submit options. Other keys are left alone. */
const Meta = Schema.Struct({
  timeout: Schema.optional(Schema.Union([Schema.Number, Schema.String])),
  idempotencyKey: Schema.optional(Schema.String),
  priority: Schema.optional(Schema.Number),
  key: Schema.optional(Schema.String),
});

/** A wait's bound in milliseconds: `timeout` checked, or the default. */
const timeoutOf = <E>(timeout: unknown, fail: (message: string) => E): number =>
  timeout === undefined ? DEFAULT_TIMEOUT_MS : durationOption("timeout", timeout, fail);

/** A worker's `rpc` option: the wait's bound when it serves RPC, `undefined` when it does not (`rpc: false`). */
export const rpcSettings = <E>(option: boolean | RpcOptions | undefined, fail: (message: string) => E): { readonly timeoutMs: number } | undefined => {
  if (option === false) return undefined;
  if (option === undefined || option === true) return { timeoutMs: DEFAULT_TIMEOUT_MS };
  if (typeof option !== "object" || option === null) throw fail(`rpc must be true, false or { timeout }, got ${JSON.stringify(option)}`);
  for (const key of Object.keys(option)) if (key !== "timeout") throw fail(`unknown option "rpc.${key}" (rpc options: timeout)`);
  return { timeoutMs: timeoutOf(option.timeout, (message) => fail(`rpc.${message}`)) };
};

/** How a wait for a task's end came out. */
type Waited = { readonly record: TaskRecord } | { readonly unfinished: "timeout" | "stopped" } | { readonly error: unknown };

/** A field path as JSON carries it. */
const jsonPath = (path: ReadonlyArray<PropertyKey>) => path.map((p) => (typeof p === "number" ? p : String(p)));

/** An error as a response's `data`: its tag and message. */
const errorData = (e: unknown) => ({ _tag: (e as { _tag?: unknown } | null)?._tag ?? "Internal", message: e instanceof Error ? e.message : String(e) });

const invalidParams = (path: ReadonlyArray<string | number>, data: Record<string, unknown>) =>
  rpcError(RpcCode.InvalidParams, path.length === 0 ? "Invalid params" : `Invalid params at ${path.join(".")}`, { ...data, path });

export class RpcService {
  private readonly service: MicroService;
  private readonly log: Logger;
  /** Pending waits: each answers at once when called (the service stops). */
  private readonly waits = new Set<() => void>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private stopped = false;

  private constructor(
    private readonly nats: NatsHandle,
    private readonly submitter: RpcSubmitter,
    readonly id: string,
    role: "worker" | "gateway",
    /** The tasks this instance knows, by method name: their params are checked here. */
    private readonly definitions: ReadonlyMap<string, TaskDefinition>,
    private readonly timeoutMs: number,
    log: Logger,
  ) {
    this.log = log.child({ rpc: id });
    const protocols = new Set(
      [...definitions.values()].flatMap((t) => {
        const p = protocolOf(t);
        return p === undefined ? [] : [`${p.name}@${p.version}`];
      }),
    );
    this.service = new MicroService(
      nats.nc,
      {
        name: RPC_SERVICE,
        id,
        version: VERSION,
        description: `Troupe JSON-RPC 2.0 on ${RPC_SUBJECT} (${role} ${id})`,
        metadata: { role, methods: [...definitions.keys()].join(","), protocols: [...protocols].join(",") },
      },
      [{ name: "rpc", subject: RPC_SUBJECT, queue: RPC_QUEUE, handler: (msg) => this.track(this.handle(msg)) }],
    );
  }

  /** Serve RPC next to a worker, which knows `tasks`. */
  static start(nats: NatsHandle, submitter: RpcSubmitter, id: string, tasks: ReadonlyMap<string, TaskDefinition>, timeoutMs: number, log: Logger): RpcService {
    const service = new RpcService(nats, submitter, id, "worker", tasks, timeoutMs, log);
    service.service.start();
    return service;
  }

  /** Serve RPC alone (`troupe gateway`), once the server has its subscriptions; a bad option is `InvalidOption`. */
  static async gateway(nats: NatsHandle, submitter: RpcSubmitter, options: GatewayOptions, log: Logger): Promise<RpcService> {
    const invalid = (message: string) => new InvalidOption({ message: `gateway: ${message}` });
    const timeoutMs = timeoutOf(options.timeout, invalid);
    const tasks = new Map((options.tasks ?? []).map((t) => [t.name, t] as const));
    const service = new RpcService(nats, submitter, options.id ?? `g-${nuid.next()}`, "gateway", tasks, timeoutMs, log);
    service.service.start();
    await nats.nc.flush().catch(async (e: unknown) => {
      await service.stop();
      throw asFailure("cannot start the rpc gateway")(e);
    });
    service.log.info({ subject: RPC_SUBJECT, methods: [...tasks.keys()] }, "rpc gateway started");
    return service;
  }

  /**
   * Stop serving: no new request is taken, a call still waiting is answered at once (-32001,
   * its task goes on), and the service resolves once every answer is sent.
   */
  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.service.stop();
      for (const answer of [...this.waits]) answer();
    }
    await Promise.all(this.inFlight);
  }

  /** The methods, as `rpc.discover` answers. */
  async discover(): Promise<OpenRpcDocument> {
    const entries = await listMethods(this.nats.jsm, this.nats.methods);
    const advertised = new Set(entries.map((e) => e.method));
    const known = [...this.definitions.values()].filter((t) => !advertised.has(t.name)).map((t) => methodEntry(t));
    return openRpcDocument([...entries, ...known]);
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work)).catch(() => undefined);
    return work;
  }

  /** One NATS message: a request, a notification or a batch; bytes to reply with. */
  private async handle(msg: Msg): Promise<Uint8Array> {
    const body = decodeJson(msg.data);
    if (!body.ok) return encodeJson(response(null, rpcError(RpcCode.ParseError, "Parse error", { message: body.error.message })));
    if (!Array.isArray(body.value)) {
      const one = await this.call(body.value);
      return one === undefined ? EMPTY : encodeJson(one);
    }
    if (body.value.length === 0) return encodeJson(response(null, rpcError(RpcCode.InvalidRequest, "Invalid Request", { message: "an empty batch" })));
    if (body.value.length > MAX_BATCH) {
      return encodeJson(response(null, rpcError(RpcCode.InvalidRequest, "Invalid Request", { message: `a batch of ${body.value.length} requests; at most ${MAX_BATCH}`, max: MAX_BATCH })));
    }
    const all = (await Promise.all(body.value.map((item) => this.call(item)))).filter((r): r is RpcResponse => r !== undefined);
    return all.length === 0 ? EMPTY : encodeJson(all);
  }

  /** One request object: its response, or nothing for a notification. */
  private async call(item: unknown): Promise<RpcResponse | undefined> {
    const request = decodeValueWith(RpcRequest, item, "JSON-RPC 2.0 request");
    if (!request.ok) return response(idOf(item), rpcError(RpcCode.InvalidRequest, "Invalid Request", { message: request.error.message }));
    const { id, method } = request.value;
    const notification = id === undefined;
    const outcome = await this.dispatch(request.value, notification).catch((e: unknown) => rpcError(RpcCode.Internal, "Internal error", errorData(e)));
    if (!notification) return response(id, outcome);
    if ("error" in outcome) this.log.warn({ method, error: outcome.error }, "JSON-RPC notification not enqueued");
    return undefined;
  }

  private async dispatch(request: RpcRequest, notification: boolean): Promise<RpcOutcome> {
    const { method } = request;
    if (method === "rpc.discover") return { result: await this.discover() };
    // `rpc.*` is the specification's own; a task cannot be called by such a name.
    const target = method.startsWith("rpc.") || !isValidTaskName(method) ? undefined : await this.resolve(method);
    if (target === undefined) return rpcError(RpcCode.MethodNotFound, "Method not found", { method });
    const params = this.paramsOf(request.params);
    if ("error" in params) return params;
    let input = params.input;
    if (target.typed) {
      const decoded = decodeInput(target.task, input);
      if (Exit.isFailure(decoded)) return this.failureOf(Cause.squash(decoded.cause));
      input = decoded.value;
    }
    let run: RpcRun;
    try {
      run = await this.submitter.submit(target.task, input, params.submit);
    } catch (e) {
      return this.failureOf(e);
    }
    if (notification) return { result: null };
    const waited = await this.wait(run, params.timeoutMs);
    const data = { taskId: run.id, task: target.task.name };
    if ("unfinished" in waited) {
      return rpcError(
        RpcCode.TaskUnfinished,
        waited.unfinished === "timeout"
          ? `Task ${run.id} did not end within ${params.timeoutMs} ms; it goes on`
          : `Task ${run.id} had not ended when the service answering stopped; it goes on`,
        waited.unfinished === "timeout" ? { ...data, reason: "timeout", timeout: params.timeoutMs } : { ...data, reason: "stopped" },
      );
    }
    if ("error" in waited) return rpcError(RpcCode.Internal, "Internal error", { ...errorData(waited.error), ...data });
    const { record } = waited;
    if (record.status === "COMPLETED") {
      const output = isPayloadRef(record.output) ? await this.submitter.resolvePayload(record.output).catch((e: unknown) => e) : record.output;
      if (output instanceof Error) return rpcError(RpcCode.Internal, "Internal error", { ...errorData(output), ...data });
      return { result: output ?? null };
    }
    const failure = errorOfRecord(record);
    if (failure instanceof InvalidInput) return invalidParams(jsonPath(failure.path), { _tag: failure._tag, message: failure.message, ...data });
    return rpcError(RpcCode.TaskFailed, record.status === "CANCELLED" ? "Task cancelled" : "Task failed", {
      _tag: failure._tag,
      message: failure.message,
      status: record.status,
      ...data,
    });
  }

  /** The task a method names: known here (its params are checked here), or from the directory (by name). */
  private async resolve(method: string): Promise<{ readonly task: TaskDefinition; readonly typed: boolean } | undefined> {
    const known = this.definitions.get(method);
    if (known !== undefined) return { task: known, typed: true };
    const entry = await findMethod(this.nats.methods, method);
    return entry === undefined ? undefined : { task: untypedTask(entry.task, entry.queue), typed: false };
  }

  /** The task's input (`params` without `_meta`; `{}` when absent), the wait's bound and the submit options. */
  private paramsOf(params: RpcRequest["params"]): { readonly error: RpcErrorObject } | { readonly input: unknown; readonly timeoutMs: number; readonly submit: RpcSubmitOptions } {
    if (params === undefined || Array.isArray(params) || !Object.hasOwn(params, "_meta")) {
      return { input: params ?? {}, timeoutMs: this.timeoutMs, submit: {} };
    }
    const { _meta, ...input } = params as Record<string, unknown>;
    const meta = decodeValueWith(Meta, _meta, "params._meta object");
    if (!meta.ok) return invalidParams(["_meta"], { _tag: "InvalidOption", message: meta.error.message });
    const { timeout, ...submit } = meta.value;
    try {
      const timeoutMs = timeout === undefined ? this.timeoutMs : durationOption("_meta.timeout", timeout, (message) => new InvalidOption({ message }));
      const max = Math.max(MAX_META_TIMEOUT_MS, this.timeoutMs);
      if (timeoutMs > max) return invalidParams(["_meta", "timeout"], { _tag: "InvalidOption", message: `_meta.timeout ${timeoutMs} ms is over the most a call may wait, ${max} ms`, max });
      return { input, timeoutMs, submit };
    } catch (e) {
      return invalidParams(["_meta", "timeout"], errorData(e));
    }
  }

  /** A submit that failed: bad params or options are -32602, anything else -32603. */
  private failureOf(e: unknown): RpcOutcome {
    if (e instanceof InvalidInput) return invalidParams(jsonPath(e.path), { _tag: e._tag, message: e.message, task: e.task });
    if (e instanceof InvalidOption) return invalidParams([], { _tag: e._tag, message: e.message });
    return rpcError(RpcCode.Internal, "Internal error", errorData(e));
  }

  /** The task's end, or why it was not awaited: past `ms`, or the service stopped. */
  private wait(run: RpcRun, ms: number): Promise<Waited> {
    if (this.stopped) return Promise.resolve({ unfinished: "stopped" });
    return new Promise((resolve) => {
      const done = (waited: Waited) => {
        clearTimeout(timer);
        this.waits.delete(stop);
        resolve(waited);
      };
      const stop = () => done({ unfinished: "stopped" });
      // Beyond 2^31 - 1 ms a Node timer would fire at once.
      const timer = setTimeout(() => done({ unfinished: "timeout" }), Math.min(ms, 2 ** 31 - 1));
      this.waits.add(stop);
      run.settledRecord().then(
        (record) => done({ record }),
        (error: unknown) => done({ error }),
      );
    });
  }
}
