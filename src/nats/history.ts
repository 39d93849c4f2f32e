/** An actor's history: its events in TROUPE_EVENTS, oldest first (`troupe.history`, `troupe history`, the inspector). */
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream";
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

/** One stored event as the history and the inspector show it. */
export const historyEvent = (m: JsMsg): HistoryEvent => {
  const decoded = decodeJson(m.data);
  const state = m.headers?.get(Headers.state);
  return {
    event: m.subject.slice(m.subject.lastIndexOf(".") + 1),
    at: new Date(m.info.timestampNanos / 1e6).toISOString(),
    seq: m.seq,
    ...(state === undefined || state === "" ? {} : { state }),
    record: decoded.ok ? decoded.value : null,
  };
};

/** An actor's events, oldest first (at most `limit`), while TROUPE_EVENTS keeps them. */
export const readHistory = async (nats: NatsHandle, kind: string, id: string, limit = 1_000): Promise<HistoryEvent[]> => {
  const filter = `troupe.events.${kind}.${id}.>`;
  const info = await nats.jsm.streams.info(EVENTS_STREAM, { subjects_filter: filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return [];
  const consumer = await nats.js.consumers.get(EVENTS_STREAM, { filter_subjects: filter, deliver_policy: DeliverPolicy.All });
  const out: HistoryEvent[] = [];
  const want = Math.min(total, limit);
  for await (const m of await consumer.fetch({ max_messages: want, expires: 2_000 })) {
    out.push(historyEvent(m));
    if (out.length >= want) break;
  }
  return out;
};
