/**
 * The inspector: a small HTTP server that shows the actors of a live system.
 *
 * - `/`                              the page (src/inspect/page.ts)
 * - `/api/machines`                  the task, workflow and worker machines as laid-out diagrams
 *                                    (the definitions the hosts run, laid out by elkjs once)
 * - `/api/recent?limit=N`            the last transitions (the record buckets' newest writes, the
 *                                    work waiting), so the page opens populated
 * - `/api/actors/:kind/:id`          an actor's record (KV), its state path and its history (its record's revisions)
 * - `/api/actors/:kind/:id/at/:seq`  one of its events: the record and state as of that revision
 * - `/api/workflows/:id/graph`       a run's steps as a graph, each with its live status, and why a waiting one waits
 * - `/events`                        every transition, live (server-sent events, from the buckets' republished
 *                                    writes, the notes and the work's bells, heard while a page listens)
 * - `/api/config`                    whether this inspector acts (`{ actions }`)
 * - `/api/logs?task=ID|worker=ID`    a task's or a worker's handler log lines (TROUPE_LOGS), oldest first, at most 500
 * - `/api/queues`                    per task type and queue: waiting, running, failed, completed, the last
 *                                    minute's rates and the live workers (`troupe stats`' numbers)
 *
 * With `actions` (given by `troupe inspect --actions` and by `troupe dev`: the same SDK calls as
 * the CLI), each a POST with the header `X-Troupe-Action: 1`, which no cross-site form can send:
 * `/api/tasks/:id/retry`, `/api/tasks/:id/cancel`, `/api/workflows/:id/cancel`,
 * `/api/workers/:id/drain`. Otherwise read-only: it subscribes and reads, and refuses every POST.
 *
 * Every request needs this start's token (src/inspect/guard.ts): the printed URL
 * `http://127.0.0.1:<port>/?token=…` opens the page, which keeps it in an HttpOnly,
 * SameSite=Strict cookie for its own requests; a program sends `Authorization: Bearer <token>`.
 * `Host` must name this server and `Origin`, when given, be its own, whatever the address. No
 * answer may be framed (`frame-ancestors 'none'`, `X-Frame-Options: DENY`), the page runs only
 * its own script (a CSP with its hash), and a failure answers 500 with a generic message (the
 * error goes to the log).
 *
 * Every event the API gives is `{ kind, id, event, seq, at, state?, record, workflow? }`: `seq`
 * the record's revision (0: a task's QUEUED state before any write), `at` when it was stored
 * (live: heard), `state` the actor's state path after it, `workflow` the run and step of a
 * step's task.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import type { AddressInfo } from "node:net";
import type { MsgHdrs, Subscription } from "@nats-io/transport-node";
import { taskMachine } from "../../machines/task.js";
import { workflowMachine } from "../../machines/workflow.js";
import { workerMachine } from "../../machines/worker.js";
import { PauseEntry, WorkerInfo, WorkflowRecord, type StepStatus, type TaskRecord } from "../../machines/records.js";
import { decodeJson, decodeWith } from "../nats/codec.js";
import { readBucket } from "../nats/bucket.js";
import { BELLS_SUBJECTS, EVENTS_STREAM, LOGS_STREAM, logSubject, PAUSES_BUCKET, STEPS_ROOT, TASKS_STREAM, TASKS_SUBJECTS, WORKERS_BUCKET, type ActorKind } from "../nats/topology.js";
import { RateWindow, readStats, type TroupeStats } from "../sdk/stats.js";
import type { NatsHandle } from "../nats/connection.js";
import { ACTOR_KINDS, fromJs, liveEvent, queuedFrom, readEventAt, readHistory, readRange, recordStream, storedEvent, type HistoryEvent } from "../nats/history.js";
import { machineDiagram, workflowDiagram, type Dag, type Diagram } from "./diagram.js";
import { guardHeaders, inlineBlocks, inlineHash, webGuard, type WebGuard } from "./guard.js";
import { PAGE } from "./page.js";
import { rootLogger } from "../log.js";

export interface Inspector {
  /** Where it listens, `http://127.0.0.1:<port>`: nothing answers there without the token. */
  readonly url: string;
  /** This start's token (256 random bits): `Authorization: Bearer <token>`, or `?token=`. */
  readonly token: string;
  /** What to open in a browser: `url` with the token, `http://127.0.0.1:<port>/?token=…`. */
  readonly link: string;
  readonly close: () => Promise<void>;
}

/** What the page's buttons do: the SDK's calls (`troupe retry`, `troupe cancel`, `troupe stop`). */
export interface InspectorActions {
  readonly retry: (id: string) => Promise<unknown>;
  readonly cancel?: (id: string) => Promise<unknown>;
  readonly cancelWorkflow?: (id: string) => Promise<unknown>;
  readonly drain?: (workerId: string) => Promise<unknown>;
}

export interface InspectorOptions {
  readonly port?: number;
  /** The address to listen on: `127.0.0.1` by default. */
  readonly host?: string;
  /** More names `Host` may give (with the port), e.g. the name a proxy or a tunnel uses. */
  readonly hosts?: ReadonlyArray<string>;
  /** The page's buttons; without them the inspector only reads. */
  readonly actions?: InspectorActions;
  /** Where a failed request's error goes (the answer says only that it failed); a logger on stderr by default. */
  readonly logger?: Logger;
}

/** The page's CSP: its own inline script and style (by hash), its own API, never framed. */
const PAGE_POLICY = [
  "default-src 'none'",
  `script-src ${inlineBlocks(PAGE, "script").map(inlineHash).join(" ")}`,
  `style-src ${inlineBlocks(PAGE, "style").map(inlineHash).join(" ")}`,
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

type Kind = "task" | "workflow" | "worker";
const KINDS = ACTOR_KINDS;
const ID = /^[A-Za-z0-9_-]+$/;
/** The most events an actor's page shows (a long-lived worker's heartbeats are folded by the page). */
const HISTORY_SHOWN = 1_000;

/** One transition as the API gives it. */
export interface InspectorEvent extends HistoryEvent {
  readonly kind: Kind;
  readonly id: string;
  /** A workflow step's task: its run and step (from the step's notify subject). */
  readonly workflow?: { readonly run: string; readonly step: string };
}

export interface WorkflowStepView {
  readonly step: string;
  readonly task: string;
  readonly queue: string;
  readonly status: StepStatus | "QUEUED" | "RETRYING";
  readonly after: ReadonlyArray<string>;
  readonly taskId?: string;
  readonly attempt?: number;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  readonly durationMs?: number;
  readonly error?: { readonly _tag: string; readonly message: string };
  /** Why a step that should be running is not: no worker serves its task, its queue is paused. */
  readonly stuck?: string;
}

export interface WorkflowGraph {
  readonly id: string;
  readonly workflow: string;
  readonly status: string;
  readonly dag: Dag;
  readonly steps: ReadonlyArray<WorkflowStepView>;
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
};

/** A step's task knows its run by its notify subject, `troupe.steps.<run>.<step>`. */
const stepOf = (record: unknown): { run: string; step: string } | undefined => {
  const notify = (record as { notify?: unknown } | null)?.notify;
  if (typeof notify !== "string" || !notify.startsWith(STEPS_ROOT)) return undefined;
  const [run, step] = notify.slice(STEPS_ROOT.length).split(".");
  return run === undefined || step === undefined ? undefined : { run, step };
};

const withActor = (kind: Kind, id: string, e: HistoryEvent): InspectorEvent => {
  const workflow = kind === "task" ? stepOf(e.record) : undefined;
  return { kind, id, ...e, ...(workflow === undefined ? {} : { workflow }) };
};

/** The newest `limit` messages of one stream, read as `kind`'s; `event` names the actor its subject says. */
const newest = async (
  nats: NatsHandle,
  stream: string,
  kind: Kind,
  limit: number,
  event: (subject: string, e: HistoryEvent) => InspectorEvent | undefined,
): Promise<InspectorEvent[]> => {
  const filter = ">";
  const info = await nats.jsm.streams.info(stream);
  if (info.state.messages === 0) return [];
  const start = Math.max(info.state.first_seq, info.state.last_seq - limit + 1);
  const read = await readRange(nats, stream, filter, start, info.state.last_seq, limit, (m) => event(m.subject, storedEvent(kind, fromJs(m))));
  return read.filter((e): e is InspectorEvent => e !== undefined);
};

/**
 * The newest waiting work messages, as `queued` events: read one by one (a work queue's
 * consumer would take its messages away, and may not overlap the workers' anyway).
 */
const waitingWork = async (nats: NatsHandle, limit: number): Promise<InspectorEvent[]> => {
  const { state } = await nats.jsm.streams.info(TASKS_STREAM);
  const out: InspectorEvent[] = [];
  for (let seq = Math.max(state.first_seq, state.last_seq - limit + 1); state.messages > 0 && seq <= state.last_seq; ) {
    const m = await nats.jsm.streams.getMessage(TASKS_STREAM, { seq, next_by_subj: TASKS_SUBJECTS } as unknown as { seq: number });
    if (m === null) break;
    seq = m.seq + 1;
    const e = storedEvent("task", { seq: 0, time: m.time, data: m.data, headers: m.header, subject: m.subject });
    const id = (e.record as { id?: unknown } | null)?.id;
    if (typeof id === "string") out.push(withActor("task", id, { ...e, event: "queued", seq: 0, state: "QUEUED" }));
  }
  return out;
};

/** The last `limit` events, oldest first: the record buckets' newest writes, TROUPE_EVENTS' notes and the work waiting, by time. */
const recent = async (nats: NatsHandle, limit: number): Promise<InspectorEvent[]> => {
  const keyOf = (subject: string) => subject.slice(subject.indexOf(".", 4) + 1);
  const sources = await Promise.all([
    ...(["task", "workflow", "worker"] as const).map((kind) => newest(nats, recordStream(kind), kind, limit, (subject, e) => withActor(kind, keyOf(subject), e))),
    // Notes: a note's own subject says whose it is.
    newest(nats, EVENTS_STREAM, "task", limit, (subject, e) => {
      const [, , kind, id] = subject.split(".");
      return KINDS.has(kind ?? "") && id !== undefined ? withActor(kind as Kind, id, e) : undefined;
    }),
    // Work not claimed yet: its message is its record.
    waitingWork(nats, limit),
  ]);
  const events = sources.flat();
  // A task's QUEUED state was its work message, gone once claimed: what its first claim says of it.
  const queued = new Set(events.filter((e) => e.kind === "task" && e.event === "queued").map((e) => e.id));
  for (const e of [...events]) {
    const r = e.record as TaskRecord | null;
    if (e.kind !== "task" || e.event !== "started" || r?.attempt !== 1 || r.retries !== undefined || queued.has(e.id)) continue;
    queued.add(e.id);
    events.push(withActor("task", e.id, { event: "queued", at: r.createdAt, seq: 0, state: "QUEUED", record: queuedFrom(r) }));
  }
  return events.sort((a, b) => a.at.localeCompare(b.at) || a.seq - b.seq).slice(-limit);
};

const bucketOf = (nats: NatsHandle, kind: Kind) => (kind === "task" ? nats.tasks : kind === "workflow" ? nats.workflows : nats.workers);

const current = async (nats: NatsHandle, kind: Kind, id: string): Promise<unknown> => {
  const entry = await bucketOf(nats, kind).get(id);
  if (entry === null || entry.operation !== "PUT") return null;
  const decoded = decodeJson(entry.value);
  return decoded.ok ? decoded.value : null;
};

/** One event of an actor by its revision (time travel), or `undefined` when it is not that actor's. */
const eventAt = async (nats: NatsHandle, kind: Kind, id: string, seq: number): Promise<InspectorEvent | undefined> => {
  const e = await readEventAt(nats, kind, id, seq);
  return e === undefined ? undefined : withActor(kind, id, e);
};

/** A step's status as a person reads it: a running step's task may still be queued, or waiting to retry. */
const stepStatus = (status: StepStatus, task: TaskRecord | undefined): WorkflowStepView["status"] => {
  if (status !== "RUNNING" || task === undefined) return status;
  return task.status === "QUEUED" ? "QUEUED" : task.status === "RETRYING" ? "RETRYING" : "RUNNING";
};

const graphOf = async (nats: NatsHandle, id: string, layout: (steps: ReadonlyArray<{ name: string; after: ReadonlyArray<string> }>) => Promise<Dag>): Promise<WorkflowGraph | undefined> => {
  const entry = await nats.workflows.get(id);
  if (entry === null || entry.operation !== "PUT") return undefined;
  const decoded = decodeWith(WorkflowRecord, entry.value, "workflow record");
  if (!decoded.ok) return undefined;
  const run = decoded.value;
  const names = Object.keys(run.definition.steps);
  const tasks = new Map<string, TaskRecord>();
  await Promise.all(
    names.map(async (name) => {
      const taskId = run.steps[name]?.taskId;
      if (taskId === undefined) return;
      const record = (await current(nats, "task", taskId)) as TaskRecord | null;
      if (record !== null) tasks.set(name, record);
    }),
  );
  const waiting = names.some((n) => tasks.get(n)?.status === "QUEUED");
  const [workers, pauses] = waiting
    ? await Promise.all([readBucket(nats.jsm, WORKERS_BUCKET, nats.workers, WorkerInfo, "worker registry entry"), readBucket(nats.jsm, PAUSES_BUCKET, nats.pauses, PauseEntry, "pause entry")])
    : [[], []];
  const live = workers.map((w) => w.value).filter((w) => w.state !== "stopped" && w.state !== "lost");
  const steps = names.map((name): WorkflowStepView => {
    const definition = run.definition.steps[name]!;
    const state = run.steps[name] ?? { status: "PENDING" as const };
    const task = tasks.get(name);
    const started = task?.startedAt === undefined ? undefined : Date.parse(task.startedAt);
    const finished = task?.finishedAt === undefined ? undefined : Date.parse(task.finishedAt);
    let stuck: string | undefined;
    if (task?.status === "QUEUED") {
      const pause = pauses.map((p) => p.value).find((p) => p.queue === definition.queue && (p.task === undefined || p.task === definition.task));
      if (pause !== undefined) stuck = `${pause.task === undefined ? `queue "${pause.queue}"` : `task "${pause.task}"`} is paused${pause.reason === undefined ? "" : `: ${pause.reason}`}`;
      else if (!live.some((w) => w.tasks.some((t) => t.name === definition.task && t.queue === definition.queue))) {
        stuck = `no worker serves task "${definition.task}" on queue "${definition.queue}"`;
      }
    }
    return {
      step: name,
      task: definition.task,
      queue: definition.queue,
      status: stepStatus(state.status, task),
      after: definition.after,
      ...(state.taskId === undefined ? {} : { taskId: state.taskId }),
      ...(task === undefined ? {} : { attempt: task.attempt }),
      ...(task?.startedAt === undefined ? {} : { startedAt: task.startedAt }),
      ...(task?.finishedAt === undefined ? {} : { finishedAt: task.finishedAt }),
      ...(started === undefined ? {} : { durationMs: (finished ?? Date.now()) - started }),
      ...(state.error === undefined ? {} : { error: state.error }),
      ...(stuck === undefined ? {} : { stuck }),
    };
  });
  return { id: run.id, workflow: run.workflow, status: run.status, dag: await layout(names.map((name) => ({ name, after: run.definition.steps[name]!.after }))), steps };
};

/** The most log lines a logs tab shows, and how long reading them may take. */
const LOG_LINES = 500;
const LOG_READ_MS = 5_000;

/** One handler log line: its stream sequence, when it was stored, and the pino object. */
export interface LogEntry {
  readonly seq: number;
  readonly at: string;
  readonly line: Readonly<Record<string, unknown>>;
}

/**
 * A task's or a worker's log lines, oldest first, read by subject
 * (`troupe.logs.<worker>.<task>`) one message at a time: no consumer is made. At most
 * `LOG_LINES` within `LOG_READ_MS`; `more` says lines were left unread.
 */
const readLogLines = async (nats: NatsHandle, filter: { readonly task?: string; readonly worker?: string }): Promise<{ lines: LogEntry[]; more: boolean }> => {
  const subject = logSubject(filter.worker ?? "*", filter.task ?? "*");
  const { state } = await nats.jsm.streams.info(LOGS_STREAM);
  const lines: LogEntry[] = [];
  const until = Date.now() + LOG_READ_MS;
  for (let seq = state.first_seq; state.messages > 0 && seq <= state.last_seq; ) {
    if (lines.length === LOG_LINES || Date.now() > until) return { lines, more: true };
    const m = await nats.jsm.streams.getMessage(LOGS_STREAM, { seq, next_by_subj: subject } as unknown as { seq: number });
    if (m === null) break;
    seq = m.seq + 1;
    const decoded = decodeJson(m.data);
    const line = decoded.ok && typeof decoded.value === "object" && decoded.value !== null ? (decoded.value as Record<string, unknown>) : { msg: new TextDecoder().decode(m.data) };
    lines.push({ seq: m.seq, at: m.time.toISOString(), line });
  }
  return { lines, more: false };
};

/**
 * The queues' numbers as `troupe stats` gives them, the rates over the last minute's reads: the
 * first read (or one after two idle minutes) counts the last minute's endings, later ones read
 * no index entry (`RateWindow`).
 */
const queueStats = (nats: NatsHandle) => {
  let window: { rates: RateWindow; at: number } | undefined;
  let reading: Promise<unknown> = Promise.resolve();
  const workers = async () =>
    (await readBucket(nats.jsm, WORKERS_BUCKET, nats.workers, WorkerInfo, "worker registry entry")).map((e) => e.value).filter((w) => w.state !== "stopped" && w.state !== "lost");
  const read = async (): Promise<TroupeStats> => {
    const now = Date.now();
    if (window === undefined || window.at < now - 120_000) {
      const first = await readStats(nats, workers, { timeout: 10_000 });
      window = { rates: new RateWindow(first, now), at: now };
      return first;
    }
    const stats = window.rates.add(await readStats(nats, workers, { rates: false }), now);
    window.at = now;
    return stats;
  };
  // One read at a time: two pages asking at once share the window in order.
  return (): Promise<TroupeStats> => {
    const next = reading.then(read, read);
    reading = next.catch(() => undefined);
    return next;
  };
};

/** A page's unsent events past which it is dropped. */
const MAX_UNSENT = 4 * 1024 * 1024;

/**
 * Live events for the pages' streams, while someone listens: the record buckets' republished
 * writes and the notes (`troupe.events.>`), and the work's bells (`troupe.bells.>`: a task
 * queued, without its payload).
 */
class LiveEvents {
  private readonly clients = new Set<ServerResponse>();
  private subs: Subscription[] = [];
  /** The last record seen of each workflow run, to tell a run's progress from a change of status. */
  private readonly lastRun = new Map<string, unknown>();

  constructor(private readonly nats: NatsHandle) {}

  /** Resolves once the subscriptions are in place at the server: the client misses no later event. */
  async add(res: ServerResponse): Promise<void> {
    this.clients.add(res);
    if (this.subs.length === 0) {
      const heard = (_e: unknown, m: { subject: string; data: Uint8Array; headers?: MsgHdrs }) => this.heard(m.subject, m.data, m.headers);
      this.subs = [this.nats.nc.subscribe("troupe.events.>", { callback: heard }), this.nats.nc.subscribe(BELLS_SUBJECTS, { callback: heard })];
    }
    await this.nats.nc.flush();
  }

  private heard(subject: string, data: Uint8Array, headers: MsgHdrs | undefined): void {
    if (this.clients.size === 0) return;
    const runKey = subject.startsWith("troupe.events.workflow.") ? subject : undefined;
    const e = liveEvent(subject, data, headers, runKey === undefined ? undefined : this.lastRun.get(runKey));
    if (e === undefined) return;
    if (runKey !== undefined && !e.note) {
      this.lastRun.delete(runKey);
      if (this.lastRun.size > 10_000) this.lastRun.delete(this.lastRun.keys().next().value!);
      this.lastRun.set(runKey, e.record);
    }
    const line = `id: ${e.seq}\ndata: ${JSON.stringify(withActor(e.kind as Kind, e.id, e))}\n\n`;
    for (const res of this.clients) {
      if (res.writableLength > MAX_UNSENT) {
        // A page that reads slower than events come: dropped (its EventSource reconnects and reloads).
        this.clients.delete(res);
        res.destroy();
        continue;
      }
      res.write(line);
    }
  }

  remove(res: ServerResponse): void {
    this.clients.delete(res);
    if (this.clients.size > 0) return;
    // No one listens: nothing is heard until the next page asks.
    for (const sub of this.subs.splice(0)) sub.unsubscribe();
    this.lastRun.clear();
  }

  async close(): Promise<void> {
    for (const res of this.clients) res.end();
    this.clients.clear();
    for (const sub of this.subs.splice(0)) sub.unsubscribe();
  }
}

const readBody = (req: IncomingMessage): Promise<void> =>
  new Promise((resolve) => {
    req.on("data", () => undefined);
    req.on("end", resolve);
    req.on("error", () => resolve());
  });

export const startInspector = async (nats: NatsHandle, options: InspectorOptions = {}): Promise<Inspector> => {
  const live = new LiveEvents(nats);
  let diagrams: Promise<Record<Kind, Diagram>> | undefined;
  const machines = () =>
    (diagrams ??= Promise.all([machineDiagram(taskMachine), machineDiagram(workflowMachine), machineDiagram(workerMachine)]).then(([task, workflow, worker]) => ({ task, workflow, worker })));
  const actions = options.actions;
  let logger = options.logger;
  const queues = queueStats(nats);

  /** A page's button: the action's SDK call, or why not. */
  const act = async (req: IncomingMessage, res: ServerResponse, id: string, call: ((id: string) => Promise<unknown>) | undefined) => {
    await readBody(req);
    if (actions === undefined || call === undefined) return json(res, 405, { error: "this inspector does not act: start it with `troupe inspect --actions`" });
    if (req.headers["x-troupe-action"] !== "1") return json(res, 403, { error: "actions need the header X-Troupe-Action: 1" });
    if (!ID.test(id)) return json(res, 400, { error: "not a Troupe id" });
    const done = await call(id).then(
      (result) => ({ ok: true as const, result }),
      (e: unknown) => {
        // Troupe's typed errors say what stopped the action; anything else only that it failed.
        if (typeof e === "object" && e !== null && "_tag" in e && e instanceof Error) return { ok: false as const, error: e.message };
        (logger ??= rootLogger()).error({ err: e, action: req.url }, "inspector action failed");
        return { ok: false as const, error: "the action failed (the inspector's log says why)" };
      },
    );
    return json(res, done.ok ? 200 : 409, done.ok ? { ok: true, id, result: done.result } : { error: done.error });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://inspector");
    const path = url.pathname;
    guardHeaders(res, path === "/" ? PAGE_POLICY : undefined);
    const g = guard;
    if (g === undefined) return json(res, 503, { error: "starting" });
    // A page elsewhere whose name was rebound to this address would be same-origin: only the
    // names of this address answer, and only this inspector's own page may call it.
    if (!g.hostAllowed(req.headers.host)) return json(res, 421, { error: "this inspector answers on its own address only" });
    if (!g.originAllowed(req.headers.origin)) return json(res, 403, { error: "this inspector answers its own page only" });
    if (path === "/favicon.ico") return void res.writeHead(204).end();
    if (!g.authorized(req, url)) {
      await readBody(req);
      if (path !== "/") return json(res, 401, { error: "this inspector needs its token: the address troupe inspect printed carries it" });
      res.writeHead(401, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
      return void res.end("Open the address troupe inspect printed: it carries this start's token.\n");
    }
    if (req.method === "POST") {
      const action = /^\/api\/(tasks|workflows|workers)\/([^/]+)\/(retry|cancel|drain)$/.exec(path);
      if (action === null) return json(res, 404, { error: "not found" });
      const [, kind, id, verb] = action as unknown as [string, string, string, string];
      const call =
        kind === "tasks" && verb === "retry"
          ? actions?.retry
          : kind === "tasks" && verb === "cancel"
            ? actions?.cancel
            : kind === "workflows" && verb === "cancel"
              ? actions?.cancelWorkflow
              : kind === "workers" && verb === "drain"
                ? actions?.drain
                : undefined;
      if (actions !== undefined && call === undefined) return json(res, 404, { error: `no ${verb} for ${kind}` });
      return act(req, res, id, call);
    }
    if (req.method !== "GET" && req.method !== "HEAD") return json(res, 405, { error: "only GET, and POST for actions" });
    if (path === "/") {
      // The token kept for the page's own requests (its script drops it from the address bar).
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "set-cookie": g.setCookie() });
      res.end(PAGE);
      return;
    }
    if (path === "/api/config") return json(res, 200, { actions: actions !== undefined });
    if (path === "/api/machines") return json(res, 200, await machines());
    if (path === "/api/queues") {
      const { workers, ...stats } = await queues();
      return json(res, 200, { ...stats, liveWorkers: workers.length });
    }
    if (path === "/api/logs") {
      const task = url.searchParams.get("task") ?? undefined;
      const worker = url.searchParams.get("worker") ?? undefined;
      if ((task === undefined) === (worker === undefined) || !ID.test(task ?? worker ?? "")) return json(res, 400, { error: "logs of one task (?task=ID) or one worker (?worker=ID)" });
      return json(res, 200, await readLogLines(nats, task === undefined ? { worker: worker! } : { task }));
    }
    if (path === "/api/recent") {
      const limit = Math.min(Math.max(Number(url.searchParams.get("limit") ?? 300) || 300, 1), 5_000);
      return json(res, 200, await recent(nats, limit));
    }
    if (path === "/events") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
      req.on("close", () => live.remove(res));
      await live.add(res);
      // Written once the consumer is open: a client that heard this misses no later event.
      res.write(": troupe inspector\n\n");
      return;
    }
    const graph = /^\/api\/workflows\/([^/]+)\/graph$/.exec(path);
    if (graph !== null) {
      const id = graph[1]!;
      if (!ID.test(id)) return json(res, 400, { error: "not a workflow run id" });
      const found = await graphOf(nats, id, workflowDiagram);
      return found === undefined ? json(res, 404, { error: `no workflow run ${id}` }) : json(res, 200, found);
    }
    const at = /^\/api\/actors\/([a-z]+)\/([^/]+)\/at\/(\d+)$/.exec(path);
    if (at !== null) {
      const [, kind, id, seq] = at as unknown as [string, string, string, string];
      if (!KINDS.has(kind) || !ID.test(id)) return json(res, 400, { error: "kind is task, workflow or worker; id is a Troupe id" });
      const event = await eventAt(nats, kind as Kind, id, Number(seq));
      return event === undefined ? json(res, 404, { error: `no event ${seq} of ${kind} ${id}` }) : json(res, 200, { kind, id, seq: Number(seq), event });
    }
    const actor = /^\/api\/actors\/([a-z]+)\/([^/]+)$/.exec(path);
    if (actor !== null) {
      const [, kind, id] = actor as unknown as [string, string, string];
      if (!KINDS.has(kind) || !ID.test(id)) return json(res, 400, { error: "kind is task, workflow or worker; id is a Troupe id" });
      const [record, history] = await Promise.all([current(nats, kind as Kind, id), readHistory(nats, kind as ActorKind, id, Number.POSITIVE_INFINITY, true)]);
      const events = history.slice(-HISTORY_SHOWN).map((e) => withActor(kind as Kind, id, e));
      // A task never claimed: its work message is its record.
      const now = record ?? (kind === "task" ? (events.findLast((e) => !e.note)?.record ?? null) : null);
      if (now === null && events.length === 0) return json(res, 404, { error: `no ${kind} ${id}` });
      // A note (an attempt's `lost`, fenced, often after the winner wrote) is not the actor's state.
      const state = events.findLast((e) => e.state !== undefined && !e.note)?.state;
      return json(res, 200, { kind, id, record: now, ...(state === undefined ? {} : { state }), events, ...(history.length > events.length ? { omitted: history.length - events.length } : {}) });
    }
    json(res, 404, { error: "not found" });
  };

  let guard: WebGuard | undefined;
  const bound = options.host ?? "127.0.0.1";

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      // The answer says only that it failed: an error's message may name what a caller should not see.
      (logger ??= rootLogger()).error({ err: e, method: req.method, path: new URL(req.url ?? "/", "http://inspector").pathname }, "inspector request failed");
      if (!res.headersSent) json(res, 500, { error: "the inspector failed to answer (its log says why)" });
      else res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, bound, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  guard = webGuard("inspector", bound, port, options.hosts);
  const url = `http://${bound.includes(":") ? `[${bound}]` : bound}:${port}`;
  return {
    url,
    token: guard.token,
    link: `${url}/?token=${guard.token}`,
    close: async () => {
      await live.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};
