/** The handle `troupe.start` returns: the run's id, its outputs (decoded), its record. */
import { inspect, type InspectOptionsStylized } from "node:util";
import { Cause, Exit } from "effect";
import type { WorkflowRecord } from "../../machines/records.js";
import { WorkflowFailed, WorkflowNotFound } from "../errors.js";
import { decodeOutput, type TaskDefinition } from "../task.js";
import { isPayloadRef } from "../store/payloads.js";
import { inspectHandle } from "../handle-inspect.js";
import { SharedWait, waitTimeout, type WaitOptions } from "./run.js";

/** What cancelling a run did. */
export interface WorkflowCancelResult {
  readonly id: string;
  readonly status: WorkflowRecord["status"];
  /** False when the run had already finished (it is left as it is). */
  readonly cancelled: boolean;
  readonly message: string;
  readonly record: WorkflowRecord;
}

/** What a run handle asks of its client. */
export interface WorkflowRunClient {
  getWorkflow(id: string): Promise<WorkflowRecord | undefined>;
  cancelWorkflow(id: string, reason?: string): Promise<WorkflowCancelResult>;
  /** A value with its large-payload references replaced by what they stand for. */
  resolvePayload(value: unknown): Promise<unknown>;
  /** Stop a wait every asker gave up on. */
  releaseWait(id: string): void;
}

export class WorkflowRun<O> {
  private readonly wait: SharedWait<WorkflowRecord>;

  constructor(
    private readonly client: WorkflowRunClient,
    readonly id: string,
    /** Starts the wait for the run's end: on the first ask. */
    start: () => Promise<WorkflowRecord>,
    /** The task definitions of the steps that named one: their outputs are decoded with its schema. */
    private readonly tasks: Readonly<Record<string, TaskDefinition>> = {},
    /** The workflow's name, when the handle was made with its definition. */
    readonly workflow?: string,
  ) {
    this.wait = new SharedWait(start, () => client.releaseWait(id), id, "workflow run");
  }

  /** `WorkflowRun { id: '…', workflow: 'etl' }`: what `console.log(run)` prints. */
  [inspect.custom](depth: number, options: InspectOptionsStylized, inspectFn: typeof inspect): string {
    return inspectHandle("WorkflowRun", { id: this.id, ...(this.workflow === undefined ? {} : { workflow: this.workflow }) }, depth, options, inspectFn);
  }

  /**
   * Every step's output by step name, decoded with its task's output schema where the
   * definition is known; rejects with `WorkflowFailed` when the run failed or was
   * cancelled, `ResultTimeout` when `timeout` passes first.
   */
  async result(options: WaitOptions = {}): Promise<O> {
    const record = await this.settledRecord(options);
    if (record.status === "COMPLETED") {
      const out: Record<string, unknown> = {};
      for (const [name, step] of Object.entries(record.steps)) {
        const task = this.tasks[name];
        const output = isPayloadRef(step.output) ? await this.client.resolvePayload(step.output) : step.output;
        if (task === undefined) {
          out[name] = output;
          continue;
        }
        const decoded = decodeOutput(task, output);
        if (Exit.isFailure(decoded)) throw Cause.squash(decoded.cause);
        out[name] = decoded.value;
      }
      return out as O;
    }
    throw new WorkflowFailed({
      id: record.id,
      status: record.status,
      message: record.error?.message ?? `workflow ${record.id} ${record.status}`,
      steps: Object.fromEntries(Object.entries(record.steps).map(([n, s]) => [n, { status: s.status, error: s.error }])),
    });
  }

  /** The terminal record, whatever the outcome; `ResultTimeout` when `timeout` passes first. */
  settledRecord(options: WaitOptions = {}): Promise<WorkflowRecord> {
    return this.wait.ask(waitTimeout(options));
  }

  /** The run's current record. */
  async get(): Promise<WorkflowRecord> {
    const record = await this.client.getWorkflow(this.id);
    if (record === undefined) throw new WorkflowNotFound({ id: this.id, message: `no workflow run ${this.id}` });
    return record;
  }

  /** Cancel the run: running steps are cancelled, pending ones never start; a finished run is left as it is. */
  cancel(reason?: string): Promise<WorkflowCancelResult> {
    return this.client.cancelWorkflow(this.id, reason);
  }
}
