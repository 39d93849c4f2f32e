/**
 * The end of a task whose workers keep dying. When a work message runs out of deliveries,
 * JetStream raises MAX_DELIVERIES and keeps the message; the advisory is captured in
 * TROUPE_ADVISORIES, and one worker (a shared durable consumer) marks the task FAILED
 * with WorkerLost and removes its message from the work stream. No task stays stuck.
 */
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { TerminalStatuses, type TaskRecord } from "../../machines/task.js";
import { asRecord, readRecord } from "../nats/records.js";
import { decodeJson, encodeJson } from "../nats/codec.js";
import type { NatsHandle } from "../nats/connection.js";
import { ADVISORIES_STREAM, eventSubject, Headers, kvSubject, REAPER_CONSUMER, TASKS_BUCKET, TASKS_STREAM } from "../nats/topology.js";

interface MaxDeliveriesAdvisory {
  readonly stream?: string;
  readonly consumer?: string;
  readonly stream_seq?: number;
  readonly deliveries?: number;
}

/** Settle one MAX_DELIVERIES advisory; safe to run twice for the same one. */
export const reap = async (nats: NatsHandle, advisory: MaxDeliveriesAdvisory, log: Logger): Promise<TaskRecord | undefined> => {
  const seq = advisory.stream_seq;
  if (advisory.stream !== TASKS_STREAM || seq === undefined) return undefined;
  const stored = await nats.jsm.streams.getMessage(TASKS_STREAM, { seq }).catch(() => null);
  if (stored === null) return undefined; // acked in the meantime
  const decoded = decodeJson(stored.data);
  const fromMessage = decoded.ok ? asRecord(decoded.value) : undefined;
  let failed: TaskRecord | undefined;
  if (fromMessage !== undefined) {
    for (let i = 0; i < 5 && failed === undefined; i++) {
      const now = await readRecord(nats.tasks, fromMessage.id);
      if (now === undefined || TerminalStatuses.has(now.record.status)) break;
      const record: TaskRecord = {
        ...now.record,
        status: "FAILED",
        error: {
          _tag: "WorkerLost",
          message: `gave up after ${advisory.deliveries ?? "all"} deliveries: every worker that took the task died or lost its lease`,
          retryable: false,
        },
        finishedAt: new Date().toISOString(),
      };
      if ((await nats.publisher.compareAndSet(kvSubject(TASKS_BUCKET, record.id), encodeJson(record), now.revision)) !== undefined) {
        failed = record;
      }
    }
    if (failed !== undefined) {
      const payload = encodeJson(failed);
      nats.nc.publish(eventSubject("task", failed.id, "failed"), payload);
      const notify = stored.header?.get(Headers.notify);
      if (notify) nats.nc.publish(`${notify}.${failed.id}`, payload);
      log.warn({ taskId: failed.id, deliveries: advisory.deliveries }, "task failed with WorkerLost: deliveries exhausted");
    }
  }
  await nats.jsm.streams.deleteMessage(TASKS_STREAM, seq, false).catch(() => false);
  return failed;
};

/** Consume the advisories until `stop()`. */
export const startReaper = async (nats: NatsHandle, log: Logger): Promise<{ stop: () => Promise<void> }> => {
  const consumer = await nats.js.consumers.get(ADVISORIES_STREAM, REAPER_CONSUMER);
  const messages: ConsumerMessages = await consumer.consume({ max_messages: 4 });
  const handle = async (m: JsMsg) => {
    try {
      await reap(nats, m.json<MaxDeliveriesAdvisory>(), log);
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
