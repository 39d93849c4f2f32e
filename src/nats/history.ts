/** An actor's history: its events in TROUPE_EVENTS, oldest first (`troupe.history`, `troupe history`, the inspector). */
import { DeliverPolicy } from "@nats-io/jetstream";
import { decodeJson } from "./codec.js";
import type { NatsHandle } from "./connection.js";
import { EVENTS_STREAM } from "./topology.js";

/** One transition as TROUPE_EVENTS keeps it. */
export interface HistoryEvent {
  /** The event's name: the status it entered (`queued`, `running`, `completed`, …) or `progress`. */
  readonly event: string;
  /** When it was published (ISO time). */
  readonly at: string;
  /** The stream sequence: its place among all events. */
  readonly seq: number;
  /** The record (a task's, a workflow run's) or the data the event carried. */
  readonly record: unknown;
}

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
    const decoded = decodeJson(m.data);
    out.push({ event: m.subject.split(".").at(-1) ?? "", at: new Date(m.info.timestampNanos / 1e6).toISOString(), seq: m.seq, record: decoded.ok ? decoded.value : null });
    if (out.length >= want) break;
  }
  return out;
};
