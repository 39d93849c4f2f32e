/**
 * A bridge to Stately's inspector (`@statelyai/inspect`): one actor's events (its record's
 * revisions and the notes about it), its history first and then live, sent as the inspection events Stately's tools draw. The
 * actor is registered with the machine its hosts run; each event is an event and a snapshot
 * (the state after it, and the record as context).
 *
 * `bridgeToStately` needs no part of `@statelyai/inspect`: the caller brings the inspector
 * (`createBrowserInspector`, `createWebSocketInspector`, `createSkyInspector`, `createInspector`);
 * `serveStately` (the CLI's) loads the package when called.
 */
import { createServer as createNetServer, type AddressInfo } from "node:net";
import type { AnyStateMachine, StateValue } from "xstate";
import { stateOf, taskMachine } from "../../machines/task.js";
import { TaskStatuses } from "../../machines/records.js";
import { workflowMachine } from "../../machines/workflow.js";
import { workerMachine } from "../../machines/worker.js";
import { InvalidOption } from "../errors.js";
import { followActor, type HistoryEvent } from "../nats/history.js";
import type { ActorKind } from "../nats/topology.js";
import { connectionOf, type Troupe } from "../sdk/troupe.js";

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

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const probe = createNetServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });

/**
 * Stately's inspector for one actor, served locally (`troupe inspect --stately`): the page
 * `@statelyai/inspect/server` serves (Stately's inspector UI in a frame) on `port` (a free one
 * when 0), fed over its WebSocket by a bridge; `actor` may be written `task:<id>`. `@statelyai/inspect` is loaded only here.
 */
export const serveStately = async (
  troupe: Troupe,
  actor: StatelyTarget | string,
  options: { readonly port?: number } = {},
): Promise<{ readonly url: string; close(): Promise<void> }> => {
  const target = typeof actor === "string" ? parseStatelyTarget(actor) : actor;
  let inspect: typeof import("@statelyai/inspect");
  let server: typeof import("@statelyai/inspect/server");
  try {
    [inspect, server] = await Promise.all([import("@statelyai/inspect"), import("@statelyai/inspect/server")]);
  } catch {
    throw new InvalidOption({ message: "Stately's inspector needs the package @statelyai/inspect: npm install @statelyai/inspect" });
  }
  const port = options.port === undefined || options.port === 0 ? await freePort() : options.port;
  const page = server.createInspectorServer({ port, autoOpen: false });
  const inspector = inspect.createWebSocketInspector({ url: `ws://localhost:${port}` });
  try {
    const bridge = await bridgeToStately(troupe, target, inspector);
    return {
      url: `http://localhost:${port}`,
      close: async () => {
        await bridge.close();
        inspector.stop();
        page.stop();
      },
    };
  } catch (e) {
    inspector.stop();
    page.stop();
    throw e;
  }
};
