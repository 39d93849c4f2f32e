/**
 * Retention: finished task and workflow records, their large payloads and their TROUPE_INDEX
 * entries are removed once they are older than the retention of their status (COMPLETED 7
 * days, FAILED and CANCELLED 30 by default); unfinished ones never.
 *
 * A sweep reads each status's index entries oldest first, up to the first one still within
 * its retention (entries are in the order tasks ended), so its cost grows with what expired,
 * not with what is kept. For each entry it reads the record: one that ended before the
 * cut-off is removed (a purge of its key up to the revision read, so that a write made
 * meanwhile, a retry, survives); one that moved on (retried, ended again later) stays,
 * listed by its newer entry. Then the entries read are purged. Workers and coordinators
 * sweep every minute while they hold the `retention` lease (one sweeper at a time).
 */
import type { Logger } from "pino";
import { nuid } from "@nats-io/transport-node";
import { IndexEntry, TaskRecord as TaskRecordSchema, TerminalStatuses, WorkflowRecord as WorkflowRecordSchema } from "../../machines/records.js";
import { InvalidOption } from "../errors.js";
import { durationOption } from "../duration.js";
import { decodeWith } from "../nats/codec.js";
import type { NatsHandle, RetentionOptions } from "../nats/connection.js";
import { LeaderLease } from "../nats/leader.js";
import { permissionDenied } from "../nats/permissions.js";
import { EVENTS_STREAM, eventSubject, INDEX_STREAM, kvSubject, TASKS_BUCKET, TASKS_STREAM, taskSubject, WORKFLOWS_BUCKET } from "../nats/topology.js";
import { removePayloads } from "./payloads.js";

/** Retention by finished status, in ms. */
export interface RetentionPolicy {
  readonly COMPLETED: number;
  readonly FAILED: number;
  readonly CANCELLED: number;
}

const DAY = 24 * 3600 * 1000;
export const DEFAULT_RETENTION: RetentionPolicy = { COMPLETED: 7 * DAY, FAILED: 30 * DAY, CANCELLED: 30 * DAY };

/** The policy `options` ask for, checked (`InvalidOption` naming the bad one). */
export const retentionPolicy = (options: RetentionOptions | undefined): RetentionPolicy => {
  const invalid = (message: string) => new InvalidOption({ message: `retention: ${message}` });
  const pick = (key: keyof RetentionOptions, fallback: number) => {
    const value = options?.[key];
    return value === undefined ? fallback : durationOption(key, value, invalid);
  };
  return { COMPLETED: pick("completed", DEFAULT_RETENTION.COMPLETED), FAILED: pick("failed", DEFAULT_RETENTION.FAILED), CANCELLED: pick("cancelled", DEFAULT_RETENTION.CANCELLED) };
};

/** What one sweep removed. */
export interface SweepResult {
  readonly tasks: number;
  readonly workflows: number;
}

/** Records removed at once. */
const PARALLEL = 32;
const SWEEP_EVERY_MS = 60_000;
export const RETENTION_LEASE = "retention";

/**
 * Remove what is past its retention, now. `keepAlive` is called between batches (a sweeper
 * renews its lease there). RETRYING entries (what `stats` counts as retried) go with the
 * COMPLETED retention; the record each names is removed only by its own status's.
 */
export const sweep = async (nats: NatsHandle, policy: RetentionPolicy, now = Date.now(), keepAlive: () => Promise<unknown> = async () => undefined): Promise<SweepResult> => {
  let tasks = 0;
  let workflows = 0;
  for (const status of ["COMPLETED", "FAILED", "CANCELLED", "RETRYING"] as const) {
    const cutoff = now - policy[status === "RETRYING" ? "COMPLETED" : status];
    tasks += await sweepIndex(nats, `troupe.index.task.${status}.>`, cutoff, (id) => removeTask(nats, id, policy, now), keepAlive);
    if (status !== "RETRYING") workflows += await sweepIndex(nats, `troupe.index.workflow.${status}.>`, cutoff, (id) => removeRun(nats, id, policy, now), keepAlive);
  }
  return { tasks, workflows };
};

/**
 * The entries on `filter` older than `cutoff`, oldest first, each handed to `remove`; then
 * purged. Resolves with how many records were removed.
 */
const sweepIndex = async (
  nats: NatsHandle,
  filter: string,
  cutoff: number,
  remove: (id: string) => Promise<boolean>,
  keepAlive: () => Promise<unknown>,
): Promise<number> => {
  let removed = 0;
  let seq = 1;
  let last: number | undefined;
  for (;;) {
    const batch: Array<{ id: string; seq: number }> = [];
    while (batch.length < PARALLEL) {
      const msg = await nats.jsm.streams.getMessage(INDEX_STREAM, { seq, next_by_subj: filter } as unknown as { seq: number });
      if (msg === null) break;
      const entry = decodeWith(IndexEntry, msg.data, "index entry");
      if (entry.ok && entry.value.at >= cutoff) break;
      seq = msg.seq + 1;
      if (entry.ok) batch.push({ id: entry.value.id, seq: msg.seq });
      else last = msg.seq; // unreadable: purged with the rest
    }
    if (batch.length === 0) break;
    await keepAlive();
    const results = await Promise.all(batch.map((e) => remove(e.id)));
    removed += results.filter(Boolean).length;
    last = batch[batch.length - 1]!.seq;
    if (batch.length < PARALLEL) break;
  }
  if (last !== undefined) await nats.jsm.streams.purge(INDEX_STREAM, { filter, seq: last + 1 });
  return removed;
};

/** Past its retention: ended (the status its retention is for) before its cut-off. */
const expired = (status: string, finishedAt: string | undefined, policy: RetentionPolicy, now: number) =>
  TerminalStatuses.has(status as never) && Date.parse(finishedAt ?? "") < now - policy[status as keyof RetentionPolicy];

const removeTask = async (nats: NatsHandle, id: string, policy: RetentionPolicy, now: number): Promise<boolean> => {
  const entry = await nats.tasks.get(id);
  if (entry === null || entry.operation !== "PUT") return false;
  const decoded = decodeWith(TaskRecordSchema, entry.value, "task record");
  if (decoded.ok && !expired(decoded.value.status, decoded.value.finishedAt, policy, now)) return false;
  // Cancelled before any worker took it: its work message may still wait in TROUPE_TASKS,
  // and without the record its first delivery would claim it. Kept while its type has work waiting.
  if (decoded.ok && decoded.value.startedAt === undefined && (await workWaits(nats, decoded.value.queue, decoded.value.task))) return false;
  const key = kvSubject(TASKS_BUCKET, id);
  // Up to the revision read: a write made since (a retry) stays.
  await nats.jsm.streams.purge(`KV_${TASKS_BUCKET}`, { filter: key, seq: entry.revision + 1 });
  // A retry written meanwhile keeps its record, and with it its payloads and events.
  if ((await nats.tasks.get(id))?.operation === "PUT") return false;
  // Its `queued` event would otherwise stand in for the record (see `TaskStore.get`).
  await nats.jsm.streams.purge(EVENTS_STREAM, { filter: eventSubject("task", id, "queued") });
  if (decoded.ok) await removePayloads(nats, decoded.value);
  return true;
};

/** Whether TROUPE_TASKS holds any work of the type (any priority or key). */
const workWaits = async (nats: NatsHandle, queue: string, task: string): Promise<boolean> => {
  for (const filter of [taskSubject(queue, task), `${taskSubject(queue, task)}.*`]) {
    const info = await nats.jsm.streams.info(TASKS_STREAM, { subjects_filter: filter });
    if (Object.keys(info.state.subjects ?? {}).length > 0) return true;
  }
  return false;
};

const removeRun = async (nats: NatsHandle, id: string, policy: RetentionPolicy, now: number): Promise<boolean> => {
  const entry = await nats.workflows.get(id);
  if (entry === null || entry.operation !== "PUT") return false;
  const decoded = decodeWith(WorkflowRecordSchema, entry.value, "workflow record");
  if (decoded.ok && !expired(decoded.value.status, decoded.value.finishedAt, policy, now)) return false;
  await nats.jsm.streams.purge(`KV_${WORKFLOWS_BUCKET}`, { filter: kvSubject(WORKFLOWS_BUCKET, id), seq: entry.revision + 1 });
  return true;
};

/** A sweeper: every minute, while it holds the `retention` lease, one sweep. */
export class RetentionSweeper {
  private readonly lease: LeaderLease;
  private readonly timer: NodeJS.Timeout;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly nats: NatsHandle,
    private readonly policy: RetentionPolicy,
    private readonly log: Logger,
    everyMs = SWEEP_EVERY_MS,
  ) {
    this.lease = new LeaderLease(nats.leases, RETENTION_LEASE, `r-${nuid.next()}`, log, false);
    this.timer = setInterval(() => this.pass(), everyMs);
    this.timer.unref();
  }

  private allowed: Promise<boolean> | undefined;

  /**
   * Whether this identity may purge (a purge of nothing, once): a worker limited to a queue
   * may not, and leaves retention to full workers and coordinators.
   */
  private mayPurge(): Promise<boolean> {
    return (this.allowed ??= this.nats.jsm.streams.purge(INDEX_STREAM, { filter: "troupe.index.none.troupe-probe" }).then(
      () => true,
      (e: unknown) => {
        if (permissionDenied(e) === undefined) {
          this.allowed = undefined; // not an answer about rights: asked again next time
          return true;
        }
        this.log.info("this identity may not remove finished records: retention is applied by full workers and coordinators");
        return false;
      },
    ));
  }

  private pass(): void {
    if (this.running !== undefined || this.stopped || this.nats.nc.isClosed()) return;
    this.running = (async () => {
      if (!(await this.mayPurge())) return;
      if (!(await this.lease.hold())) return;
      try {
        const removed = await sweep(this.nats, this.policy, Date.now(), () => this.lease.hold());
        if (removed.tasks + removed.workflows > 0) this.log.info(removed, "records past their retention removed");
      } finally {
        // Between passes the lease would lapse anyway (it lives 5 s): given up, taken afresh next time.
        await this.lease.release();
      }
    })()
      .catch((err: unknown) => this.log.warn({ err }, "retention sweep failed; tried again next minute"))
      .finally(() => (this.running = undefined));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.running;
    if (!this.nats.nc.isClosed()) await this.lease.release();
  }
}
