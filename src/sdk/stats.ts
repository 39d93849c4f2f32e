/**
 * `troupe.stats()` and `troupe stats`: per task type and queue, what waits and runs (the
 * TROUPE_TASKS consumers, listed once), how many ended COMPLETED, FAILED, CANCELLED or were
 * retried (TROUPE_INDEX's per-subject counts: no entry is read), the last minute's rates,
 * and the live workers. Nothing here grows with how many records are stored.
 */
import { DeliverPolicy } from "@nats-io/jetstream";
import type { WorkerInfo } from "../../machines/records.js";
import { durationOption, type DurationInput } from "../duration.js";
import { InvalidOption, NatsFailure } from "../errors.js";
import { readBacklog, typeKey } from "../nats/backlog.js";
import { asFailure, type NatsHandle } from "../nats/connection.js";
import { INDEX_STREAM, parseTaskIndexSubject, taskIndexSubject } from "../nats/topology.js";

/** What ended, counted from TROUPE_INDEX: within its retention, so older endings are no longer counted. */
export interface EndedCounts {
  readonly completed: number;
  readonly failed: number;
  readonly cancelled: number;
  /** Attempts that failed and were retried. */
  readonly retried: number;
}

/** Tasks ended per minute, over the last minute. */
export interface Rates {
  readonly completed: number;
  readonly failed: number;
}

/** What `stats` says of one task type and queue, or of all of them (`totals`). */
export interface TypeCounts extends EndedCounts {
  /** Queued and not delivered yet (its consumers' `num_pending`). */
  readonly waiting: number;
  /**
   * Delivered and not settled (its consumers' `num_ack_pending`): attempts running, and
   * retries waiting out their backoff or delayed tasks waiting to be due.
   */
  readonly running: number;
  /** Absent when asked with `rates: false`. */
  readonly perMinute?: Rates;
  /** Live workers serving it (for `totals`: every live worker). */
  readonly workers: number;
}

export interface TaskTypeStats extends TypeCounts {
  readonly task: string;
  readonly queue: string;
}

export interface TroupeStats {
  /** When it was read (ISO time). */
  readonly at: string;
  /** Each task type and queue with work, endings or workers, by queue then task. */
  readonly types: ReadonlyArray<TaskTypeStats>;
  readonly totals: TypeCounts;
  /** The live workers' registry entries. */
  readonly workers: ReadonlyArray<WorkerInfo>;
}

export interface StatsOptions {
  /** Count the last minute's endings for `perMinute` (default true); `false` reads no entry at all. */
  readonly rates?: boolean;
  /** How long reading the last minute's endings may take (default 30 s); past it `stats` rejects with `NatsFailure`. */
  readonly timeout?: DurationInput;
}

/** Every task's index entries, `troupe.index.task.<STATUS>.<queue>.<task>`. */
const TASK_INDEX = taskIndexSubject("*", "*", ">");

const ENDED: Readonly<Record<string, keyof EndedCounts>> = { COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled", RETRYING: "retried" };

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type Row = Mutable<Omit<TaskTypeStats, "perMinute">> & { perMinute?: Mutable<Rates> };

const MINUTE_MS = 60_000;

/** Read the stats; `workers` lists the live workers (`troupe.workers()`). */
export const readStats = async (nats: NatsHandle, workers: () => Promise<WorkerInfo[]>, options: StatsOptions = {}): Promise<TroupeStats> => {
  const timeout = options.timeout === undefined ? 30_000 : durationOption("timeout", options.timeout, (message) => new InvalidOption({ message: `stats: ${message}` }));
  const rates = options.rates !== false;
  const [backlog, ended, lastMinute, live] = await Promise.all([
    readBacklog(nats.jsm).catch((e: unknown) => Promise.reject(asFailure("stats: cannot read the task consumers")(e))),
    nats.jsm.streams
      .info(INDEX_STREAM, { subjects_filter: TASK_INDEX })
      .then((info) => info.state.subjects ?? {})
      .catch((e: unknown) => Promise.reject(asFailure("stats: cannot read the task index")(e))),
    rates ? countSince(nats, Date.now() - MINUTE_MS, timeout) : undefined,
    workers().catch((e: unknown) => Promise.reject(asFailure("stats: cannot read the worker registry")(e))),
  ]);
  const rows = new Map<string, Row>();
  const row = (queue: string, task: string): Row => {
    const key = typeKey(queue, task);
    let found = rows.get(key);
    if (found === undefined) {
      found = { task, queue, waiting: 0, running: 0, completed: 0, failed: 0, cancelled: 0, retried: 0, workers: 0, ...(rates ? { perMinute: { completed: 0, failed: 0 } } : {}) };
      rows.set(key, found);
    }
    return found;
  };
  for (const t of backlog.values()) {
    const r = row(t.queue, t.task);
    r.waiting = t.waiting;
    r.running = t.running;
  }
  for (const [subject, count] of Object.entries(ended)) {
    const parsed = parseTaskIndexSubject(subject);
    const field = parsed === undefined ? undefined : ENDED[parsed.status];
    if (parsed !== undefined && field !== undefined) row(parsed.queue, parsed.task)[field] += count;
  }
  for (const [subject, count] of lastMinute ?? []) {
    const parsed = parseTaskIndexSubject(subject);
    const r = parsed === undefined ? undefined : row(parsed.queue, parsed.task).perMinute;
    if (r !== undefined && parsed?.status === "COMPLETED") r.completed += count;
    if (r !== undefined && parsed?.status === "FAILED") r.failed += count;
  }
  for (const w of live) for (const t of w.tasks) row(t.queue, t.name).workers++;
  const types = [...rows.values()].sort((a, b) => a.queue.localeCompare(b.queue) || a.task.localeCompare(b.task));
  const sum = (pick: (r: Row) => number) => types.reduce((n, r) => n + pick(r), 0);
  const totals: TypeCounts = {
    waiting: sum((r) => r.waiting),
    running: sum((r) => r.running),
    completed: sum((r) => r.completed),
    failed: sum((r) => r.failed),
    cancelled: sum((r) => r.cancelled),
    retried: sum((r) => r.retried),
    ...(rates ? { perMinute: { completed: sum((r) => r.perMinute?.completed ?? 0), failed: sum((r) => r.perMinute?.failed ?? 0) } } : {}),
    workers: live.length,
  };
  return { at: new Date().toISOString(), types, totals, workers: live };
};

/** One read's ended counts: by `<queue>\0<task>`, and `""` for the totals. */
interface Sample {
  readonly at: number;
  readonly counts: ReadonlyMap<string, Rates>;
}

const keyOf = (t: TaskTypeStats) => `${t.queue}\0${t.task}`;

const sampleOf = (stats: TroupeStats, at: number, minus?: (key: string) => Rates | undefined): Sample => {
  const counts = new Map<string, Rates>();
  const put = (key: string, c: TypeCounts) => {
    const m = minus?.(key);
    counts.set(key, { completed: c.completed - (m?.completed ?? 0), failed: c.failed - (m?.failed ?? 0) });
  };
  for (const t of stats.types) put(keyOf(t), t);
  put("", stats.totals);
  return { at, counts };
};

/**
 * The last minute's rates of repeated reads (`troupe stats --watch`, the inspector's queues),
 * from the ended counts' deltas: seeded by a first read with rates, a later read needs none
 * (`rates: false` reads no index entry).
 */
export class RateWindow {
  private readonly samples: Sample[];

  /** `first` read with rates at `at` (epoch ms): the counts a minute before it are its counts less its rates. */
  constructor(first: TroupeStats, at: number) {
    const rates = new Map(first.types.map((t) => [keyOf(t), t.perMinute]));
    this.samples = [sampleOf(first, at - MINUTE_MS, (key) => (key === "" ? first.totals.perMinute : rates.get(key))), sampleOf(first, at)];
  }

  /** A later read, with its rates per minute over the samples of the last minute (retention removing entries never makes one negative). */
  add(stats: TroupeStats, at: number): TroupeStats {
    this.samples.push(sampleOf(stats, at));
    while (this.samples.length > 2 && this.samples[1]!.at <= at - MINUTE_MS) this.samples.shift();
    const first = this.samples[0]!;
    const last = this.samples[this.samples.length - 1]!;
    const span = Math.max(1, last.at - first.at);
    const rate = (key: string): Rates => {
      const a = first.counts.get(key);
      const b = last.counts.get(key);
      const per = (x: number | undefined, y: number | undefined) => Math.max(0, Math.round(((y ?? 0) - (x ?? 0)) * (MINUTE_MS / span) * 10) / 10);
      return { completed: per(a?.completed, b?.completed), failed: per(a?.failed, b?.failed) };
    };
    return { ...stats, types: stats.types.map((t) => ({ ...t, perMinute: rate(keyOf(t)) })), totals: { ...stats.totals, perMinute: rate("") } };
  }
}

/**
 * The task index entries stored since `since` (epoch ms), counted by subject: an ordered
 * consumer from that time, headers only (the entries' bodies are never sent).
 */
const countSince = async (nats: NatsHandle, since: number, timeoutMs: number): Promise<Map<string, number>> => {
  const counts = new Map<string, number>();
  const failed = asFailure("stats: cannot read the last minute's task endings");
  const consumer = await nats.js.consumers
    .get(INDEX_STREAM, { filter_subjects: TASK_INDEX, deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(since).toISOString(), headers_only: true })
    .catch((e: unknown) => Promise.reject(failed(e)));
  // Its ordered consumer goes with the read (the server would keep it five minutes).
  const gone = () => consumer.delete().then(() => undefined, () => undefined);
  let left = await consumer.info(true).then((info) => info.num_pending, (e: unknown) => gone().then(() => Promise.reject(failed(e))));
  if (left === 0) return gone().then(() => counts);
  const messages = await consumer.consume().catch((e: unknown) => gone().then(() => Promise.reject(failed(e))));
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    void messages.close();
  }, timeoutMs);
  try {
    for await (const m of messages) {
      counts.set(m.subject, (counts.get(m.subject) ?? 0) + 1);
      if (--left === 0 || m.info.pending === 0) return counts;
    }
    if (expired) throw new NatsFailure({ message: `stats: the last minute's task endings were not read within ${timeoutMs} ms` });
    return counts;
  } finally {
    clearTimeout(timer);
    await messages.close().catch(() => undefined);
    await gone();
  }
};
