/**
 * Cancelling a task: a queued or retrying one becomes CANCELLED through the store and never
 * starts; a running one is cancelled by the worker holding its lease (it interrupts the
 * handler and writes CANCELLED itself), or, when that worker does not answer, through the
 * store over its revision, which fences it; a finished one is left as it is. A task cancelled
 * through the store has its work message removed too: a queued one no worker served would
 * otherwise wait in `TROUPE_TASKS`, counted as waiting, until retention.
 */
import { Effect, Schema } from "effect";
import type { NatsConnection } from "@nats-io/transport-node";
import { TaskRecord as TaskRecordSchema, TerminalStatuses, type TaskStatus } from "../../machines/records.js";
import { NatsFailure, TaskNotFound } from "../errors.js";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { controlSubject } from "../nats/topology.js";
import type { TaskStore } from "./task-store.js";

export interface CancelResult {
  readonly id: string;
  readonly status: TaskStatus;
  /** False when the task had already finished (it is left as it is). */
  readonly cancelled: boolean;
  readonly message: string;
}

/** How long the worker running a task has to answer a cancel before the store fences it. */
const WORKER_ANSWER_MS = 2_000;

/** A worker's answer on its `cancel` endpoint: the final record when it was running the task. */
export const CancelAnswer = Schema.Struct({ running: Schema.Boolean, record: Schema.optional(TaskRecordSchema) });

/** Ask the worker holding the lease: the final record if it ran the task, else `undefined`. */
const askWorker = async (nc: NatsConnection, workerId: string, id: string, reason: string) => {
  const reply = await nc.request(controlSubject(workerId, "cancel"), encodeJson({ id, reason }), { timeout: WORKER_ANSWER_MS }).catch(() => undefined);
  const answer = reply === undefined ? undefined : decodeWith(CancelAnswer, reply.data, "cancel answer");
  return answer?.ok && answer.value.running ? answer.value.record : undefined;
};

export const cancelTask = async (nc: NatsConnection, store: TaskStore, id: string, reason: string): Promise<CancelResult> => {
  for (let i = 0; i < 10; i++) {
    const current = await store.get(id);
    if (current === undefined) throw new TaskNotFound({ id, message: `no task ${id}` });
    const { record } = current;
    if (TerminalStatuses.has(record.status)) {
      return { id, status: record.status, cancelled: false, message: `task ${id} already ended ${record.status}; left as it is` };
    }
    if (record.status === "RUNNING" && record.workerId !== undefined) {
      const answered = await askWorker(nc, record.workerId, id, reason);
      if (answered !== undefined) {
        return { id, status: answered.status, cancelled: answered.status === "CANCELLED", message: `task ${id} ${answered.status}` };
      }
      // No answer: that worker is gone or hung. Writing over its revision fences it.
    }
    const written = await Effect.runPromise(
      Effect.result(store.apply(id, { type: "CANCEL", reason, at: Date.now() }, { from: current })),
    );
    if (written._tag === "Success" && written.success !== undefined) {
      await store.dropWork(id, written.success.revision).catch(() => 0);
      return { id, status: "CANCELLED", cancelled: true, message: `task ${id} cancelled` };
    }
    if (written._tag === "Failure" && written.failure._tag !== "Fenced") throw written.failure;
    // It moved meanwhile (started, finished): look again.
  }
  throw new NatsFailure({ message: `task ${id} kept changing; cancel gave up` });
};
