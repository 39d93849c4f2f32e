/**
 * One JetStream delivery, from message to settled lease: decode the work message, pick the
 * task up from its stored record (the message's own on a first delivery, KV on any later
 * one), run the attempt, then ack a final outcome, NAK a retry until its `retryAt`, or leave
 * a lost one alone. A record that ended or will retry has its derivatives stored (index
 * entry, step notice) before its message is settled: the message is what tells whoever
 * comes next to derive them again. So a delivery of a task already settled derives its last
 * write again (a worker killed right after writing may never have) and acks.
 */
import { Effect } from "effect";
import type { Logger } from "pino";
import type { NatsConnection } from "@nats-io/transport-node";
import { TaskRecord as TaskRecordSchema, TerminalStatuses } from "../../machines/records.js";
import type { AttemptOutcome, TaskHost } from "../actor/task-host.js";
import { decodeWith, encodeJson } from "../nats/codec.js";
import type { Lease } from "../nats/lease.js";
import { eventSubject, Headers, parseWorkSubject, taskSubject } from "../nats/topology.js";
import type { Stored, TaskStore } from "../store/task-store.js";
import type { TaskDefinition } from "../task.js";
import type { Limiter } from "../limits/limiter.js";
import { startAttemptSpan } from "../trace.js";

export type DeliveryOutcome = "completed" | "failed" | "retrying" | "cancelled" | "lost" | "skipped" | "interrupted";

export interface DeliveryDeps {
  readonly nc: NatsConnection;
  readonly store: TaskStore;
  readonly host: TaskHost;
  readonly definitions: ReadonlyMap<string, TaskDefinition>;
  readonly workerId: string;
  readonly log: Logger;
  readonly now: () => number;
  /** The limiters of the types with `concurrency` or `rate` limits, by task name. */
  readonly limiters?: ReadonlyMap<string, LimiterHandle>;
}

/** Run one delivery to its end; never throws. */
export const runDelivery = async (lease: Lease, deps: DeliveryDeps): Promise<DeliveryOutcome> => {
  const { store, host, log } = deps;
  const decoded = decodeWith(TaskRecordSchema, lease.msg.data, "task record");
  if (!decoded.ok) return reject(lease, deps, decoded.error.message);
  const message = decoded.value;
  const definition = deps.definitions.get(message.task);
  const work = parseWorkSubject(lease.msg.subject);
  if (definition === undefined || work === undefined || work.base !== taskSubject(definition.queue, definition.name) || work.id !== message.id) {
    return reject(lease, deps, `no handler for task "${message.task}" on ${lease.msg.subject}`);
  }
  // Every submit, retry and migration enqueues the QUEUED record: one that says it ended is forged, never taken for the task's end.
  if (message.status !== "QUEUED") return reject(lease, deps, `a work message carries a QUEUED record, not ${message.status}`);

  // The work message is the QUEUED record, with the revision it has in KV (0: not there
  // yet; -1: unknown, a message carried over by a migration). The first delivery of a known
  // revision needs no read; any other reads what attempts wrote.
  const headerRevision = Number(lease.msg.headers?.get(Headers.revision) ?? NaN);
  if (!Number.isInteger(headerRevision)) return reject(lease, deps, "work message without a Troupe-Revision header");
  let stored: Stored | undefined;
  if (lease.info.deliveryCount === 1 && headerRevision >= 0) {
    stored = { record: message, revision: headerRevision };
  } else {
    const read = await Effect.runPromise(Effect.result(store.read(message.id)));
    if (read._tag === "Failure") {
      if (read.failure._tag === "NatsFailure") {
        // Not readable now (NATS kept failing, or this identity may not): handed back for a
        // while, not left to run out its lease and count as a lost attempt.
        log.warn({ taskId: message.id, reason: read.failure.message }, "task record not readable; the task's message is handed back");
        lease.nak(READ_AGAIN_MS);
        return "skipped";
      }
      // Unreadable: the task ends FAILED (Internal) rather than stuck.
      log.error({ taskId: message.id, reason: read.failure.message }, "task record unreadable; failing the task");
      const failure = { _tag: "Internal" as const, message: read.failure.message };
      const failed = await Effect.runPromise(Effect.orElseSucceed(store.apply(message.id, { type: "FAIL", failure, at: deps.now() }, { fallback: message }), () => undefined));
      if (failed === undefined) lease.nak(DERIVE_AGAIN_MS); // not written: tried again on its next delivery
      else await settleEnded(failed, lease, deps);
      return "failed";
    }
    // Not in KV: no attempt ever claimed it (a delayed task, a lease that lapsed before the claim).
    stored = read.success ?? (headerRevision <= 0 ? { record: message, revision: 0 } : undefined);
  }
  if (stored === undefined) return reject(lease, deps, `task ${message.id} has no record in KV`);
  const id = stored.record.id;
  if (await handledElsewhere(stored, lease, deps)) return "skipped";
  const wait = Date.parse(stored.record.runAt ?? "") - deps.now();
  if (stored.record.status === "QUEUED" && wait > 0) {
    // A delayed task: back on the server until it is due; no attempt, no slot held.
    lease.nak(wait);
    return "skipped";
  }
  if (host.has(id)) {
    // A redelivery while this worker still runs the task (its lease lapsed): keep the one running.
    log.info({ taskId: id }, "duplicate delivery of a running task ignored");
    return "skipped";
  }
  const limiter = deps.limiters?.get(definition.name);
  if (limiter === undefined) return attempted(stored, definition, lease, deps);
  return limited(stored, definition, limiter, lease, deps);
};

/** Run the attempt and settle its lease, in a `troupe.attempt` span when tracing is on. */
const attempted = async (stored: Stored, definition: TaskDefinition, lease: Lease, deps: DeliveryDeps): Promise<DeliveryOutcome> => {
  const span = startAttemptSpan(lease.msg.headers, stored.record, stored.record.attempt + 1, deps.workerId);
  const outcome = await deps.host.attempt(stored, definition, lease, lease.info.streamSequence, span?.context);
  const settled = await settle(outcome, lease, deps);
  span?.end(settled, outcome.snapshot.context.record.error);
  return settled;
};

/** What a worker keeps for a type with `concurrency` or `rate` limits. */
export interface LimiterHandle {
  readonly limiter: Limiter;
  /** The attempts of this worker that hold a slot: renewed while they run. */
  readonly held: Set<string>;
  /** Told when the limiter said to wait (the worker asks less meanwhile), and when a slot came back. */
  readonly refused: (retryInMs: number) => void;
  readonly released: () => void;
}

/**
 * An attempt of a limited type: admitted by its limiter first, or handed back (a NAK with
 * the limiter's wait, no slot held meanwhile). Its consumer counts no deliveries (those NAKs
 * are not lost attempts), so a task whose workers keep dying ends `WorkerLost` here, after
 * `maxDeliveries` lost attempts.
 */
const limited = async (stored: Stored, definition: TaskDefinition, handle: LimiterHandle, lease: Lease, deps: DeliveryDeps): Promise<DeliveryOutcome> => {
  const { record } = stored;
  if (record.status === "RUNNING" && (record.lostAttempts ?? 0) + 1 >= definition.maxDeliveries) {
    const failure = { _tag: "WorkerLost" as const, message: `${(record.lostAttempts ?? 0) + 1} attempts of task ${record.id} lost their workers` };
    deps.log.warn({ taskId: record.id, lostAttempts: record.lostAttempts }, "task failed with WorkerLost: its attempts keep losing their workers");
    const failed = await Effect.runPromise(Effect.orElseSucceed(deps.store.apply(record.id, { type: "FAIL", failure, at: deps.now() }, { from: stored }), () => undefined));
    if (failed === undefined) lease.nak(DERIVE_AGAIN_MS); // fenced or not written: its next delivery looks again
    else await settleEnded(failed, lease, deps);
    return "failed";
  }
  const admission = await handle.limiter.acquire(record.id).catch((err: unknown) => {
    deps.log.warn({ err, taskId: record.id }, "limiter not reachable; the task waits");
    return { ok: false as const, retryInMs: 1_000 };
  });
  if (!admission.ok) {
    // Spread the retries a little, so that workers refused together do not ask together.
    lease.nak(admission.retryInMs + Math.floor(Math.random() * 50));
    handle.refused(admission.retryInMs);
    return "skipped";
  }
  if (deps.host.has(record.id)) {
    // Another delivery of the task started while this one waited for its limiter: it holds the slot.
    deps.log.info({ taskId: record.id }, "duplicate delivery of a running task ignored");
    return "skipped";
  }
  handle.held.add(record.id);
  try {
    return await attempted(stored, definition, lease, deps);
  } finally {
    handle.held.delete(record.id);
    await handle.limiter.release(record.id).catch((err: unknown) => deps.log.warn({ err, taskId: record.id }, "limiter slot not released; its lease will pass"));
    handle.released();
  }
};

/**
 * A delivery with nothing left to do, acknowledged: the task already ended (announced again,
 * in case whoever ended it died before announcing), or an attempt of another work message
 * for it holds it (this one is a duplicate, republished past the duplicate window, not a
 * sign of a lost worker: that attempt settles the task).
 */
const handledElsewhere = async ({ record, revision }: Stored, lease: Lease, deps: DeliveryDeps): Promise<boolean> => {
  if (TerminalStatuses.has(record.status)) {
    deps.log.debug({ taskId: record.id, status: record.status }, "delivery of a settled task: derived again and acknowledged");
    await settleEnded({ record, revision }, lease, deps);
    return true;
  }
  if (record.status === "RUNNING" && record.message !== undefined && record.message !== lease.info.streamSequence) {
    deps.log.info({ taskId: record.id, message: lease.info.streamSequence, claimedBy: record.message }, "duplicate work message acknowledged");
    lease.ack();
    return true;
  }
  return false;
};

/** How long a message whose record could not be read waits before it is tried again. */
const READ_AGAIN_MS = 5_000;

/** How long a message whose record's derivatives could not be stored waits before it is tried again. */
const DERIVE_AGAIN_MS = 5_000;

/**
 * A terminal record's message: acknowledged once its derivatives are stored; handed back for
 * a while otherwise, so that its next delivery derives them again.
 */
const settleEnded = async (stored: Stored, lease: Lease, deps: DeliveryDeps): Promise<void> => {
  if (await deps.store.derive(stored)) return lease.ack();
  deps.log.warn({ taskId: stored.record.id, status: stored.record.status }, "index entry or step notice not stored; the task's message is kept to try again");
  lease.nak(DERIVE_AGAIN_MS);
};

/** Settle the lease after an attempt. */
const settle = async ({ snapshot, stopped }: AttemptOutcome, lease: Lease, deps: DeliveryDeps): Promise<DeliveryOutcome> => {
  const record = snapshot.context.record;
  const log = () => deps.log.child({ taskId: record.id, task: record.task, attempt: record.attempt });
  if (stopped) {
    lease.nak(); // interrupted by a shutdown: left to another worker
    return "interrupted";
  }
  if (snapshot.hasTag("lost")) {
    // Settled meanwhile (a cancel, another worker), or held by another message's attempt:
    // acknowledged; otherwise left to redelivery.
    const read = await Effect.runPromise(Effect.result(deps.store.read(record.id)));
    const now = read._tag === "Success" ? read.success : undefined;
    if (now?.record.status === "CANCELLED") {
      // A cancel wrote over this attempt's revision (of a queued task before it started, or of
      // a running one whose worker did not answer): an expected end, not a lost lease.
      log().info({ reason: now.record.error?.message }, "task cancelled; this attempt's outcome is discarded");
      await handledElsewhere(now, lease, deps);
      return "cancelled";
    }
    log().warn({ reason: snapshot.context.lostReason }, "attempt lost its lease; its outcome is discarded");
    if (now !== undefined) await handledElsewhere(now, lease, deps);
    return "lost";
  }
  const saved = { record, revision: snapshot.context.revision };
  switch (record.status) {
    case "RETRYING": {
      const delay = Math.max(0, Date.parse(record.retryAt ?? "") - deps.now());
      // The error's tag and message: its stack is in the record (`troupe get`).
      const error = record.error === undefined ? undefined : { _tag: record.error._tag, message: record.error.message };
      log().info({ error, retryAt: record.retryAt }, "attempt failed; retry scheduled");
      // Its RETRYING index entry (what `stats` counts as retried); the retry goes ahead either way.
      await deps.store.derive(saved);
      lease.nak(delay);
      return "retrying";
    }
    case "COMPLETED":
      await settleEnded(saved, lease, deps);
      return "completed";
    case "CANCELLED":
      log().info("task cancelled");
      await settleEnded(saved, lease, deps);
      return "cancelled";
    default:
      log().info({ error: record.error }, "task failed");
      await settleEnded(saved, lease, deps);
      return "failed";
  }
};

/** A message no worker can run: terminated once, recorded as an event, logged. */
const reject = (lease: Lease, deps: DeliveryDeps, reason: string): DeliveryOutcome => {
  deps.log.warn({ subject: lease.msg.subject, reason, seq: lease.info.streamSequence }, "malformed work message terminated");
  lease.term();
  deps.nc.publish(
    eventSubject("worker", deps.workerId, "rejected"),
    encodeJson({ subject: lease.msg.subject, streamSequence: lease.info.streamSequence, reason, at: new Date(deps.now()).toISOString() }),
  );
  return "skipped";
};
