/**
 * Retention: finished task and workflow records, with what is derived from them (their large
 * payloads, their TROUPE_INDEX entries, a cancelled task's work message still waiting), are
 * removed once they are older than the retention of their status (COMPLETED 7 days, FAILED
 * and CANCELLED 30 by default); unfinished ones never. A record and its derivatives go
 * together, or stay together.
 *
 * A sweep reads each status's index entries oldest first, up to the first one still within
 * its retention (entries are in the order tasks ended), so its cost grows with what expired,
 * not with what is kept. For each entry it reads the record:
 * - one that ended before the cut-off, at the entry's revision, is removed: first a work
 *   message of it still waiting (a task cancelled while queued; the record then stays one
 *   sweep more, so that a delivery of that message in flight finds it CANCELLED), then the
 *   record (a purge of its key up to the revision read, so that a write made meanwhile, a
 *   retry, survives), its payloads, and the entry;
 * - one that moved on (retried, ended again later: listed by its newer entry), or is gone
 *   (removed by a sweep that died before its entry: its payloads are removed by name), has
 *   the entry deleted;
 * - anything else keeps its entry.
 * RETRYING entries count retries for `stats`: past the COMPLETED retention they go with their
 * record (gone, or past its own status's retention), and stay while it stays. A sweep also
 * purges the delete markers closed runs leave in `troupe-open-runs`. Sweepers run every
 * minute while they hold the `retention` lease (one at a time): workers and coordinators when
 * their identity may purge (no roles), else `troupe retention` under the `retention` identity,
 * the only role that may purge or delete messages.
 */
import type { Logger } from "pino";
import { nuid } from "@nats-io/transport-node";
import { IndexEntry as IndexEntrySchema, TaskRecord as TaskRecordSchema, TerminalStatuses, WorkflowRecord as WorkflowRecordSchema, type IndexEntry } from "../../machines/records.js";
import { InvalidOption } from "../errors.js";
import { durationOption } from "../duration.js";
import { decodeWith } from "../nats/codec.js";
import type { NatsHandle, RetentionOptions } from "../nats/connection.js";
import { LeaderLease } from "../nats/leader.js";
import { permissionDenied } from "../nats/permissions.js";
import { bucketKeys } from "../nats/bucket.js";
import { INDEX_STREAM, kvSubject, OPEN_RUNS_BUCKET, parseTaskIndexSubject, TASKS_BUCKET, TASKS_STREAM, WORKFLOWS_BUCKET, workOfTask } from "../nats/topology.js";
import { removePayloads, removePayloadsOf } from "./payloads.js";

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
 * renews its lease there). RETRYING entries (what `stats` counts as retried) are looked at
 * past the COMPLETED retention, and go with their record: once it is removed (by its own
 * status's retention, earlier in the same pass), or kept while it is.
 */
export const sweep = async (nats: NatsHandle, policy: RetentionPolicy, now = Date.now(), keepAlive: () => Promise<unknown> = async () => undefined): Promise<SweepResult> => {
  let tasks = 0;
  let workflows = 0;
  for (const status of ["COMPLETED", "FAILED", "CANCELLED", "RETRYING"] as const) {
    const cutoff = now - policy[status === "RETRYING" ? "COMPLETED" : status];
    tasks += await sweepIndex(nats, `troupe.index.task.${status}.>`, cutoff, (entry, s) => removeTask(nats, entry, s, policy, now), keepAlive);
    if (status !== "RETRYING") workflows += await sweepIndex(nats, `troupe.index.workflow.${status}.>`, cutoff, (entry, s) => removeRun(nats, entry, s, policy, now), keepAlive);
  }
  await purgeClosedRuns(nats);
  return { tasks, workflows };
};

/**
 * The delete markers closed runs leave in `troupe-open-runs` (no other role may purge),
 * purged: each up to its own revision, so that a key written again meanwhile stays.
 */
const purgeClosedRuns = async (nats: NatsHandle): Promise<void> => {
  for (const id of await bucketKeys(nats.jsm, OPEN_RUNS_BUCKET)) {
    const entry = await nats.openRuns.get(id);
    if (entry === null || entry.operation === "PUT") continue;
    await nats.jsm.streams.purge(`KV_${OPEN_RUNS_BUCKET}`, { filter: kvSubject(OPEN_RUNS_BUCKET, id), seq: entry.revision + 1 });
  }
};

/** What a sweep did with one index entry's record. */
type Swept = "removed" | "entry" | "kept";

/**
 * The entries on `filter` older than `cutoff`, oldest first, each handed to `remove`; an entry
 * is deleted unless its record was kept. Resolves with how many records were removed.
 */
const sweepIndex = async (
  nats: NatsHandle,
  filter: string,
  cutoff: number,
  remove: (entry: IndexEntry, status: string) => Promise<Swept>,
  keepAlive: () => Promise<unknown>,
): Promise<number> => {
  let removed = 0;
  let seq = 1;
  for (;;) {
    const batch: Array<{ entry: IndexEntry | undefined; status: string; seq: number }> = [];
    while (batch.length < PARALLEL) {
      const msg = await nats.jsm.streams.getMessage(INDEX_STREAM, { seq, next_by_subj: filter } as unknown as { seq: number });
      if (msg === null) break;
      const entry = decodeWith(IndexEntrySchema, msg.data, "index entry");
      if (entry.ok && entry.value.at >= cutoff) break;
      seq = msg.seq + 1;
      // Unreadable: deleted with the rest.
      batch.push({ entry: entry.ok ? entry.value : undefined, status: parseTaskIndexSubject(msg.subject)?.status ?? msg.subject.split(".")[3] ?? "", seq: msg.seq });
    }
    if (batch.length === 0) break;
    await keepAlive();
    await Promise.all(
      batch.map(async ({ entry, status, seq }) => {
        const swept = entry === undefined ? "entry" : await remove(entry, status);
        if (swept === "removed") removed++;
        if (swept !== "kept") await nats.jsm.streams.deleteMessage(INDEX_STREAM, seq, false).catch(() => false);
      }),
    );
    if (batch.length < PARALLEL) break;
  }
  return removed;
};

/** Past its retention: ended (the status its retention is for) before its cut-off. */
const expired = (status: string, finishedAt: string | undefined, policy: RetentionPolicy, now: number) =>
  TerminalStatuses.has(status as never) && Date.parse(finishedAt ?? "") < now - policy[status as keyof RetentionPolicy];

const removeTask = async (nats: NatsHandle, entry: IndexEntry, status: string, policy: RetentionPolicy, now: number): Promise<Swept> => {
  const { id } = entry;
  const stored = await nats.tasks.get(id);
  if (stored === null || stored.operation !== "PUT") {
    // Gone: removed by a sweep that died before this entry (its payloads may be left), or a retry's count.
    if (status !== "RETRYING") await removePayloadsOf(nats, id);
    return "entry";
  }
  const decoded = decodeWith(TaskRecordSchema, stored.value, "task record");
  if (status === "RETRYING") {
    // A retry's count (stats) is kept as long as its record: while the task lives on, and once
    // it ended, until its own status's retention removes it (this pass runs after those).
    if (!decoded.ok) return "entry";
    const { status: ended, finishedAt } = decoded.value;
    return TerminalStatuses.has(ended as never) && expired(ended, finishedAt, policy, now) ? "entry" : "kept";
  }
  // Moved on since this entry (retried, ended again): its newer entry stands for it.
  if (decoded.ok && (decoded.value.status !== status || (entry.rev !== undefined && entry.rev !== stored.revision))) return "entry";
  if (decoded.ok && !expired(decoded.value.status, decoded.value.finishedAt, policy, now)) return "kept";
  // Cancelled while it waited: its work message goes first, the record a sweep later (a
  // delivery of that message already on its way must find it CANCELLED, not gone).
  const waiting = await nats.jsm.streams.purge(TASKS_STREAM, { filter: workOfTask(id) });
  if (waiting.purged > 0) return "kept";
  // Up to the revision read: a write made since (a retry) stays.
  await nats.jsm.streams.purge(`KV_${TASKS_BUCKET}`, { filter: kvSubject(TASKS_BUCKET, id), seq: stored.revision + 1 });
  // A retry written meanwhile keeps its record, and with it its payloads; this entry is stale.
  if ((await nats.tasks.get(id))?.operation === "PUT") return "entry";
  if (decoded.ok) await removePayloads(nats, decoded.value);
  else await removePayloadsOf(nats, id);
  return "removed";
};

const removeRun = async (nats: NatsHandle, entry: IndexEntry, status: string, policy: RetentionPolicy, now: number): Promise<Swept> => {
  const stored = await nats.workflows.get(entry.id);
  if (stored === null || stored.operation !== "PUT") return "entry";
  const decoded = decodeWith(WorkflowRecordSchema, stored.value, "workflow record");
  if (decoded.ok && decoded.value.status !== status) return "entry";
  if (decoded.ok && !expired(decoded.value.status, decoded.value.finishedAt, policy, now)) return "kept";
  await nats.jsm.streams.purge(`KV_${WORKFLOWS_BUCKET}`, { filter: kvSubject(WORKFLOWS_BUCKET, entry.id), seq: stored.revision + 1 });
  return "removed";
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
   * Whether this identity may purge (a purge of nothing, once): with `troupe auth init`'s
   * roles only the `retention` identity may (`troupe retention`); without roles, any worker
   * or coordinator.
   */
  private mayPurge(): Promise<boolean> {
    return (this.allowed ??= this.nats.jsm.streams.purge(INDEX_STREAM, { filter: "troupe.index.none.troupe-probe" }).then(
      () => true,
      (e: unknown) => {
        if (permissionDenied(e) === undefined) {
          this.allowed = undefined; // not an answer about rights: asked again next time
          return true;
        }
        this.log.info("this identity may not remove finished records: retention is applied by the retention identity (troupe retention)");
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
