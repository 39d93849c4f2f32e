/**
 * The work JetStream holds per task type and queue, read without touching a message: what
 * waits (not delivered yet) and what is delivered and not settled. `troupe.stats` and the
 * metrics' queue depth gauge read it.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { keySubject, parseWorkSubject, TASKS_STREAM, TASKS_SUBJECTS, taskSubject } from "./topology.js";

/** One task type's work, summed over its priorities and keys. */
export interface TypeBacklog {
  readonly queue: string;
  readonly task: string;
  /** Not delivered yet: its consumers' `num_pending` (the stored messages of a subject no consumer reads yet). */
  waiting: number;
  /** Delivered and not acknowledged (`num_ack_pending`): running, or waiting out a retry's backoff or a delay. */
  running: number;
}

/** `<queue>\0<task>`: how types are keyed here and by the readers of a backlog. */
export const typeKey = (queue: string, task: string) => `${queue}\0${task}`;

/** The queue and type of a work subject or a consumer's filter (any priority or key), or `undefined` for another subject. */
const typeOf = (subject: string): { queue: string; task: string } | undefined => {
  const parsed = parseWorkSubject(subject);
  return parsed === undefined ? undefined : { queue: parsed.queue, task: parsed.type };
};

/**
 * Every type with a consumer or stored work: its consumers (one per priority and key, listed
 * once) give what waits and what runs; a subject with messages and no consumer yet (no
 * worker ever served it) counts them all as waiting.
 */
export const readBacklog = async (jsm: JetStreamManager): Promise<Map<string, TypeBacklog>> => {
  const [consumers, stream] = await Promise.all([
    (async () => {
      const found = [];
      for await (const c of jsm.consumers.list(TASKS_STREAM)) found.push(c);
      return found;
    })(),
    jsm.streams.info(TASKS_STREAM),
  ]);
  const types = new Map<string, TypeBacklog>();
  const entry = (type: { queue: string; task: string }) => {
    const key = typeKey(type.queue, type.task);
    let found = types.get(key);
    if (found === undefined) types.set(key, (found = { ...type, waiting: 0, running: 0 }));
    return found;
  };
  const read = new Set<string>();
  let covered = 0;
  for (const c of consumers) {
    const subject = c.config.filter_subject ?? c.config.filter_subjects?.[0];
    const type = subject === undefined ? undefined : typeOf(subject);
    if (subject === undefined || type === undefined) continue;
    read.add(subject);
    const e = entry(type);
    e.waiting += c.num_pending;
    e.running += c.num_ack_pending;
    covered += c.num_pending + c.num_ack_pending;
  }
  // Each message is some consumer's (a work queue's filters do not overlap): only when some
  // are no one's (a type no worker ever served) are the stream's subjects read, one per task.
  if (stream.state.messages > covered) {
    const info = await jsm.streams.info(TASKS_STREAM, { subjects_filter: TASKS_SUBJECTS });
    for (const [subject, count] of Object.entries(info.state.subjects ?? {})) {
      const parsed = parseWorkSubject(subject);
      if (parsed === undefined) continue;
      const lane = parsed.key !== undefined ? keySubject(parsed.queue, parsed.type, parsed.key) : taskSubject(parsed.queue, parsed.type, parsed.priority);
      if (read.has(lane)) continue;
      entry({ queue: parsed.queue, task: parsed.type }).waiting += count;
    }
  }
  return types;
};
