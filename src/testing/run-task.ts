/**
 * Run one task's handler alone, without NATS, through the worker's own execution path: the
 * same task actor, hosted the same way, its writes kept in memory. The input is validated
 * and encoded as `submit` does; the output comes back decoded, or the attempt's failure as
 * the typed error a client would see (`InvalidInput`, `Execution`, `Timeout`,
 * `Serialization`, `Cancelled`). Give it a fiber clock made under `TestClock` to drive its
 * deadline without waiting.
 */
import { Cause, Effect, Exit } from "effect";
import { pino } from "pino";
import type { TaskRecord } from "../../machines/records.js";
import { TaskHost, type AttemptStore } from "../actor/task-host.js";
import { liveFiberClock, type FiberClock } from "../actor/fiber-clock.js";
import { Fenced, Internal } from "../errors.js";
import { errorFrom, errorOfRecord } from "../failure.js";
import { nextRecord } from "../store/task-store.js";
import { decodeOutput, encodeInput, type InputOf, type OutputOf, type TaskDefinition } from "../task.js";

export interface RunTaskOptions {
  readonly taskId?: string;
  /** Which attempt this is (default 1). */
  readonly attempt?: number;
  /** Abort from the test: the attempt is cancelled as `troupe.cancel` would (its handler sees `ctx.signal`). */
  readonly signal?: AbortSignal;
  /** Called for each `ctx.heartbeat(details)`. */
  readonly onHeartbeat?: (details?: unknown) => void;
  /** The clock of the attempt's deadline and heartbeats (default: real time). */
  readonly clock?: FiberClock;
}

/** The store of one attempt, in memory: compare-and-set on a revision counter, as in KV. */
const memoryStore = (): AttemptStore => {
  let revision = 1;
  const save = (record: TaskRecord, expected: number) =>
    expected === revision ? Effect.succeed(++revision) : Effect.fail(new Fenced({ id: record.id, message: `revision ${expected} is stale` }));
  const store: AttemptStore = {
    write: (record, expected) => Effect.map(save(record, expected), (r) => ({ revision: r, payload: new Uint8Array() })),
    announceLoss: () => {},
    apply: (_id, event, { from }) => {
      const next = nextRecord(from, event);
      return next === undefined ? Effect.succeed(undefined) : Effect.map(save(next, from.revision), (r) => ({ record: next, revision: r }));
    },
  };
  return store;
};

export const runTask = async <T extends TaskDefinition>(task: T, input: InputOf<T>, options: RunTaskOptions = {}): Promise<OutputOf<T>> => {
  const encoded = Effect.runSyncExit(encodeInput(task, input));
  if (Exit.isFailure(encoded)) throw Cause.squash(encoded.cause);
  const clock = options.clock ?? liveFiberClock();
  const host = new TaskHost({
    store: memoryStore(),
    clock,
    workerId: "runTask",
    log: pino({ level: "silent" }),
    maxPayload: 1024 * 1024 - 8_192,
    random: () => 0.5,
  });
  const id = options.taskId ?? "test-task";
  const record: TaskRecord = {
    id,
    task: task.name,
    queue: task.queue,
    status: "QUEUED",
    attempt: (options.attempt ?? 1) - 1,
    input: encoded.value,
    createdAt: new Date(clock.now()).toISOString(),
  };
  const abort = () => void host.cancel(id, String(options.signal?.reason ?? "aborted by the test"));
  options.signal?.addEventListener("abort", abort);
  try {
    const { snapshot } = await host.attempt({ record, revision: 1 }, task, { working: (details) => options.onHeartbeat?.(details) });
    const after = snapshot.context.record;
    if (after.status === "COMPLETED") {
      const decoded = decodeOutput<OutputOf<T>>(task, after.output);
      if (Exit.isSuccess(decoded)) return decoded.value;
      throw Cause.squash(decoded.cause);
    }
    if (after.status === "RETRYING" && after.error !== undefined) throw errorFrom(after.error, after);
    if (after.status === "FAILED" || after.status === "CANCELLED") throw errorOfRecord(after);
    throw new Internal({ message: `the attempt ended ${JSON.stringify(snapshot.value)}` });
  } finally {
    options.signal?.removeEventListener("abort", abort);
  }
};
