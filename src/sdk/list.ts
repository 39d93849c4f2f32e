/**
 * Finding tasks: `troupe.list`, read from streams, never by scanning a
 * bucket. Each status has its source, so that a listing's cost grows with what it returns:
 *
 * - finished tasks (COMPLETED, FAILED, CANCELLED): their TROUPE_INDEX entries
 *   (`troupe.index.task.<STATUS>.<queue>.<task>`), newest first;
 * - QUEUED and RETRYING tasks: their work messages, which TROUPE_TASKS keeps until the task
 *   ends, newest first;
 * - RUNNING tasks: what the live workers say they run.
 *
 * JetStream reads forward only, so a stream is read newest first in windows of sequences
 * going back, each twice the last: a sparse match (3 FAILED among 100,000 finished) costs a
 * few dozen requests, a dense one about one request per result. Each candidate is checked
 * against its record (a retried task's old entry, a record past its retention, are skipped).
 */
import { Effect } from "effect";
import type { JetStreamManager, StoredMsg } from "@nats-io/jetstream";
import { IndexEntry, TaskRecord as TaskRecordSchema, TaskStatuses, TerminalStatuses, type TaskRecord, type TaskStatus } from "../../machines/records.js";
import { InvalidOption } from "../errors.js";
import { decodeJson, decodeWith } from "../nats/codec.js";
import type { NatsHandle } from "../nats/connection.js";
import { INDEX_STREAM, isValidQueueName, isValidTaskName, parseTaskIndexSubject, prioritySubjects, TASKS_STREAM, taskSubject } from "../nats/topology.js";
import type { TaskStore } from "../store/task-store.js";

export interface ListOptions {
  /** One status; every status when unset (unfinished tasks first, then finished ones). */
  readonly status?: TaskStatus;
  /** A task type: its definition or its name. */
  readonly task?: string | { readonly name: string; readonly queue?: string };
  readonly queue?: string;
  /** Only tasks that ended (finished) or were enqueued (unfinished) at or after this time: a `Date`, an ISO time or epoch ms. */
  readonly since?: Date | string | number;
  /** At most this many (1 to 1000, default 50). */
  readonly limit?: number;
  /** The `cursor` of the page before: the next page, older. */
  readonly cursor?: string;
}

export interface TaskPage {
  /** Newest first: finished tasks by when they ended, unfinished ones by when they were enqueued. */
  readonly tasks: ReadonlyArray<TaskRecord>;
  /** Present when there may be more: pass it as `cursor` for the next page. */
  readonly cursor?: string;
}

/** Where a listing stands: which source (`open`: TROUPE_TASKS, `done`: TROUPE_INDEX, `running`: workers) and below which sequence (or from which offset). */
interface Cursor {
  readonly p: "open" | "done" | "running";
  readonly s: number;
}

const encodeCursor = (cursor: Cursor) => Buffer.from(JSON.stringify(cursor)).toString("base64url");

const decodeCursor = (text: string): Cursor => {
  const value = decodeJson(Buffer.from(text, "base64url"));
  const c = value.ok ? (value.value as Partial<Cursor>) : undefined;
  if (c === undefined || !["open", "done", "running"].includes(c.p as string) || typeof c.s !== "number") {
    throw new InvalidOption({ message: `list: cursor "${text}" is not one a listing returned` });
  }
  return c as Cursor;
};

interface Query {
  readonly status: TaskStatus | undefined;
  readonly task: string | undefined;
  readonly queue: string | undefined;
  readonly since: number;
  readonly limit: number;
}

const query = (options: ListOptions): Query => {
  const invalid = (message: string) => new InvalidOption({ message: `list: ${message}` });
  if (options.status !== undefined && !TaskStatuses.includes(options.status)) throw invalid(`status must be one of ${TaskStatuses.join(", ")}, got ${String(options.status)}`);
  const task = typeof options.task === "object" ? options.task.name : options.task;
  const queue = options.queue ?? (typeof options.task === "object" ? options.task.queue : undefined);
  if (task !== undefined && !isValidTaskName(task)) throw invalid(`"${task}" is not a task name`);
  if (queue !== undefined && !isValidQueueName(queue)) throw invalid(`"${queue}" is not a queue name`);
  const limit = options.limit ?? 50;
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw invalid(`limit must be an integer from 1 to 1000, got ${String(limit)}`);
  const since = options.since === undefined ? 0 : options.since instanceof Date ? options.since.getTime() : typeof options.since === "number" ? options.since : Date.parse(options.since);
  if (!Number.isFinite(since)) throw invalid(`since must be a Date, an ISO time or epoch ms, got ${String(options.since)}`);
  return { status: options.status, task, queue, since, limit };
};

/** A page of tasks, newest first. */
export const listTasks = async (
  nats: NatsHandle,
  store: TaskStore,
  runningIds: () => Promise<ReadonlyArray<string>>,
  options: ListOptions = {},
): Promise<TaskPage> => {
  const q = query(options);
  let cursor: Cursor | undefined = options.cursor === undefined ? undefined : decodeCursor(options.cursor);
  if (q.status === "RUNNING") return running(store, await runningIds(), q, cursor?.p === "running" ? cursor.s : 0);
  const phases: Array<"open" | "done"> = q.status === undefined ? ["open", "done"] : TerminalStatuses.has(q.status) ? ["done"] : ["open"];
  const from = cursor === undefined ? 0 : phases.indexOf(cursor.p as "open" | "done");
  if (from < 0) throw new InvalidOption({ message: "list: this cursor belongs to a listing of another status" });
  const found: TaskRecord[] = [];
  for (const phase of phases.slice(from)) {
    const before = cursor?.p === phase ? cursor.s : undefined;
    cursor = undefined;
    const want = q.limit - found.length;
    const page = phase === "done" ? await finished(nats, store, q, want, before) : await unfinished(nats, store, q, want, before);
    found.push(...page.tasks);
    if (page.next !== undefined) return { tasks: found, cursor: encodeCursor({ p: phase, s: page.next }) };
  }
  return { tasks: found };
};

/** Up to `want` matches below sequence `before`, newest first, and where the next page starts (if there may be one). */
interface SourcePage {
  readonly tasks: TaskRecord[];
  readonly next?: number;
}

/** Finished tasks from their index entries. */
const finished = async (nats: NatsHandle, store: TaskStore, q: Query, want: number, before: number | undefined): Promise<SourcePage> => {
  const subject = `troupe.index.task.${q.status ?? "*"}.${q.queue ?? "*"}.${q.task ?? ">"}`;
  const seen = new Set<string>();
  return scan(nats.jsm, INDEX_STREAM, subject, want, before, async (msg) => {
    const entry = decodeWith(IndexEntry, msg.data, "index entry");
    const status = parseTaskIndexSubject(msg.subject)?.status ?? "";
    if (!entry.ok || !TerminalStatuses.has(status as TaskStatus) || seen.has(entry.value.id)) return undefined;
    if (entry.value.at < q.since) return "stop";
    seen.add(entry.value.id);
    const stored = await store.read(entry.value.id).pipe(Effect.orElseSucceed(() => undefined), Effect.runPromise);
    // Still the write the entry stands for: not retried since, not removed by its retention.
    const current = stored !== undefined && stored.record.status === status && (entry.value.rev === undefined || entry.value.rev === stored.revision);
    return current ? stored.record : undefined;
  });
};

/** QUEUED and RETRYING (and, listing every status, RUNNING) tasks from their work messages. */
const unfinished = async (nats: NatsHandle, store: TaskStore, q: Query, want: number, before: number | undefined): Promise<SourcePage> => {
  // A type's work is its lanes: the default one, and one per other priority and key (a dotted
  // type's sub-type one token longer looks like a lane, and is left out by name below).
  const subject = q.task === undefined ? `troupe.tasks.${q.queue ?? "*"}.>` : prioritySubjects(q.queue ?? "*", q.task);
  const exact = q.task === undefined ? undefined : taskSubject(q.queue ?? "*", q.task);
  const seen = new Set<string>();
  const accept = async (msg: StoredMsg): Promise<TaskRecord | "stop" | undefined> => {
    if (msg.time.getTime() < q.since) return "stop";
    const message = decodeWith(TaskRecordSchema, msg.data, "task record");
    if (!message.ok || (q.task !== undefined && message.value.task !== q.task) || seen.has(message.value.id)) return undefined;
    seen.add(message.value.id);
    // Not claimed yet when KV has nothing: the message is its record.
    const stored = await store.read(message.value.id).pipe(Effect.orElseSucceed(() => undefined), Effect.runPromise);
    const record = stored?.record ?? message.value;
    if (TerminalStatuses.has(record.status)) return undefined; // ending now: its index entry lists it
    return q.status === undefined || record.status === q.status ? record : undefined;
  };
  return scan(nats.jsm, TASKS_STREAM, exact === undefined ? [subject] : [exact, subject], want, before, accept);
};

/** RUNNING tasks: those the live workers run, newest started first, from `offset`. */
const running = async (store: TaskStore, ids: ReadonlyArray<string>, q: Query, offset: number): Promise<TaskPage> => {
  const records = (await Promise.all([...new Set(ids)].map((id) => store.get(id).catch(() => undefined))))
    .map((s) => s?.record)
    .filter((r): r is TaskRecord => r !== undefined && r.status === "RUNNING")
    .filter((r) => (q.task === undefined || r.task === q.task) && (q.queue === undefined || r.queue === q.queue))
    .filter((r) => Date.parse(r.startedAt ?? r.createdAt) >= q.since)
    .sort((a, b) => Date.parse(b.startedAt ?? "") - Date.parse(a.startedAt ?? ""));
  const page = records.slice(offset, offset + q.limit);
  const next = offset + page.length;
  return next < records.length ? { tasks: page, cursor: encodeCursor({ p: "running", s: next }) } : { tasks: page };
};

/** The first window read back from the end; each next one is twice as long. */
const FIRST_WINDOW = 64;
/**
 * Candidates one call checks at most: past it the page ends early, with a cursor, so that no
 * call's cost is unbounded (entries whose records are gone, a filter matching little).
 */
const MAX_CHECKED = 2_000;

/**
 * Messages of `stream` on `subjects` below sequence `before`, newest first, through
 * `accept` (a match, nothing, or `"stop"`: no older one can match), until `want` matched.
 */
const scan = async (
  jsm: JetStreamManager,
  stream: string,
  subjects: string | ReadonlyArray<string>,
  want: number,
  before: number | undefined,
  accept: (msg: StoredMsg) => Promise<TaskRecord | "stop" | undefined>,
): Promise<SourcePage> => {
  const filters = typeof subjects === "string" ? [subjects] : subjects;
  const { state } = await jsm.streams.info(stream);
  const first = state.first_seq;
  let end = Math.min(before ?? state.last_seq + 1, state.last_seq + 1);
  let window = Math.max(FIRST_WINDOW, want * 2);
  const tasks: TaskRecord[] = [];
  let checked = 0;
  while (end > first && state.messages > 0) {
    const start = Math.max(first, end - window);
    const inWindow = new Map<number, StoredMsg>();
    for (const filter of filters) for (const msg of await matchesBetween(jsm, stream, filter, start, end)) inWindow.set(msg.seq, msg);
    const newestFirst = [...inWindow.values()].sort((a, b) => b.seq - a.seq);
    // Checked a batch at a time (their records read at once), in order: as many as are still wanted.
    for (let i = 0; i < newestFirst.length; ) {
      if (checked >= MAX_CHECKED) return { tasks, next: newestFirst[i]!.seq + 1 };
      const batch = newestFirst.slice(i, i + Math.min(MAX_CHECKED - checked, Math.max(8, want - tasks.length)));
      i += batch.length;
      checked += batch.length;
      const verdicts = await Promise.all(batch.map(accept));
      for (const [k, verdict] of verdicts.entries()) {
        if (verdict === "stop") return { tasks };
        if (verdict === undefined) continue;
        tasks.push(verdict);
        const seq = batch[k]!.seq;
        if (tasks.length === want) return seq > first ? { tasks, next: seq } : { tasks };
      }
    }
    end = start;
    window *= 2;
  }
  return { tasks };
};

/** The messages on `filter` with sequences in [start, end), oldest first: one request each, and one for the end. */
const matchesBetween = async (jsm: JetStreamManager, stream: string, filter: string, start: number, end: number): Promise<StoredMsg[]> => {
  const out: StoredMsg[] = [];
  let seq = start;
  while (seq < end) {
    // MSG.GET's `next_by_subj`: the first message on the filter at or after `seq`.
    const msg = await jsm.streams.getMessage(stream, { seq, next_by_subj: filter } as unknown as { seq: number });
    if (msg === null || msg.seq >= end) break;
    out.push(msg);
    seq = msg.seq + 1;
  }
  return out;
};
