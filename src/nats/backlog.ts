/**
 * The work JetStream holds per task type and queue, read without touching a message: what
 * waits (not delivered yet) and what is delivered and not settled. `troupe.stats` and the
 * metrics' queue depth gauge read it.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { parseWorkSubject, TASKS_STREAM, TASKS_SUBJECTS } from "./topology.js";

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

const WORK_PREFIX = TASKS_SUBJECTS.slice(0, -1);

/** The queue and type of a work subject (any priority or key), or `undefined` for another subject. */
const typeOf = (subject: string): { queue: string; task: string } | undefined => {
  const { base } = parseWorkSubject(subject);
  if (!base.startsWith(WORK_PREFIX)) return undefined;
  const rest = base.slice(WORK_PREFIX.length);
  const dot = rest.indexOf(".");
  return dot <= 0 || dot === rest.length - 1 ? undefined : { queue: rest.slice(0, dot), task: rest.slice(dot + 1) };
};

/**
 * Every type with a consumer or stored work: its consumers (one per priority and key, listed
 * once) give what waits and what runs; a subject with messages and no consumer yet (no
 * worker ever served it) counts them all as waiting.
 */
export const readBacklog = async (jsm: JetStreamManager): Promise<Map<string, TypeBacklog>> => {
  const [consumers, info] = await Promise.all([
    (async () => {
      const found = [];
      for await (const c of jsm.consumers.list(TASKS_STREAM)) found.push(c);
      return found;
    })(),
    jsm.streams.info(TASKS_STREAM, { subjects_filter: TASKS_SUBJECTS }),
  ]);
  const types = new Map<string, TypeBacklog>();
  const entry = (type: { queue: string; task: string }) => {
    const key = typeKey(type.queue, type.task);
    let found = types.get(key);
    if (found === undefined) types.set(key, (found = { ...type, waiting: 0, running: 0 }));
    return found;
  };
  const read = new Set<string>();
  for (const c of consumers) {
    const subject = c.config.filter_subject ?? c.config.filter_subjects?.[0];
    const type = subject === undefined ? undefined : typeOf(subject);
    if (subject === undefined || type === undefined) continue;
    read.add(subject);
    const e = entry(type);
    e.waiting += c.num_pending;
    e.running += c.num_ack_pending;
  }
  for (const [subject, count] of Object.entries(info.state.subjects ?? {})) {
    const type = typeOf(subject);
    if (type === undefined || read.has(subject)) continue;
    entry(type).waiting += count;
  }
  return types;
};
