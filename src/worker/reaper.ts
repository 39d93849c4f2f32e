/**
 * The end of a task whose workers keep dying. When a work message runs out of deliveries,
 * JetStream raises MAX_DELIVERIES and keeps the message; the advisory is captured in
 * TROUPE_ADVISORIES, and one worker (a shared durable consumer) fails the task through the
 * store (a `FAIL` with `WorkerLost`) and removes its message from the work stream. No task
 * stays stuck.
 */
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { Effect, Schema } from "effect";
import type { Logger } from "pino";
import { TaskRecord as TaskRecordSchema, TerminalStatuses, type TaskRecord } from "../../machines/records.js";
import { decodeWith } from "../nats/codec.js";
import type { NatsHandle } from "../nats/connection.js";
import { permissionDenied } from "../nats/permissions.js";
import { isTransientJetStream, withRetryFor } from "../nats/retry.js";
import { ADVISORIES_STREAM, REAPER_CONSUMER, TASKS_STREAM } from "../nats/topology.js";
import type { TaskStore } from "../store/task-store.js";

const MaxDeliveriesAdvisory = Schema.Struct({
  stream: Schema.String,
  stream_seq: Schema.Number,
  deliveries: Schema.optional(Schema.Number),
});
type MaxDeliveriesAdvisory = typeof MaxDeliveriesAdvisory.Type;

/** Settle one MAX_DELIVERIES advisory; safe to run twice for the same one. */
export const reap = async (nats: NatsHandle, store: TaskStore, advisory: MaxDeliveriesAdvisory, log: Logger): Promise<TaskRecord | undefined> => {
  const seq = advisory.stream_seq;
  if (advisory.stream !== TASKS_STREAM) return undefined;
  // `null` ("no such message") means acked in the meantime; an error redelivers the advisory.
  const stored = await nats.jsm.streams.getMessage(TASKS_STREAM, { seq });
  if (stored === null) return undefined;
  const message = decodeWith(TaskRecordSchema, stored.data, "task record");
  let failed: TaskRecord | undefined;
  if (message.ok) {
    const id = message.value.id;
    const failure = {
      _tag: "WorkerLost" as const,
      message: `gave up after ${advisory.deliveries ?? "all"} deliveries: every worker that took the task died or lost its lease`,
    };
    const after = await Effect.runPromise(store.apply(id, { type: "FAIL", failure, at: Date.now() }, { fallback: message.value }));
    failed = after?.record;
    if (failed !== undefined) log.warn({ taskId: id, deliveries: advisory.deliveries }, "task failed with WorkerLost: deliveries exhausted");
    // Ended (now, or before: a reaper that died after writing may not have derived it): its
    // derivatives stored before its message goes; otherwise the advisory comes back.
    const ended = after ?? (await store.get(id));
    if (ended !== undefined && TerminalStatuses.has(ended.record.status) && !(await store.derive(ended))) {
      throw new Error(`the index entry of task ${id} could not be stored`);
    }
  }
  await nats.jsm.streams.deleteMessage(TASKS_STREAM, seq, false).catch(() => false);
  return failed;
};

/**
 * Whether this identity may read the work stream's messages, which reaping does: a worker
 * limited to a queue (`troupe auth init --queue-worker`) may not, and leaves reaping to
 * workers with the full worker role.
 */
const mayReap = async (nats: NatsHandle): Promise<boolean> => {
  try {
    await withRetryFor(nats.nc, () => nats.jsm.streams.getMessage(TASKS_STREAM, { seq: 1 }), isTransientJetStream, nats.submitRetryFor);
    return true;
  } catch (e) {
    return permissionDenied(e) === undefined;
  }
};

/** Consume the advisories until `stop()`. */
export const startReaper = async (nats: NatsHandle, store: TaskStore, log: Logger): Promise<{ stop: () => Promise<void> }> => {
  if (!(await mayReap(nats))) {
    log.info("this identity may not read the work stream: tasks that run out of deliveries are failed by workers with the full worker role");
    return { stop: async () => undefined };
  }
  // Started through a passing unavailability (an election, a node back from a pause), for `submitRetryFor`.
  const messages: ConsumerMessages = await withRetryFor(
    nats.nc,
    async () => (await nats.js.consumers.get(ADVISORIES_STREAM, REAPER_CONSUMER)).consume({ max_messages: 4 }),
    isTransientJetStream,
    nats.submitRetryFor,
  );
  const handle = async (m: JsMsg) => {
    const advisory = decodeWith(MaxDeliveriesAdvisory, m.data, "MAX_DELIVERIES advisory");
    if (!advisory.ok) {
      log.warn({ reason: advisory.error.message }, "unreadable advisory terminated");
      m.term();
      return;
    }
    try {
      await reap(nats, store, advisory.value, log);
      m.ack();
    } catch (err) {
      log.warn({ err }, "MAX_DELIVERIES advisory not handled; it will be redelivered");
      m.nak(1_000);
    }
  };
  const loop = (async () => {
    for await (const m of messages) await handle(m);
  })().catch((err) => log.warn({ err }, "reaper stopped"));
  return {
    stop: async () => {
      await messages.close().catch(() => undefined);
      await loop;
    },
  };
};
