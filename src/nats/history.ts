/**
 * An actor's history: its record's revisions, oldest first (`troupe.history`, `troupe
 * history`, the inspector). Each transition is stored once, as a write of the record; the
 * record buckets keep each key's revisions (`RECORD_HISTORY`), so the history is read from
 * the bucket's stream, no second copy of it anywhere. A task never claimed has no revision:
 * its QUEUED record is its work message, and a claimed one's QUEUED state is what its first
 * revision says of its submit (`queued`, at its `createdAt`, sequence 0).
 */
import { DeliverPolicy, type JsMsg, type StoredMsg } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import { recordWith, TaskRecord as TaskRecordSchema, type TaskRecord, type TaskStatus } from "../../machines/records.js";
import { eventOf, stateOf } from "../../machines/task.js";
import { decodeJson, decodeValueWith } from "./codec.js";
import type { NatsHandle } from "./connection.js";
import { bucketOf, EVENTS_STREAM, eventSubject, Headers, kvSubject, recordSubject, statePath, TASKS_STREAM, workOfTask, type ActorKind } from "./topology.js";

/** One transition: a write of the actor's record (or, from TROUPE_EVENTS, a note about it: `lost`, `rejected`). */
export interface HistoryEvent {
  /** What happened: the status the record entered (`queued`, `started`, `completed`, …), `progress`, a worker's `heartbeat`, or a note's name. */
  readonly event: string;
  /** When it was stored (ISO time). */
  readonly at: string;
  /** The record's revision (its bucket stream's sequence); 0 for a task's QUEUED state before any write; a note's TROUPE_EVENTS sequence. */
  readonly seq: number;
  /** The actor's state path after the event (`RUNNING.executing`). */
  readonly state?: string;
  /** The record (a task's, a run's, a worker's registry entry) or the data a note carried. */
  readonly record: unknown;
  /** A note (`lost`, `rejected`), not a write of the record: its `seq` is TROUPE_EVENTS'. */
  readonly note?: true;
}

/** The bucket stream of an actor kind. */
export const recordStream = (kind: ActorKind) => `KV_${bucketOf(kind)}`;

const isTask = (record: unknown): record is TaskRecord => decodeValueWith(TaskRecordSchema, record, "task record").ok;

/** The event a write of `record` stands for; `previous` is the revision before it, when known. */
export const recordEvent = (kind: ActorKind, record: unknown, operation: string, previous?: unknown): string => {
  if (operation === "DEL" || operation === "PURGE") return kind === "worker" ? "deregistered" : "removed";
  if (kind === "worker") return "heartbeat";
  const status = (record as { status?: unknown } | null)?.status;
  if (typeof status !== "string") return "written";
  if (kind === "task") {
    // A claim clears the progress of the attempt before: a RUNNING write with progress is a report.
    if (status === "RUNNING" && (record as TaskRecord).progress !== undefined) return "progress";
    return eventOf(status as TaskStatus);
  }
  const before = (previous as { status?: unknown } | undefined)?.status;
  return before === status ? "progress" : status.toLowerCase();
};

/** The state path an actor's record stands for: a task's from its status, a run's is its status, a worker's from the header its write carried. */
export const recordState = (kind: ActorKind, record: unknown, headers: MsgHdrs | undefined): string | undefined => {
  const fromHeader = headers?.get(Headers.state);
  if (fromHeader !== undefined && fromHeader !== "") return fromHeader;
  const status = (record as { status?: unknown } | null)?.status;
  if (typeof status !== "string") return undefined;
  return kind === "task" ? statePath(stateOf(status as TaskStatus)) : kind === "workflow" ? status : undefined;
};

/** One stored write (or note) as the history and the inspector show it. */
export const storedEvent = (
  kind: ActorKind,
  msg: { readonly seq: number; readonly time: Date; readonly data: Uint8Array; readonly headers: MsgHdrs | undefined; readonly subject: string },
  previous?: unknown,
): HistoryEvent => {
  const decoded = msg.data.length === 0 ? undefined : decodeJson(msg.data);
  const record = decoded?.ok ? decoded.value : null;
  if (msg.subject.startsWith("troupe.events.")) {
    const note = msg.subject.slice(msg.subject.lastIndexOf(".") + 1);
    const state = msg.headers?.get(Headers.state);
    return { event: note, at: msg.time.toISOString(), seq: msg.seq, ...(state ? { state } : {}), record, note: true };
  }
  const operation = msg.headers?.get("KV-Operation") || "PUT";
  const state = operation === "PUT" ? recordState(kind, record, msg.headers) : undefined;
  return { event: recordEvent(kind, record, operation, previous), at: msg.time.toISOString(), seq: msg.seq, ...(state === undefined ? {} : { state }), record };
};

const fromStored = (m: StoredMsg) => ({ seq: m.seq, time: m.time, data: m.data, headers: m.header, subject: m.subject });
export const fromJs = (m: JsMsg) => ({ seq: m.seq, time: new Date(m.info.timestampNanos / 1e6), data: m.data, headers: m.headers, subject: m.subject });

/** Messages of `stream` on the literal subject `subject`, oldest first, one direct read each (a key keeps a few dozen at most). */
const revisionsOf = async (nats: NatsHandle, stream: string, subject: string, limit: number): Promise<StoredMsg[]> => {
  const out: StoredMsg[] = [];
  let seq = 1;
  while (out.length < limit) {
    // MSG.GET's `next_by_subj`: the first message on the subject at or after `seq`.
    const msg = await nats.jsm.streams.getMessage(stream, { seq, next_by_subj: subject } as unknown as { seq: number });
    if (msg === null) break;
    out.push(msg);
    seq = msg.seq + 1;
  }
  return out;
};

/** A task's QUEUED state as its first write (or its work message) tells it: what its submit stored. */
export const queuedFrom = (record: TaskRecord): TaskRecord =>
  recordWith(record, {
    status: "QUEUED",
    attempt: 0,
    output: undefined,
    error: undefined,
    startedAt: undefined,
    finishedAt: undefined,
    retryAt: undefined,
    workerId: undefined,
    lostAttempts: undefined,
    message: undefined,
    progress: undefined,
  });

/**
 * An actor's history, oldest first (at most `limit`, the newest kept): every revision its
 * bucket keeps, a task's QUEUED state first; `notes`: with TROUPE_EVENTS' notes about it
 * (an attempt's `lost`, a worker's `rejected`) in their place by time.
 */
export const readHistory = async (nats: NatsHandle, kind: ActorKind, id: string, limit = 1_000, notes = false): Promise<HistoryEvent[]> => {
  const stream = recordStream(kind);
  const revisions = await revisionsOf(nats, stream, kvSubject(bucketOf(kind), id), Number.POSITIVE_INFINITY);
  const events: HistoryEvent[] = [];
  let previous: unknown;
  for (const m of revisions) {
    const e = storedEvent(kind, fromStored(m), previous);
    previous = e.record;
    events.push(e);
  }
  if (kind === "task") {
    const first = events[0]?.record;
    if (first === undefined) {
      // Never claimed: its work message is its record, for as long as it waits.
      const work = await nats.jsm.streams.getMessage(TASKS_STREAM, { last_by_subj: workOfTask(id) }).catch(() => null);
      const decoded = work === null ? undefined : decodeJson(work.data);
      if (decoded?.ok && isTask(decoded.value) && decoded.value.id === id) {
        events.push({ event: "queued", at: work!.time.toISOString(), seq: 0, state: "QUEUED", record: decoded.value });
      }
    } else if (isTask(first) && first.status !== "QUEUED") {
      events.unshift({ event: "queued", at: first.createdAt, seq: 0, state: "QUEUED", record: queuedFrom(first) });
    }
  }
  if (notes) {
    for (const m of await readNotes(nats, kind, id)) events.push(storedEvent(kind, fromStored(m)));
    events.sort((a, b) => a.at.localeCompare(b.at) || (a.note === b.note ? a.seq - b.seq : a.note ? 1 : -1));
  }
  return events.slice(-limit);
};

/** TROUPE_EVENTS' notes about one actor, oldest first (a few at most: an attempt fenced, a message rejected). */
const readNotes = async (nats: NatsHandle, kind: ActorKind, id: string): Promise<StoredMsg[]> => {
  const filter = eventSubject(kind, id, "*");
  const info = await nats.jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  const subjects = Object.keys(info.state.subjects ?? {});
  const out: StoredMsg[] = [];
  for (const subject of subjects) out.push(...(await revisionsOf(nats, EVENTS_STREAM, subject, 100)));
  return out.sort((a, b) => a.seq - b.seq);
};

/** One event of an actor by its sequence (time travel): a revision of its record, or for a task sequence 0, its QUEUED state. */
export const readEventAt = async (nats: NatsHandle, kind: ActorKind, id: string, seq: number): Promise<HistoryEvent | undefined> => {
  if (seq === 0) return kind === "task" ? (await readHistory(nats, kind, id, Number.POSITIVE_INFINITY)).find((e) => e.seq === 0) : undefined;
  // `null`: no such message (removed by retention, or never); another error is the server's.
  const m = await nats.jsm.streams.getMessage(recordStream(kind), { seq });
  if (m === null || m.subject !== kvSubject(bucketOf(kind), id)) return undefined;
  return storedEvent(kind, fromStored(m));
};

/**
 * The stored messages of `stream` on `filter` with sequences in [from, to], oldest first, at
 * most `max`, each as `map` makes it: read until the range (or the stream) is exhausted, not
 * until a fetch's expiry, which a loaded server can reach first. Its ordered consumer is
 * deleted once read (the server would keep it five minutes).
 */
export const readRange = async <T>(nats: NatsHandle, stream: string, filter: string, from: number, to: number, max: number, map: (m: JsMsg) => T): Promise<T[]> => {
  const consumer = await nats.js.consumers.get(stream, { filter_subjects: filter, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from });
  const out: T[] = [];
  try {
    if ((await consumer.info()).num_pending === 0) return [];
    const messages = await consumer.consume({ max_messages: Math.min(max, 1_000) });
    try {
      for await (const m of messages) {
        if (m.seq > to) break;
        out.push(map(m));
        if (m.info.pending === 0 || m.seq === to || out.length >= max) break;
      }
    } finally {
      await messages.close().catch(() => undefined);
    }
  } finally {
    await consumer.delete().catch(() => undefined);
  }
  return out;
};

/** A live message an actor's watcher hears, as the history shows it: a republished write (`troupe.events.<kind>.<id>`), a note (`…<id>.<note>`), or a bell (`troupe.bells.…`: a task queued). */
export interface LiveEvent extends HistoryEvent {
  readonly kind: ActorKind;
  readonly id: string;
}

/** The actor kinds a subject may name. */
export const ACTOR_KINDS: ReadonlySet<string> = new Set(["task", "workflow", "worker"]);

/**
 * What a live message says, or `undefined` for another subject: a write carries its revision
 * (`Nats-Sequence`, set by the server's RePublish); a bell the queued task's id, type and queue
 * (its subject) and no record, which is its work message; `at` is when it was heard.
 */
export const liveEvent = (subject: string, data: Uint8Array, headers: MsgHdrs | undefined, previous?: unknown): LiveEvent | undefined => {
  const tokens = subject.split(".");
  const at = new Date().toISOString();
  if (tokens[1] === "bells") {
    const [, , queue, id, ...type] = tokens;
    if (queue === undefined || id === undefined || type.length === 0) return undefined;
    const task = type.filter((t) => !t.startsWith("@") && !t.startsWith("=")).join(".");
    return { kind: "task", id, event: "queued", at, seq: 0, state: "QUEUED", record: { id, task, queue, status: "QUEUED" } };
  }
  const [root, events, kind, id, note] = tokens;
  if (root !== "troupe" || events !== "events" || kind === undefined || !ACTOR_KINDS.has(kind) || id === undefined) return undefined;
  const k = kind as ActorKind;
  if (note !== undefined) {
    const e = storedEvent(k, { seq: 0, time: new Date(at), data, headers, subject });
    return { kind: k, id, ...e };
  }
  const seq = Number(headers?.get("Nats-Sequence") ?? 0) || 0;
  const e = storedEvent(k, { seq, time: new Date(at), data, headers, subject: kvSubject(bucketOf(k), id) }, previous);
  return { kind: k, id, ...e };
};

/**
 * Follow one actor: its history first (with `replay`), then each write and note as it is
 * heard, in order, to `onEvent`, until `close()`. Listening starts before the history is read,
 * so nothing falls between the two; a write heard while the history was read is given once.
 */
export const followActor = async (
  nats: NatsHandle,
  kind: ActorKind,
  id: string,
  replay: boolean,
  onEvent: (e: HistoryEvent) => void,
): Promise<{ readonly replayed: number; close(): void }> => {
  let buffered: LiveEvent[] | undefined = [];
  let lastSeq = 0;
  let previous: unknown;
  const deliver = (e: HistoryEvent) => {
    if (!e.note) {
      if (e.seq !== 0 && e.seq <= lastSeq) return;
      lastSeq = Math.max(lastSeq, e.seq);
      previous = e.record;
    }
    onEvent(e);
  };
  const heard = (_err: unknown, m: { subject: string; data: Uint8Array; headers?: MsgHdrs }) => {
    const e = liveEvent(m.subject, m.data, m.headers, previous);
    if (e === undefined) return;
    if (buffered !== undefined) buffered.push(e);
    else deliver(e);
  };
  const subs = [nats.nc.subscribe(recordSubject(kind, id), { callback: heard }), nats.nc.subscribe(eventSubject(kind, id, "*"), { callback: heard })];
  let replayed = 0;
  try {
    await nats.nc.flush();
    if (replay) {
      const history = await readHistory(nats, kind, id, Number.POSITIVE_INFINITY, true);
      replayed = history.length;
      for (const e of history) deliver(e);
    }
  } catch (e) {
    for (const sub of subs) sub.unsubscribe();
    throw e;
  }
  const early = buffered;
  buffered = undefined;
  for (const e of early) deliver(e);
  return { replayed, close: () => subs.forEach((s) => s.unsubscribe()) };
};
