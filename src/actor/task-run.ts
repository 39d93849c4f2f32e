/**
 * Hosting one task actor for one delivery: rehydrate it from the message (first
 * delivery) or from KV (any later one), provide its effects, run it to a settled or
 * lost state, then settle the lease: ack a final outcome, NAK a retry with its backoff,
 * leave a lost one alone.
 *
 * Every write is a compare-and-set on the last revision the actor saw: the revision is
 * the fencing token, so an attempt that lost its lease cannot overwrite a newer one.
 */
import { Cause, Effect, Exit, Schedule } from "effect";
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
import { asRecord, readRecord } from "../nats/records.js";
import type { Lease } from "../nats/lease.js";
import { eventSubject, Headers, kvSubject, TASKS_BUCKET } from "../nats/topology.js";
import { WRONG_LAST_SEQUENCE, type AckedPublisher, type PublishRejected, type PublishTimeout } from "../nats/publisher.js";
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

const errorInfo = (e: unknown): TaskErrorInfo => {
  if (e instanceof NonRetryableError) return { _tag: "Execution", message: e.message, stack: e.stack, retryable: false };
  if (e instanceof Error) return { _tag: "Execution", message: e.message, stack: e.stack, retryable: true };
  return { _tag: "Execution", message: typeof e === "string" ? e : JSON.stringify(e) ?? String(e), retryable: true };
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
          const program = persist(context.record, context.revision, params.event, session(context.record.id).notify, deps).pipe(
            Effect.match({
              onSuccess: (revision) => answer(self, { type: "SAVED", revision }),
              onFailure: (e) => answer(self, { type: "FENCED", reason: e.message }),
            }),
          );
          Effect.runFork(program);
        },
        execute: ({ context, self }) => {
          const s = session(context.record.id);
          // Interrupted through the session's signal: deadline, cancellation, shutdown.
          void Effect.runPromise(execute(s, context.record, s.abort.signal, deps), { signal: s.abort.signal }).then(
            (execution) => {
              s.finished = true;
              answer(self, { type: "EXECUTED", execution });
            },
            () => (s.finished = true),
          );
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
    const wait = Date.parse(state.record.runAt ?? "") - deps.now();
    if (state.record.status === "QUEUED" && wait > 0) {
      // A delayed task: back on the server until it is due; no attempt, no slot held.
      lease.nak(wait);
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

/** Decode, run the handler (a Promise or an Effect) on a fiber, encode: an outcome, never a failure. */
const execute = (session: Session, record: TaskRecord, signal: AbortSignal, deps: TaskHostDeps): Effect.Effect<Execution> => {
  const { definition, attempt, lease } = session;
  const failed = (error: TaskErrorInfo): Execution => ({ ok: false, error, at: deps.now() });
  const ctx = {
    taskId: record.id,
    attempt,
    signal,
    get log() {
      return session.log();
    },
    heartbeat: () => lease.working(),
  };
  return Effect.gen(function* () {
    const input = decodeInput(definition, record.input);
    if (Exit.isFailure(input)) {
      return failed({ _tag: "InvalidInput", message: (Cause.squash(input.cause) as Error).message, retryable: false });
    }
    const returned = yield* Effect.try({ try: () => definition.handler(input.value, ctx), catch: (e) => e });
    const output = Effect.isEffect(returned)
      ? yield* (returned as Effect.Effect<unknown, unknown>)
      : yield* Effect.tryPromise({ try: () => Promise.resolve(returned), catch: (e) => e });
    const encoded = encodeOutput(definition, output);
    if (Exit.isFailure(encoded)) {
      return failed({ _tag: "Serialization", message: (Cause.squash(encoded.cause) as Error).message, retryable: false });
    }
    // Only an object or a long string can be near the limit; a number needs no measuring.
    const value = encoded.value;
    const size = typeof value === "object" || (typeof value === "string" && value.length > 4_096) ? encodeJson(value).length : 0;
    if (size > deps.maxPayload - 8_192) {
      return failed({ _tag: "Serialization", message: `output is ${size} bytes, over the server's payload limit`, retryable: false });
    }
    return { ok: true, output: encoded.value, at: deps.now() } satisfies Execution;
  }).pipe(
    // A failure or a defect (a throw inside the handler's Effect) is the attempt's outcome;
    // an interruption (deadline, cancellation, shutdown) stays one.
    Effect.catchCause((cause) =>
      Cause.hasInterruptsOnly(cause) ? Effect.interrupt : Effect.succeed(failed(errorInfo(Cause.squash(cause)))),
    ),
  );
};

/** What keeps a write from landing for now (a reconnect), as opposed to a lost compare-and-set. */
const isTransient = (e: PublishRejected | PublishTimeout) => e._tag === "PublishTimeout" || e.errCode !== WRONG_LAST_SEQUENCE;

/**
 * The compare-and-set write of a transition, retried through a reconnect, then its event
 * (and, for a final state, the submitter's notification). A lost compare-and-set is
 * `Fenced`, unless a retry finds the record is the very one it wrote (the first try
 * landed and only its ack was lost).
 */
const persist = (
  record: TaskRecord,
  expected: number,
  event: string,
  notify: string | undefined,
  deps: TaskHostDeps,
): Effect.Effect<number, Fenced | PublishRejected | PublishTimeout> => {
  const payload = encodeJson(record);
  let tries = 0;
  const write = Effect.tryPromise({
    try: () => {
      tries++;
      return deps.publisher.publish(kvSubject(TASKS_BUCKET, record.id), payload, { lastSubjectSequence: expected });
    },
    catch: (e) => e as PublishRejected | PublishTimeout,
  });
  const ours = (r: TaskRecord) => r.status === record.status && r.attempt === record.attempt && r.workerId === record.workerId;
  return write.pipe(
    Effect.map((ack) => ack.seq),
    Effect.retry({ schedule: Schedule.exponential("100 millis"), times: 30, while: (e) => isTransient(e) && !deps.nc.isClosed() }),
    Effect.catchTag("PublishRejected", (e): Effect.Effect<number, Fenced | PublishRejected> =>
      e.errCode !== WRONG_LAST_SEQUENCE
        ? Effect.fail(e)
        : Effect.flatMap(
            tries > 1 ? Effect.promise(() => readRecord(deps.tasks, record.id).catch(() => undefined)) : Effect.succeed(undefined),
            (now) =>
              now !== undefined && ours(now.record)
                ? Effect.succeed(now.revision)
                : Effect.fail(new Fenced({ id: record.id, message: `task ${record.id} changed since revision ${expected}` })),
          ),
    ),
    Effect.tap(() =>
      Effect.sync(() => {
        deps.nc.publish(eventSubject("task", record.id, event), payload);
        if (notify !== undefined && TerminalStatuses.has(record.status)) deps.nc.publish(`${notify}.${record.id}`, payload);
      }),
    ),
  );
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
