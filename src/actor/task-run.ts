/**
 * Hosting one task actor for one delivery: rehydrate it from the message (first
 * delivery) or from KV (any later one), provide its effects, run it to a settled or
 * lost state, then settle the lease: ack a final outcome, NAK a retry with its backoff,
 * leave a lost one alone.
 *
 * Every write is a compare-and-set on the last revision the actor saw: the revision is
 * the fencing token, so an attempt that lost its lease cannot overwrite a newer one.
 */
import { Cause, Effect, Exit } from "effect";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { createActor, type Actor, type AnyActorRef, type SnapshotFrom } from "xstate";
import type { Logger } from "pino";
import {
  TerminalStatuses,
  taskMachine,
  type Execution,
  type TaskErrorInfo,
  type TaskRecord,
} from "../../machines/task.js";
import { Fenced, NonRetryableError } from "../errors.js";
import { decodeJson, encodeJson } from "../nats/codec.js";
import type { Lease } from "../nats/lease.js";
import { eventSubject, Headers, kvSubject, TASKS_BUCKET } from "../nats/topology.js";
import { PublishRejected, WRONG_LAST_SEQUENCE, type AckedPublisher } from "../nats/publisher.js";
import { decodeInput, encodeOutput, type TaskDefinition } from "../task.js";
import type { FiberClock } from "./fiber-clock.js";

export interface TaskHostDeps {
  readonly nc: NatsConnection;
  readonly tasks: KV;
  readonly publisher: AckedPublisher;
  readonly clock: FiberClock;
  readonly workerId: string;
  readonly log: Logger;
  /** Largest payload the server takes; bigger outputs fail with `Serialization`. */
  readonly maxPayload: number;
  readonly now: () => number;
}

export type TaskRunOutcome = "completed" | "failed" | "retrying" | "cancelled" | "lost" | "skipped";

const isWrongLastSequence = (e: unknown) => e instanceof PublishRejected && e.errCode === WRONG_LAST_SEQUENCE;

const errorInfo = (e: unknown): TaskErrorInfo => {
  if (e instanceof NonRetryableError) return { _tag: "Execution", message: e.message, stack: e.stack, retryable: false };
  if (e instanceof Error) return { _tag: "Execution", message: e.message, stack: e.stack, retryable: true };
  return { _tag: "Execution", message: typeof e === "string" ? e : JSON.stringify(e) ?? String(e), retryable: true };
};

/** Minimal shape check of a work message; the full record is trusted only from KV. */
export const asRecord = (value: unknown): TaskRecord | undefined => {
  if (typeof value !== "object" || value === null) return undefined;
  const r = value as Record<string, unknown>;
  return typeof r.id === "string" && typeof r.task === "string" && typeof r.status === "string" && typeof r.attempt === "number"
    ? (value as TaskRecord)
    : undefined;
};

export const readRecord = async (tasks: KV, id: string): Promise<{ record: TaskRecord; revision: number } | undefined> => {
  const entry = await tasks.get(id);
  if (entry === null || entry.operation !== "PUT") return undefined;
  const decoded = decodeJson(entry.value);
  const record = decoded.ok ? asRecord(decoded.value) : undefined;
  return record === undefined ? undefined : { record, revision: entry.revision };
};

/** What one delivery's effects need beyond the actor's (serialisable) context. */
interface Session {
  readonly actor: Actor<typeof taskMachine>;
  readonly settled: Promise<SnapshotFrom<typeof taskMachine>>;
  readonly lease: Lease;
  readonly definition: TaskDefinition;
  readonly attempt: number;
  readonly notify: string | undefined;
  /** The attempt's child logger, made on first use (most attempts never log). */
  readonly log: () => Logger;
  /** Aborts the running handler. */
  readonly abort: AbortController;
  /** The handler returned (nothing left to abort). */
  finished: boolean;
}

/** Events from effects that finish after the actor stopped are dropped. */
const answer = (self: AnyActorRef, event: { type: string } & Record<string, unknown>) => {
  if (self.getSnapshot().status === "active") self.send(event);
};

/**
 * Runs deliveries as task actors. The machine is provided once per host: per-delivery
 * effects find their lease and definition in `sessions` by task id, so the actor's
 * context stays plain data.
 */
export class TaskHost {
  private readonly sessions = new Map<string, Session>();
  private readonly machine;

  constructor(
    private readonly definitions: ReadonlyMap<string, TaskDefinition>,
    private readonly deps: TaskHostDeps,
  ) {
    const session = (id: string) => {
      const s = this.sessions.get(id);
      if (s === undefined) throw new Error(`no session for task ${id}`);
      return s;
    };
    this.machine = taskMachine.provide({
      actions: {
        persist: ({ context, self }, params: { event: string }) => {
          persist(context.record, context.revision, params.event, session(context.record.id).notify, deps).then(
            (revision) => answer(self, { type: "SAVED", revision }),
            (e: unknown) => answer(self, { type: "FENCED", reason: e instanceof Error ? e.message : String(e) }),
          );
        },
        execute: ({ context, self }) => {
          const s = session(context.record.id);
          void execute(s, context.record, s.abort.signal, deps).then((execution) => {
            s.finished = true;
            answer(self, { type: "EXECUTED", execution });
          });
        },
        interrupt: ({ context }) => {
          const s = this.sessions.get(context.record.id);
          if (s !== undefined && !s.finished) s.abort.abort();
        },
        heartbeat: ({ context }) => this.sessions.get(context.record.id)?.lease.working(),
      },
      delays: {
        // The deadline is absolute; a rehydrated actor waits only for what is left.
        deadline: ({ context }) =>
          context.deadlineAt === undefined ? Number.POSITIVE_INFINITY : Math.max(0, context.deadlineAt - deps.now()),
      },
    });
  }

  /** Tasks running on this host now. */
  get running(): number {
    return this.sessions.size;
  }

  /** Run one delivery to its end; never throws. */
  async run(lease: Lease): Promise<TaskRunOutcome> {
    const { deps } = this;
    const { tasks, log } = deps;
    const decoded = decodeJson(lease.msg.data);
    const fromMessage = decoded.ok ? asRecord(decoded.value) : undefined;
    if (fromMessage === undefined) {
      rejectMessage(lease, deps, decoded.ok ? "not a task record" : decoded.error.message);
      return "skipped";
    }
    const definition = this.definitions.get(fromMessage.task);
    if (definition === undefined || !lease.msg.subject.endsWith(`.${definition.queue}.${definition.name}`)) {
      rejectMessage(lease, deps, `UnknownTask: no handler for task "${fromMessage.task}" on ${lease.msg.subject}`);
      return "skipped";
    }

    // The first delivery carries the QUEUED record and its revision: no read needed.
    const headerRevision = Number(lease.msg.headers?.get(Headers.revision) ?? NaN);
    const state: { record: TaskRecord; revision: number } | undefined =
      lease.info.deliveryCount === 1 && Number.isInteger(headerRevision)
        ? { record: fromMessage, revision: headerRevision }
        : await readRecord(tasks, fromMessage.id).catch(() => undefined);
    if (state === undefined) {
      rejectMessage(lease, deps, `task ${fromMessage.id} has no record in KV`);
      return "skipped";
    }
    const id = state.record.id;
    if (TerminalStatuses.has(state.record.status)) {
      log.debug({ taskId: id, status: state.record.status }, "delivery of a settled task acknowledged");
      lease.ack();
      return "skipped";
    }
    if (this.sessions.has(id)) {
      // A redelivery while this worker still runs the task (its lease lapsed): keep the one running.
      log.warn({ taskId: id }, "duplicate delivery of a running task ignored");
      return "skipped";
    }

    const attempt = state.record.attempt + 1;
    let child: Logger | undefined;
    const attemptLog = () => (child ??= log.child({ taskId: id, task: definition.name, attempt }));
    // Still RUNNING on a redelivery: the attempt before this one lost its worker.
    const previousLost = state.record.status === "RUNNING";
    if (previousLost) {
      attemptLog().warn({ lostWorker: state.record.workerId }, "previous attempt lost its worker (WorkerLost); running again");
    }
    const actor = createActor(this.machine, {
      input: { record: state.record, revision: state.revision, policy: definition.policy },
      clock: deps.clock,
    });
    const settled = new Promise<SnapshotFrom<typeof taskMachine>>((resolve) => {
      actor.subscribe({
        next: (snapshot) => {
          if (snapshot.hasTag("settled") || snapshot.status === "done") resolve(snapshot);
        },
        error: (err) => {
          attemptLog().error({ err }, "task actor failed");
          resolve(actor.getSnapshot());
        },
        complete: () => resolve(actor.getSnapshot()),
      });
    });
    this.sessions.set(id, {
      actor,
      settled,
      lease,
      definition,
      attempt,
      notify: lease.msg.headers?.get(Headers.notify) || undefined,
      log: attemptLog,
      abort: new AbortController(),
      finished: false,
    });
    try {
      actor.start();
      actor.send({ type: "START", attempt, workerId: deps.workerId, at: deps.now(), previousLost });
      const snapshot = await settled;
      if (lease.settled) return "skipped"; // interrupted by a shutdown: left to redelivery
      return await this.finish(snapshot, lease, definition, attemptLog);
    } finally {
      actor.stop();
      this.sessions.delete(id);
    }
  }

  /**
   * Cancel a task this host runs: its handler is interrupted and CANCELLED is written.
   * Resolves with the final record, or `undefined` when the task is not running here.
   */
  async cancel(id: string, reason: string): Promise<TaskRecord | undefined> {
    const s = this.sessions.get(id);
    if (s === undefined) return undefined;
    s.actor.send({ type: "CANCEL", reason, at: this.deps.now() });
    const snapshot = await s.settled;
    return snapshot.hasTag("lost") ? undefined : snapshot.context.record;
  }

  /** Shutdown past its timeout: abort every running handler and hand the deliveries back. */
  interruptAll(): void {
    for (const s of this.sessions.values()) {
      s.log().warn("interrupted by shutdown; left to another worker");
      s.lease.nak();
      if (!s.finished) s.abort.abort();
      s.actor.stop();
    }
  }

  private async finish(
    snapshot: SnapshotFrom<typeof taskMachine>,
    lease: Lease,
    definition: TaskDefinition,
    attemptLog: () => Logger,
  ): Promise<TaskRunOutcome> {
    const record = snapshot.context.record;
    const log = record.status === "COMPLETED" && !snapshot.hasTag("lost") ? undefined : attemptLog();
    if (snapshot.hasTag("lost")) {
      log?.warn({ reason: snapshot.context.lostReason }, "attempt lost its lease; its outcome is discarded");
      const now = await readRecord(this.deps.tasks, record.id).catch(() => undefined);
      if (now !== undefined && TerminalStatuses.has(now.record.status)) lease.ack();
      return "lost";
    }
    switch (record.status) {
      case "RETRYING": {
        const base = Math.max(0, Date.parse(record.retryAt ?? "") - this.deps.now());
        const jitter = definition.policy.retry.jitter;
        const delay = base * (1 - jitter / 2 + Math.random() * jitter);
        log?.info({ error: record.error, delayMs: Math.round(delay) }, "attempt failed; retry scheduled");
        lease.nak(delay);
        return "retrying";
      }
      case "COMPLETED":
        lease.ack();
        return "completed";
      case "CANCELLED":
        log?.info("task cancelled");
        lease.ack();
        return "cancelled";
      default:
        log?.info({ error: record.error }, "task failed");
        lease.ack();
        return "failed";
    }
  }
}

const execute = async (session: Session, record: TaskRecord, signal: AbortSignal, deps: TaskHostDeps): Promise<Execution> => {
  const { definition, attempt, lease } = session;
  const input = decodeInput(definition, record.input);
  if (Exit.isFailure(input)) {
    const error = Cause.squash(input.cause) as Error;
    return { ok: false, error: { _tag: "InvalidInput", message: error.message, retryable: false }, at: deps.now() };
  }
  try {
    const ctx = {
      taskId: record.id,
      attempt,
      signal,
      get log() {
        return session.log();
      },
      heartbeat: () => lease.working(),
    };
    const returned = definition.handler(input.value, ctx);
    let output: unknown;
    if (Effect.isEffect(returned)) {
      const exit = await Effect.runPromiseExit(returned as Effect.Effect<unknown, unknown>, { signal });
      if (Exit.isFailure(exit)) return { ok: false, error: errorInfo(Cause.squash(exit.cause)), at: deps.now() };
      output = exit.value;
    } else {
      output = await returned;
    }
    const encoded = encodeOutput(definition, output);
    if (Exit.isFailure(encoded)) {
      const error = Cause.squash(encoded.cause) as Error;
      return { ok: false, error: { _tag: "Serialization", message: error.message, retryable: false }, at: deps.now() };
    }
    const size = encodeJson(encoded.value).length;
    if (size > deps.maxPayload - 8_192) {
      return {
        ok: false,
        error: { _tag: "Serialization", message: `output is ${size} bytes, over the server's payload limit`, retryable: false },
        at: deps.now(),
      };
    }
    return { ok: true, output: encoded.value, at: deps.now() };
  } catch (e) {
    return { ok: false, error: errorInfo(e), at: deps.now() };
  }
};

/** CAS write, retried through a reconnect; a lost CAS whose write is ours counts as won. */
const persist = async (
  record: TaskRecord,
  expected: number,
  event: string,
  notify: string | undefined,
  deps: TaskHostDeps,
): Promise<number> => {
  const payload = encodeJson(record);
  let revision: number | undefined;
  for (let i = 0; revision === undefined; i++) {
    try {
      revision = (await deps.publisher.publish(kvSubject(TASKS_BUCKET, record.id), payload, { lastSubjectSequence: expected })).seq;
    } catch (e) {
      if (isWrongLastSequence(e)) {
        const now = i > 0 ? await readRecord(deps.tasks, record.id).catch(() => undefined) : undefined;
        if (now !== undefined && now.record.status === record.status && now.record.attempt === record.attempt && now.record.workerId === record.workerId) {
          revision = now.revision;
          break;
        }
        throw new Fenced({ id: record.id, message: `task ${record.id} changed since revision ${expected}` });
      }
      if (i >= 30 || deps.nc.isClosed()) throw e;
      await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** i)));
    }
  }
  deps.nc.publish(eventSubject("task", record.id, event), payload);
  if (notify !== undefined && TerminalStatuses.has(record.status)) deps.nc.publish(`${notify}.${record.id}`, payload);
  return revision;
};

/** A message no worker can run: terminated once, recorded as an event, logged. */
const rejectMessage = (lease: Lease, deps: TaskHostDeps, reason: string) => {
  deps.log.warn({ subject: lease.msg.subject, reason, seq: lease.info.streamSequence }, "malformed work message terminated");
  lease.term();
  deps.nc.publish(
    eventSubject("worker", deps.workerId, "rejected"),
    encodeJson({ subject: lease.msg.subject, streamSequence: lease.info.streamSequence, reason, at: new Date(deps.now()).toISOString() }),
  );
};
