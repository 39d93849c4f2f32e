/** An actor's history: its events in TROUPE_EVENTS, oldest first (`troupe.history`, `troupe history`, the inspector). */
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import { decodeJson } from "./codec.js";
import type { NatsHandle } from "./connection.js";
import { EVENTS_STREAM, Headers } from "./topology.js";

/** One transition as TROUPE_EVENTS keeps it. */
export interface HistoryEvent {
  /** The event's name: the status it entered (`queued`, `running`, `completed`, …) or `progress`. */
  readonly event: string;
  /** When it was published (ISO time). */
  readonly at: string;
  /** The stream sequence: its place among all events. */
  readonly seq: number;
  /** The actor's state path after the event (`RUNNING.executing`), as the actor that published it was in. */
  readonly state?: string;
  /** The record (a task's, a workflow run's) or the data the event carried. */
  readonly record: unknown;
}

/** One stored event as the history and the inspector show it, from what a consumer or a direct read gives. */
export const storedEvent = (subject: string, seq: number, at: Date, data: Uint8Array, headers: MsgHdrs | undefined): HistoryEvent => {
  const decoded = decodeJson(data);
  const state = headers?.get(Headers.state);
  return {
    event: subject.slice(subject.lastIndexOf(".") + 1),
    at: at.toISOString(),
    seq,
    ...(state === undefined || state === "" ? {} : { state }),
    record: decoded.ok ? decoded.value : null,
  };
};

export const historyEvent = (m: JsMsg): HistoryEvent => storedEvent(m.subject, m.seq, new Date(m.info.timestampNanos / 1e6), m.data, m.headers);

/** An actor's events, oldest first (at most `limit`), while TROUPE_EVENTS keeps them. */
export const readHistory = async (nats: NatsHandle, kind: string, id: string, limit = 1_000): Promise<HistoryEvent[]> => {
  const filter = `troupe.events.${kind}.${id}.>`;
  const info = await nats.jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return [];
  return readEvents(nats, filter, info.state.first_seq, info.state.last_seq, limit, historyEvent);
};

/**
 * The stored events of `filter` with sequences in [from, to], oldest first, at most `max`,
 * each as `map` makes it: read until the range (or the stream) is exhausted, not until a
 * fetch's expiry, which a loaded server can reach first.
 */
export const readEvents = async <T>(nats: NatsHandle, filter: string, from: number, to: number, max: number, map: (m: JsMsg) => T): Promise<T[]> => {
  const consumer = await nats.js.consumers.get(EVENTS_STREAM, { filter_subjects: filter, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from });
  if ((await consumer.info()).num_pending === 0) return [];
  const out: T[] = [];
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
  return out;
};

/**
 * An actor's newest `limit` events, oldest first, and how many it has in all: read
 * backwards in windows of stream sequences, each 8 times the last (a long-lived worker has
 * heartbeats by the ten thousand; its newest are what a person looks at).
 */
export const readRecentHistory = async (nats: NatsHandle, kind: string, id: string, limit = 1_000): Promise<{ readonly events: HistoryEvent[]; readonly total: number }> => {
  const filter = `troupe.events.${kind}.${id}.>`;
  const info = await nats.jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return { events: [], total };
  const { first_seq: first, last_seq: last } = info.state;
  let events: HistoryEvent[] = [];
  let to = last;
  for (let window = Math.max(4_096, 4 * limit); to >= first && events.length < Math.min(limit, total); window *= 8) {
    const from = Math.max(first, to - window + 1);
    events = [...(await readEvents(nats, filter, from, to, Number.POSITIVE_INFINITY, historyEvent)), ...events];
    to = from - 1;
  }
  return { events: events.slice(-limit), total };
};
