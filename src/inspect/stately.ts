/**
 * A bridge to Stately's inspector (`@statelyai/inspect`): one actor's events (its record's
 * revisions and the notes about it), its history first and then live, sent as the inspection events Stately's tools draw. The
 * actor is registered with the machine its hosts run; each event is an event and a snapshot
 * (the state after it, and the record as context).
 *
 * `bridgeToStately` needs no part of `@statelyai/inspect`: the caller brings the inspector
 * (`createBrowserInspector`, `createWebSocketInspector`, `createSkyInspector`, `createInspector`);
 * `serveStately` (the CLI's) loads the package when called, and serves the page itself, on
 * loopback and behind a token.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { AnyStateMachine, StateValue } from "xstate";
import { stateOf, taskMachine } from "../../machines/task.js";
import { TaskStatuses } from "../../machines/records.js";
import { workflowMachine } from "../../machines/workflow.js";
import { workerMachine } from "../../machines/worker.js";
import { InvalidOption } from "../errors.js";
import { followActor, type HistoryEvent } from "../nats/history.js";
import type { ActorKind } from "../nats/topology.js";
import { connectionOf, type Troupe } from "../sdk/troupe.js";
import { guardHeaders, inlineHash, webGuard, type WebGuard } from "./guard.js";

/** A snapshot as Stately's inspector takes it. */
export interface StatelySnapshot {
  readonly status?: "active" | "done" | "error" | "stopped";
  readonly value?: unknown;
  readonly context?: unknown;
  readonly output?: unknown;
}

/** An event as Stately's inspector takes it. */
export interface StatelyEvent {
  readonly type: string;
  readonly [key: string]: unknown;
}

/**
 * What an actor is registered as: the inspector takes the machine's definition from
 * `logic.config` (its `actor(...)` ignores a `definition` passed in `info`).
 */
export interface StatelyActorRef {
  readonly sessionId: string;
  readonly id: string;
  readonly logic: { readonly config: unknown };
  send(event: StatelyEvent): void;
  getSnapshot(): unknown;
}

/** The part of `@statelyai/inspect`'s `Inspector` the bridge calls: any of its inspectors fits. */
export interface StatelyInspector {
  actor(actor: StatelyActorRef | string, snapshot?: StatelySnapshot, info?: { definition?: string; parentId?: string; rootId?: string }): void;
  event(actor: StatelyActorRef | string, event: StatelyEvent | string, info?: { source?: string }): void;
  snapshot(actor: StatelyActorRef | string, snapshot: StatelySnapshot, info?: { event?: StatelyEvent }): void;
}

/** The actor to show: `{ kind: "task", id }` is what `troupe inspect --stately task:<id>` names. */
export interface StatelyTarget {
  readonly kind: ActorKind;
  readonly id: string;
}

export interface StatelyBridgeOptions {
  /** Send the actor's stored history before its live events (default `true`); `false`: live events only. */
  readonly replay?: boolean;
  /** Called when following the stream fails; the bridge then stops (default: a warning in the client's log). */
  readonly onError?: (error: unknown) => void;
}

export interface StatelyBridge {
  /** The session id the actor has in the inspector (`task:<id>`). */
  readonly sessionId: string;
  /** Stops following: nothing more is sent, the stream's consumer is closed. */
  close(): Promise<void>;
}

const MACHINES: Record<ActorKind, AnyStateMachine> = { task: taskMachine, workflow: workflowMachine, worker: workerMachine };
const ID = /^[A-Za-z0-9_-]+$/;
const TASK_STATUSES: ReadonlySet<string> = new Set(TaskStatuses);

/** A dotted state path as an XState state value: `RUNNING.executing` is `{ RUNNING: "executing" }`. */
export const stateValueOf = (path: string): StateValue => {
  const parts = path.split(".");
  let value: StateValue = parts.at(-1) ?? path;
  for (let i = parts.length - 2; i >= 0; i--) value = { [parts[i] ?? ""]: value };
  return value;
};

const fieldOf = (record: unknown, field: string): string | undefined => {
  const value = typeof record === "object" && record !== null ? (record as Record<string, unknown>)[field] : undefined;
  return typeof value === "string" ? value : undefined;
};

/**
 * The state after an event: the path the live actor published with it, else what its record
 * stands for (a task's or workflow's `status`, a worker's `state`), else unknown.
 */
const valueOf = (kind: ActorKind, e: HistoryEvent): StateValue | undefined => {
  if (e.state !== undefined) return stateValueOf(e.state);
  if (kind === "task") {
    const status = fieldOf(e.record, "status");
    return status !== undefined && TASK_STATUSES.has(status) ? stateOf(status as (typeof TaskStatuses)[number]) : undefined;
  }
  const field = fieldOf(e.record, kind === "workflow" ? "status" : "state");
  return field === undefined ? undefined : stateValueOf(field);
};

/** `done` in a top-level final state, as XState says of the machine itself. */
const statusOf = (machine: AnyStateMachine, value: StateValue): StatelySnapshot["status"] => {
  const top = typeof value === "string" ? value : Object.keys(value)[0];
  const states = (machine.config.states ?? {}) as Record<string, { type?: string }>;
  return top !== undefined && states[top]?.type === "final" ? "done" : "active";
};

/**
 * Feeds one actor's events to a Stately inspector until `close()`: registers it with its
 * machine's definition, then for each event in TROUPE_EVENTS (history first, then live, in
 * stream order) an event `{ type: <event name>, at, seq }` and a snapshot with the state value
 * after it and the record as context.
 */
export const bridgeToStately = async (
  troupe: Troupe,
  target: StatelyTarget,
  inspector: StatelyInspector,
  options: StatelyBridgeOptions = {},
): Promise<StatelyBridge> => {
  const machine = MACHINES[target.kind];
  if (machine === undefined) throw new InvalidOption({ message: `unknown actor kind "${String(target.kind)}": task, workflow or worker` });
  if (!ID.test(target.id)) throw new InvalidOption({ message: `"${target.id}" is not an actor id` });
  const nats = connectionOf(troupe);
  const sessionId = `${target.kind}:${target.id}`;
  const initial = stateValueOf(String(machine.config.initial ?? ""));
  let snapshot: StatelySnapshot = { status: "active", value: initial, context: undefined };
  const ref: StatelyActorRef = {
    sessionId,
    id: target.id,
    logic: { config: machine.config },
    send: () => undefined,
    getSnapshot: () => snapshot,
  };

  let registered = false;
  let closed = false;
  const register = () => {
    if (registered) return;
    registered = true;
    inspector.actor(ref, snapshot);
  };

  const send = (e: HistoryEvent) => {
    // An attempt's loss is that attempt's event, not the task's: its state stays the task's.
    if (e.note) {
      if (registered) inspector.event(ref, { type: e.event, at: e.at, seq: e.seq, data: e.record });
      return;
    }
    // The actor's own record is its context; anything else an event carried stays with the event.
    const isRecord = fieldOf(e.record, "id") === target.id;
    const event: StatelyEvent = { type: e.event, at: e.at, seq: e.seq, ...(isRecord || e.record === null ? {} : { data: e.record }) };
    const value = valueOf(target.kind, e) ?? snapshot.value ?? initial;
    const next: StatelySnapshot = { status: statusOf(machine, value as StateValue), value, context: isRecord ? e.record : snapshot.context };
    if (!registered) {
      // Registered as it was when the first event is known, so the drawing opens in that state.
      snapshot = next;
      register();
    }
    snapshot = next;
    inspector.event(ref, event);
    inspector.snapshot(ref, snapshot, { event });
  };

  const following = await followActor(nats, target.kind, target.id, options.replay !== false, (e) => {
    if (closed) return;
    try {
      send(e);
    } catch (error) {
      (options.onError ?? ((err: unknown) => troupe.log.warn({ err, actor: sessionId }, "stately bridge stopped")))(error);
    }
  });

  // An actor with no stored events yet is drawn in its machine's initial state until its first one.
  if (options.replay === false || following.replayed === 0) register();

  return {
    sessionId,
    close: async () => {
      if (closed) return;
      closed = true;
      following.close();
    },
  };
};

/** `task:<id>`, `workflow:<id>` or `worker:<id>`, as `troupe inspect --stately` takes it. */
export const parseStatelyTarget = (text: string): StatelyTarget => {
  const colon = text.indexOf(":");
  const kind = text.slice(0, colon);
  const id = text.slice(colon + 1);
  if (colon < 0 || !(kind in MACHINES) || !ID.test(id)) throw new InvalidOption({ message: `"${text}" names no actor: use task:<id>, workflow:<id> or worker:<id>` });
  return { kind: kind as ActorKind, id };
};

/** Stately's inspector UI, which the bridge's page frames and feeds by `postMessage`. */
export const STATELY_UI = "https://stately.ai/inspect";
const STATELY_ORIGIN = new URL(STATELY_UI).origin;
/** The most events the bridge keeps for a page that opens later (the actor's registration is kept besides). */
const KEPT = 200;

/**
 * The bridge's page: Stately's UI in a frame, fed the events this server streams (`/events`,
 * server-sent events, sent on once the UI says it is connected). Messages go to and are taken
 * from Stately's origin only; the token leaves the address bar once the page is open.
 */
const BRIDGE_SCRIPT = `
const frame = document.getElementById("inspector");
const ORIGIN = ${JSON.stringify(STATELY_ORIGIN)};
const waiting = [];
let connected = false;
history.replaceState(null, "", "/" + location.hash);
const post = (data) => frame.contentWindow.postMessage(data, ORIGIN);
addEventListener("message", (e) => {
  if (e.origin !== ORIGIN || !e.data || e.data.type !== "@statelyai.connected") return;
  connected = true;
  for (const data of waiting.splice(0)) post(data);
});
const events = new EventSource("/events");
events.onmessage = (m) => {
  const data = JSON.parse(m.data);
  if (connected) post(data); else waiting.push(data);
};
`;
const BRIDGE_STYLE = "* { margin: 0; padding: 0; } html, body { height: 100%; } iframe { width: 100%; height: 100%; border: none; }";
const BRIDGE_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stately inspector (Troupe)</title>
<style>${BRIDGE_STYLE}</style>
</head>
<body>
<iframe id="inspector" src="${STATELY_UI}" referrerpolicy="no-referrer"></iframe>
<script>${BRIDGE_SCRIPT}</script>
</body>
</html>`;
const BRIDGE_POLICY = [
  "default-src 'none'",
  `script-src ${inlineHash(BRIDGE_SCRIPT)}`,
  `style-src ${inlineHash(BRIDGE_STYLE)}`,
  `frame-src ${STATELY_ORIGIN}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

export interface StatelyServeOptions {
  /** The port (a free one when 0 or unset). */
  readonly port?: number;
  /** The address to listen on: `127.0.0.1` by default. Another address serves the actor's records to whoever reaches it with the token. */
  readonly host?: string;
}

export interface StatelyServer {
  /** Where it listens, `http://127.0.0.1:<port>` (answers nothing without the token). */
  readonly url: string;
  /** This start's token (256 random bits). */
  readonly token: string;
  /** What to open in a browser: `url` with the token, `http://127.0.0.1:<port>/?token=…`. */
  readonly link: string;
  close(): Promise<void>;
}

const listen = (server: Server, port: number, host: string) =>
  new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });

/**
 * Stately's inspector for one actor, served locally (`troupe inspect --stately`): a page on
 * `host` (127.0.0.1) and `port` (a free one when 0) that frames Stately's inspector UI and feeds
 * it, over server-sent events, what a bridge sends (the actor's history, then live); `actor`
 * may be written `task:<id>`. Every request needs this start's token (`link` carries it) and
 * must name this server in `Host` and, if it has one, in `Origin`; the page may not be framed.
 * The last 200 events are kept for a page opened later. `@statelyai/inspect` is loaded only here.
 */
export const serveStately = async (troupe: Troupe, actor: StatelyTarget | string, options: StatelyServeOptions = {}): Promise<StatelyServer> => {
  const target = typeof actor === "string" ? parseStatelyTarget(actor) : actor;
  let inspect: typeof import("@statelyai/inspect");
  try {
    inspect = await import("@statelyai/inspect");
  } catch {
    throw new InvalidOption({ message: "Stately's inspector needs the package @statelyai/inspect: npm install @statelyai/inspect" });
  }
  const host = options.host ?? "127.0.0.1";
  let guard: WebGuard | undefined;
  // What was sent: the registration, then the last events, each with its number (a page that reconnects says the last it had).
  let registration: { n: number; line: string } | undefined;
  const kept: Array<{ n: number; line: string }> = [];
  let sent = 0;
  const pages = new Set<ServerResponse>();
  const write = (res: ServerResponse, e: { n: number; line: string }) => res.write(`id: ${e.n}\ndata: ${e.line}\n\n`);
  const inspector = inspect.createInspector({
    send: (event) => {
      const e = { n: ++sent, line: JSON.stringify(event) };
      if (event.type === "@xstate.actor" && registration === undefined) registration = e;
      else {
        kept.push(e);
        if (kept.length > KEPT) kept.shift();
      }
      for (const res of pages) write(res, e);
    },
  });

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://bridge");
    guardHeaders(res, url.pathname === "/" ? BRIDGE_POLICY : undefined);
    const refuse = (status: number, text: string) => {
      res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
      res.end(`${text}\n`);
    };
    const g = guard;
    if (g === undefined) return refuse(503, "starting");
    if (!g.hostAllowed(req.headers.host)) return refuse(421, "this bridge answers on its own address only");
    if (!g.originAllowed(req.headers.origin)) return refuse(403, "this bridge answers its own page only");
    if (req.method !== "GET") return refuse(405, "only GET");
    if (!g.authorized(req, url)) return refuse(401, "open the address troupe inspect --stately printed: it carries this start's token");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "set-cookie": g.setCookie() });
      return void res.end(BRIDGE_PAGE);
    }
    if (url.pathname === "/events") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" });
      const after = Number(req.headers["last-event-id"] ?? 0) || 0;
      if (registration !== undefined && registration.n > after) write(res, registration);
      for (const e of kept) if (e.n > after) write(res, e);
      pages.add(res);
      req.on("close", () => pages.delete(res));
      return;
    }
    refuse(404, "not found");
  };

  const server = createServer(handle);
  await listen(server, options.port ?? 0, host);
  const port = (server.address() as AddressInfo).port;
  guard = webGuard("stately", host, port);
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  const stop = async () => {
    for (const res of pages) res.end();
    pages.clear();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  try {
    const bridge = await bridgeToStately(troupe, target, inspector);
    return {
      url,
      token: guard.token,
      link: `${url}/?token=${guard.token}`,
      close: async () => {
        await bridge.close();
        await stop();
      },
    };
  } catch (e) {
    await stop();
    throw e;
  }
};
