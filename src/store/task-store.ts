/**
 * The task store: the only code that writes a task record (KV `troupe-tasks`).
 *
 * Each transition is stored once: the record's write. The bucket keeps a record's revisions
 * (they are its history) and republishes every write it stores on `troupe.events.task.<id>`
 * (its live watchers: waits, progress, the inspector). Nothing else about a transition is
 * published, and what is derived from one is stored acknowledged (`derive`).
 *
 * - `enqueue` publishes a task's work message, the QUEUED record itself, on a subject that
 *   ends in its id (readable by id while it waits). A task that must be one for ever (an
 *   idempotency key, a chosen id, a workflow step) also has its record created first; any
 *   other is first written in KV by its first attempt's claim, a create (revision 0), which a
 *   cancel that created CANCELLED first still fences.
 * - `write` writes a record (compare-and-set on the revision it saw); `save` writes and, for
 *   a record that ended or will retry, derives.
 * - `apply` takes the stored record, applies one task-machine event with the machine's pure
 *   transition (a cancel, a give-up, a failed enqueue), writes the result, derives.
 * - `derive` stores what a terminal (or RETRYING) record implies, each an acknowledged publish
 *   with a message id, so that one made again is kept once: its TROUPE_INDEX entry and, for a
 *   workflow step, its notice in TROUPE_STEPS. Whoever finds a terminal record whose
 *   derivatives may be missing derives again (a delivery of a settled task, the reaper): a
 *   writer settles its work message only once they are stored, so the message is what
 *   tells a later reader to repair.
 *
 * Every read is decoded with the `TaskRecord` schema; NATS writes retry on one schedule.
 */
import { Effect } from "effect";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { JetStreamApiError } from "@nats-io/jetstream";
import { recordWith, TaskRecord as TaskRecordSchema, TerminalStatuses, type TaskRecord } from "../../machines/records.js";
import { hydrate, NO_POLICY, RESTING, taskMachine, type TaskContext, type TaskEvent, type TaskPolicy, type TaskSnapshot } from "../../machines/task.js";
import { TransitionPlans } from "../actor/transition-plans.js";
import { Fenced, Internal, NatsFailure, Serialization } from "../errors.js";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { asFailure, type NatsHandle } from "../nats/connection.js";
import { compareAndSet, kvEntry } from "../nats/compare-and-set.js";
import { publishRetried } from "../nats/publisher.js";
import { permissionDenied } from "../nats/permissions.js";
import { retryNats } from "../nats/retry.js";
import { offload, payloadName } from "./payloads.js";
import { traceSubmit, type SubmittedTask, type TraceCarrier } from "../trace.js";
import { DEFAULT_PRIORITY, eventSubject, Headers, STEPS_ROOT, TASKS_BUCKET, TASKS_STREAM, taskIndexSubject, workOfTask, workSubject } from "../nats/topology.js";

/** How long a failed submit waits for its FAILED record before it throws (the write goes on). */
const RECORD_FAILURE_WAIT_MS = 3_000;

/** A record as stored, with its KV revision: the expectation of the next compare-and-set. */
export interface Stored {
  readonly record: TaskRecord;
  readonly revision: number;
}

/** The task machine's transitions for the store: computed once per path, replayed after. */
const plans = new TransitionPlans<TaskSnapshot, TaskEvent>(taskMachine, RESTING);
const resolve = (value: unknown, context: TaskContext) => plans.resolve(value, context);

/** The record `event` leads to from `stored`, or `undefined` when it changes nothing (a settled task, an event that does not apply). */
export const nextRecord = (stored: Stored, event: TaskEvent, policy: TaskPolicy = NO_POLICY): TaskRecord | undefined => {
  const next = plans.transition(hydrate({ ...stored, policy }, resolve), event).snapshot.context.record;
  return next === stored.record ? undefined : next;
};

/** What `enqueue` needs to make the QUEUED record. */
export interface NewTask extends SubmittedTask {
  readonly input: unknown;
  readonly notify?: string | undefined;
  readonly idempotencyKey?: string | undefined;
  /** Not before (epoch ms). */
  readonly runAt?: number | undefined;
  /** Create the KV record before the work message: this id stands for one task for ever. */
  readonly unique?: boolean;
}

/** Work messages of one task removed at most by `dropWork` (one waits, unless a publish was repeated). */
const DROP_WORK_MAX = 4;

/** Room kept under the server's payload limit for headers and the record's own growth. */
const PAYLOAD_MARGIN = 8_192;


export class TaskStore {
  constructor(private readonly nats: NatsHandle) {}

  /** Largest payload the server takes, less room for headers: bigger inputs and outputs are refused. */
  get maxPayload(): number {
    return (this.nats.nc.info?.max_payload ?? 1024 * 1024) - PAYLOAD_MARGIN;
  }

  /** The record and its revision; `undefined` when there is none; `Internal` when it cannot be read as a task record. */
  read(id: string): Effect.Effect<Stored | undefined, Internal | NatsFailure> {
    // A refused permission is final, not something to wait out.
    return retryNats(this.nats.nc, kvEntry(this.nats.tasks, id), (e) => permissionDenied(e.cause) === undefined).pipe(
      Effect.flatMap((entry) => {
        if (entry === null || entry.operation !== "PUT") return Effect.succeed(undefined);
        const decoded = decodeWith(TaskRecordSchema, entry.value, "task record");
        return decoded.ok
          ? Effect.succeed({ record: decoded.value, revision: entry.revision })
          : Effect.fail(new Internal({ message: `the stored record of task ${id} (revision ${entry.revision}) is unreadable: ${decoded.error.message}` }));
      }),
    );
  }

  /**
   * The record as a client sees it: KV, or, for a task no attempt has claimed yet, the QUEUED
   * record its work message carries (revision 0: not in KV), read by id from the work stream
   * (`troupe.tasks.*.<id>.>`) for as long as it waits.
   */
  async get(id: string): Promise<Stored | undefined> {
    const stored = await Effect.runPromise(this.read(id));
    if (stored !== undefined) return stored;
    const queued = await this.queued(id);
    return queued === undefined ? undefined : { record: queued, revision: 0 };
  }

  /** The QUEUED record of a task's waiting work message, or `undefined` when none waits. */
  async queued(id: string): Promise<TaskRecord | undefined> {
    const work = await this.nats.jsm.streams.getMessage(TASKS_STREAM, { last_by_subj: workOfTask(id) }).catch((e: unknown) => {
      // Only "no such message" means no work waits; anything else is an error to report.
      if (e instanceof JetStreamApiError && e.code === 10037) return null;
      throw asFailure(`cannot read task ${id}`)(e);
    });
    const decoded = work === null ? undefined : decodeWith(TaskRecordSchema, work.data, "task record");
    // A work message carries a QUEUED record: one that says otherwise was not published by a submit (anyone who may enqueue can publish there).
    return decoded?.ok && decoded.value.id === id && decoded.value.status === "QUEUED" ? decoded.value : undefined;
  }

  /**
   * Remove the work messages of a task that will not run them (cancelled through the store), so
   * that what waits is counted right: each published at a revision before `before` (a work
   * message carries the revision it was published at), newest first; one published since (a
   * retry's) stays, and so does any behind it. Best effort, bounded: what is left is removed by
   * retention, and a delivery of it finds the task ended. Resolves how many were removed.
   */
  async dropWork(id: string, before: number): Promise<number> {
    let dropped = 0;
    for (let i = 0; i < DROP_WORK_MAX; i++) {
      const work = await this.nats.jsm.streams.getMessage(TASKS_STREAM, { last_by_subj: workOfTask(id) }).catch(() => null);
      const revision = Number(work?.header?.get(Headers.revision) ?? Number.NaN);
      if (work === null || !(revision < before)) break;
      if (!(await this.nats.jsm.streams.deleteMessage(TASKS_STREAM, work.seq, false).catch(() => false))) break;
      dropped++;
    }
    return dropped;
  }

  /**
   * Enqueue a task: its work message carries the QUEUED record; a `unique` one has the record
   * created first. Resolves `created: false` with the existing record when a unique id is
   * taken (an idempotency key seen before); if that one is still QUEUED its work message is
   * published again under the same message id, in case the first enqueue died in between.
   * A work message that cannot be published fails the task (`NatsFailure`) and rejects with it.
   * Traced as a `troupe.submit` span, whose context the work message's headers carry.
   */
  enqueue(task: NewTask): Promise<{ readonly created: boolean; readonly stored: Stored }> {
    return traceSubmit(task, (trace) => this.enqueueWork(task, trace));
  }

  private async enqueueWork(task: NewTask, trace: TraceCarrier | undefined): Promise<{ readonly created: boolean; readonly stored: Stored }> {
    let record = recordWith(RESTING.record, {
      id: task.id,
      task: task.task,
      queue: task.queue,
      input: task.input,
      createdAt: new Date().toISOString(),
      idempotencyKey: task.idempotencyKey,
      runAt: task.runAt === undefined ? undefined : new Date(task.runAt).toISOString(),
      notify: task.notify,
      priority: task.priority === DEFAULT_PRIORITY ? undefined : task.priority,
      key: task.key,
    });
    let payload = encodeJson(record);
    if (payload.length > this.nats.payloadThreshold) {
      // An id taken already (a resubmit with the same key): its stored input is left as it is.
      if (task.unique) {
        const existing = await this.get(task.id);
        if (existing !== undefined) return this.existing(existing);
      }
      // A large input goes to the object store; the record (and the work message) holds its reference.
      record = recordWith(record, { input: await offload(this.nats, payloadName(task.id, "input"), task.input) });
      payload = encodeJson(record);
      if (payload.length > this.maxPayload) {
        throw new Serialization({ message: `the record of task "${task.task}" is ${payload.length} bytes, over the server's payload limit` });
      }
    }
    const revision = task.unique ? await this.create(record, payload) : 0;
    if (revision === undefined) {
      const existing = await this.get(task.id);
      if (existing === undefined) throw new NatsFailure({ message: `task ${task.id} exists and vanished while enqueueing` });
      return this.existing(existing);
    }
    const stored = { record, revision };
    try {
      await this.publishWork(stored, payload, trace);
    } catch (e) {
      const failure = asFailure(`could not enqueue task ${task.id}`)(e);
      // From the record as enqueued: had the message landed after all and been claimed, this loses.
      const recorded = Effect.runPromise(
        Effect.ignore(this.apply(task.id, { type: "FAIL", failure: { _tag: "NatsFailure", message: failure.message }, at: Date.now() }, { from: stored })),
      );
      // The submit's bound is `submitRetryFor`: its FAILED record is waited for a moment more,
      // then goes on being written while the error is thrown (with no quorum the write would
      // retry for another half minute). A unique task's record left QUEUED is repaired by
      // submitting it again.
      await Promise.race([recorded, new Promise<void>((resolve) => setTimeout(resolve, RECORD_FAILURE_WAIT_MS).unref())]);
      throw failure;
    }
    return { created: true, stored };
  }

  /** A unique id taken: its task, its work published again if it is still QUEUED (the first enqueue may have died in between). */
  private async existing(existing: Stored): Promise<{ readonly created: false; readonly stored: Stored }> {
    if (existing.record.status === "QUEUED") await this.publishWork(existing).catch(() => undefined);
    return { created: false, stored: existing };
  }

  /** Create the record: its revision, or `undefined` when the id is taken (by another task than this one). */
  private async create(record: TaskRecord, payload: Uint8Array): Promise<number | undefined> {
    const created = await Effect.runPromise(Effect.result(this.compareAndSet(record.id, payload, 0)));
    if (created._tag === "Success") return created.success;
    if (created.failure._tag === "Fenced") return undefined;
    throw created.failure;
  }

  /**
   * Run a FAILED or CANCELLED task again: the same id and input, QUEUED from attempt 0 (its
   * events kept, `retries` counted), written over the revision read, then its work message
   * published. A retry still QUEUED is published again (a repair). `undefined` when the task
   * is not FAILED or CANCELLED (it is left as it is).
   */
  async retry(current: Stored, notify: string | undefined): Promise<Stored | undefined> {
    const old = current.record;
    if (old.status === "QUEUED" && (old.retries ?? 0) > 0) {
      // A retry whose work message may never have been published (its client died between
      // the two): published again under the same message id, a no-op if it was.
      await this.publishWork(current, undefined, undefined, `${old.id}:${current.revision}`);
      return current;
    }
    if (old.status !== "FAILED" && old.status !== "CANCELLED") return undefined;
    const record = recordWith(RESTING.record, {
      id: old.id,
      task: old.task,
      queue: old.queue,
      input: old.input,
      createdAt: old.createdAt,
      idempotencyKey: old.idempotencyKey,
      notify: notify ?? old.notify,
      priority: old.priority,
      key: old.key,
      retries: (old.retries ?? 0) + 1,
    });
    const payload = encodeJson(record);
    const revision = await Effect.runPromise(this.compareAndSet(old.id, payload, current.revision));
    const stored = { record, revision };
    try {
      // Its own message id: the first work message's may still be in the duplicate window.
      // A submit span of its own: the new attempts are its children.
      await traceSubmit(record, (trace) => this.publishWork(stored, payload, trace, `${old.id}:${revision}`));
    } catch (e) {
      const failure = asFailure(`could not enqueue task ${old.id} again`)(e);
      await Effect.runPromise(Effect.ignore(this.apply(old.id, { type: "FAIL", failure: { _tag: "NatsFailure", message: failure.message }, at: Date.now() }, { from: stored })));
      throw failure;
    }
    return stored;
  }

  /** The work message: the QUEUED record, with its revision (the first attempt's fencing token) and its submit's trace context. */
  private publishWork(stored: Stored, payload = encodeJson(stored.record), trace?: TraceCarrier, msgId = stored.record.id): Promise<unknown> {
    const { record, revision } = stored;
    const subject = workSubject(record.queue, record.task, record.id, record.priority, record.key);
    // A retried publish is a no-op inside the duplicate window; it is retried for `submitRetryFor` (an election).
    const headers = trace === undefined ? { [Headers.revision]: String(revision) } : { ...trace, [Headers.revision]: String(revision) };
    const expect = { msgId, headers };
    return publishRetried(this.nats, subject, payload, expect);
  }

  /**
   * Write `record` over revision `expected`, then, for a record that ended or will retry,
   * derive what it implies (`derive`; a derivative that could not be stored is left to whoever
   * finds the record next). A lost compare-and-set is `Fenced`, unless a retry finds the very
   * record it wrote (the first try landed and only its ack was lost).
   */
  save(record: TaskRecord, expected: number): Effect.Effect<number, Fenced | NatsFailure> {
    return Effect.tap(this.write(record, expected), ({ revision }) => Effect.promise(() => this.derive({ record, revision }))).pipe(Effect.map(({ revision }) => revision));
  }

  /** Write `record` over revision `expected`: the write itself, which its bucket republishes to its watchers. */
  write(record: TaskRecord, expected: number, onRetry?: () => void): Effect.Effect<{ readonly revision: number; readonly payload: Uint8Array }, Fenced | NatsFailure> {
    const payload = encodeJson(record);
    return Effect.map(this.compareAndSet(record.id, payload, expected, onRetry), (revision) => ({ revision, payload }));
  }

  private compareAndSet(id: string, payload: Uint8Array, expected: number, onRetry?: () => void) {
    return compareAndSet(this.nats, { handle: this.nats.tasks, bucket: TASKS_BUCKET }, id, payload, expected, onRetry);
  }

  /**
   * Apply `event` to the stored record and write the result. From `from` (a record the caller
   * acted on) the write is one compare-and-set and a conflict is `Fenced`; without it the
   * record is read, and read again after a conflict. `fallback` (the work message's record)
   * stands in for a record not in KV yet (revision 0: the write creates it) or one that
   * cannot be read, so that such a task can still be failed. Resolves with the new
   * record, or `undefined` when the event changes nothing; `Internal` when the stored record
   * is unreadable and there is no fallback.
   */
  apply(
    id: string,
    event: TaskEvent,
    options: { readonly from?: Stored; readonly fallback?: TaskRecord; readonly policy?: TaskPolicy } = {},
  ): Effect.Effect<Stored | undefined, Fenced | Internal | NatsFailure> {
    const once = (stored: Stored | undefined): Effect.Effect<Stored | undefined, Fenced | NatsFailure> => {
      if (stored === undefined) return Effect.succeed(undefined);
      const next = nextRecord(stored, event, options.policy);
      if (next === undefined) return Effect.succeed(undefined);
      return Effect.map(this.save(next, stored.revision), (revision) => ({ record: next, revision }));
    };
    if (options.from !== undefined) return once(options.from);
    const current = this.read(id).pipe(
      Effect.map((stored) => stored ?? (options.fallback === undefined ? undefined : { record: options.fallback, revision: 0 })),
      Effect.catchTag("Internal", (e) => this.unreadable(id, options.fallback, e)),
    );
    return Effect.flatMap(current, once).pipe(
      Effect.retry({ times: 20, while: (e) => e._tag === "Fenced" }),
    );
  }

  /** An unreadable record's revision with `fallback` in its place, so that it can be written over. */
  private unreadable(id: string, fallback: TaskRecord | undefined, error: Internal): Effect.Effect<Stored, Internal | NatsFailure> {
    if (fallback === undefined) return Effect.fail(error);
    return kvEntry(this.nats.tasks, id).pipe(
      Effect.flatMap((entry) => (entry === null ? Effect.fail(error) : Effect.succeed({ record: fallback, revision: entry.revision }))),
    );
  }

  /**
   * Store what a record that ended (or will retry) implies, each an acknowledged publish with
   * message id `<id>:<revision>`, so that deriving again (a repair) keeps it once: its
   * TROUPE_INDEX entry and, for a workflow step that ended, its notice in TROUPE_STEPS (the
   * record, one per message). Resolves whether all of them are stored; never rejects.
   * Nothing for any other record: its write is all there is.
   */
  async derive(stored: Stored): Promise<boolean> {
    const { record, revision } = stored;
    const terminal = TerminalStatuses.has(record.status);
    if (!terminal && record.status !== "RETRYING") return true;
    if (this.nats.nc.isClosed()) return false;
    const expect = { msgId: `${record.id}:${revision}` };
    const publish = (subject: string, payload: Uint8Array) => publishRetried(this.nats, subject, payload, expect);
    const writes = [publish(taskIndexSubject(record.status, record.queue, record.task), indexEntry(record.id, revision))];
    if (terminal && record.notify?.startsWith(STEPS_ROOT)) writes.push(publish(`${record.notify}.${record.id}`, encodeJson(record)));
    return Promise.all(writes).then(
      () => true,
      () => false,
    );
  }

  /**
   * An attempt that lost its task (a newer write won, or its write did not finish): the note
   * `lost` (TROUPE_EVENTS) with the record as that attempt saw it and why. Nothing was
   * written; the task's record belongs to whoever won.
   */
  announceLoss(record: TaskRecord, reason: string, state: string): void {
    const nc = this.nats.nc;
    if (nc.isClosed() || nc.isDraining()) return;
    const h = natsHeaders();
    h.set(Headers.state, state);
    // Not a record: what the attempt wanted to write, and why it could not.
    const lost = { id: record.id, task: record.task, queue: record.queue, attempt: record.attempt, workerId: record.workerId, wanted: record.status, reason };
    try {
      nc.publish(eventSubject("task", record.id, "lost"), encodeJson(lost), { headers: h });
    } catch {
      // Closing: an inspection note only.
    }
  }
}

/** A TROUPE_INDEX entry: the record's id and revision, and when. */
const indexEntry = (id: string, rev: number) => encodeJson({ id, rev, at: Date.now() });

