/** The handle `troupe.start` returns: the run's id, its outputs, its record. */
import type { WorkflowRecord } from "../../machines/workflow.js";
import { WorkflowFailed, WorkflowNotFound } from "../errors.js";
import type { Troupe } from "./troupe.js";

export class WorkflowRun<O> {
  constructor(
    private readonly troupe: Troupe,
    readonly id: string,
    private readonly settled: Promise<WorkflowRecord>,
  ) {
    settled.catch(() => undefined);
  }

  /** Every step's output by step name; rejects with `WorkflowFailed` when the run failed or was cancelled. */
  async result(): Promise<O> {
    const record = await this.settled;
    if (record.status === "COMPLETED") {
      return Object.fromEntries(Object.entries(record.steps).map(([name, s]) => [name, s.output])) as O;
    }
    throw new WorkflowFailed({
      id: record.id,
      status: record.status,
      message: record.error?.message ?? `workflow ${record.id} ${record.status}`,
      steps: Object.fromEntries(Object.entries(record.steps).map(([n, s]) => [n, { status: s.status, error: s.error }])),
    });
  }

  /** The terminal record, whatever the outcome. */
  settledRecord(): Promise<WorkflowRecord> {
    return this.settled;
  }

  /** The run's current record. */
  async get(): Promise<WorkflowRecord> {
    const record = await this.troupe.getWorkflow(this.id);
    if (record === undefined) throw new WorkflowNotFound({ id: this.id, message: `no workflow run ${this.id}` });
    return record;
  }

  /** Cancel the run: running steps are cancelled, pending ones never start. */
  cancel(reason?: string): Promise<WorkflowRecord | undefined> {
    return this.troupe.cancelWorkflow(this.id, reason);
  }
}
