/** The handle `submit` returns: the task's id, its typed result, its state record. */
import { Cause, Exit } from "effect";
import type { TaskRecord } from "../../machines/task.js";
import { TaskNotFound, taskErrorFrom } from "../errors.js";
import { decodeOutput, type TaskDefinition } from "../task.js";
import type { CancelResult, Troupe } from "./troupe.js";

export class TaskRun<O> {
  constructor(
    private readonly troupe: Troupe,
    readonly id: string,
    readonly task: TaskDefinition,
    private readonly settled: Promise<TaskRecord>,
  ) {
    // A run whose result nobody asks for must not raise an unhandled rejection.
    settled.catch(() => undefined);
  }

  /**
   * The task's output, decoded with its schema; rejects with the typed error of a
   * failed or cancelled task (`Execution`, `Timeout`, `WorkerLost`, `Cancelled`, ...).
   */
  async result(): Promise<O> {
    const record = await this.settled;
    if (record.status === "COMPLETED") {
      const decoded = decodeOutput<O>(this.task, record.output);
      if (Exit.isSuccess(decoded)) return decoded.value;
      throw Cause.squash(decoded.cause);
    }
    throw taskErrorFrom(record.error ?? { _tag: record.status === "CANCELLED" ? "Cancelled" : "Execution", message: record.status });
  }

  /** The terminal record, whatever the outcome. */
  settledRecord(): Promise<TaskRecord> {
    return this.settled;
  }

  /** Cancel this task (see `Troupe.cancel`). */
  cancel(reason?: string): Promise<CancelResult> {
    return this.troupe.cancel(this.id, reason);
  }

  /** The current state record. */
  async get(): Promise<TaskRecord> {
    const record = await this.troupe.get(this.id);
    if (record === undefined) throw new TaskNotFound({ id: this.id, message: `no task ${this.id}` });
    return record;
  }
}
