/**
 * Workflow hosting. A coordinator consumes step completions from TROUPE_STEPS (a durable
 * consumer shared by every coordinator) and advances the run: rebuild the workflow actor
 * from KV, take one transition, write it back with compare-and-set, then carry out what
 * changed. Any number may run and any may die: the state is only in KV, step task ids are
 * deterministic (a step is enqueued once), and a reconciliation pass finishes whatever a
 * dead coordinator (or client) left half-done.
 */
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { nuid } from "@nats-io/transport-node";
import type { Logger } from "pino";
import {
  advance,
  stepTaskId,
  type StepSettlement,
  type WorkflowEvent,
  type WorkflowRecord,
  type WorkflowStatus,
} from "../../machines/workflow.js";
import { TerminalStatuses, type TaskRecord } from "../../machines/task.js";
import { readRecord } from "../nats/records.js";
import { decodeJson, encodeJson } from "../nats/codec.js";
import { COORDINATOR_CONSUMER, eventSubject, kvSubject, STEPS_STREAM, stepsSubject, WORKFLOWS_BUCKET } from "../nats/topology.js";
import { untypedTask } from "../task.js";
import type { Troupe } from "../sdk/troupe.js";

const terminal: ReadonlySet<WorkflowStatus> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
export const isWorkflowTerminal = (status: WorkflowStatus) => terminal.has(status);

export const readWorkflow = async (troupe: Troupe, id: string): Promise<{ record: WorkflowRecord; revision: number } | undefined> => {
  const entry = await troupe.nats.workflows.get(id);
  if (entry === null || entry.operation !== "PUT") return undefined;
  const decoded = decodeJson(entry.value);
  return decoded.ok ? { record: decoded.value as WorkflowRecord, revision: entry.revision } : undefined;
};

/** Carry out what changed between two records of a run: enqueue, cancel, publish. */
export const carryOut = async (troupe: Troupe, before: WorkflowRecord | undefined, after: WorkflowRecord, log: Logger) => {
  const work: Array<Promise<unknown>> = [];
  for (const [name, step] of Object.entries(after.steps)) {
    const was = before?.steps[name];
    if (step.status === "RUNNING" && was?.status !== "RUNNING") {
      const def = after.definition.steps[name]!;
      work.push(
        troupe.enqueue(untypedTask(def.task, def.queue), step.input, {
          id: stepTaskId(after.id, name),
          notify: stepsSubject(after.id, name),
        }),
      );
    }
    if (step.status === "CANCELLED" && was?.status === "RUNNING" && was.taskId !== undefined) {
      work.push(troupe.cancel(was.taskId, `workflow ${after.id} ${after.status === "CANCELLED" ? "cancelled" : "failed fast"}`).catch(() => undefined));
    }
  }
  await Promise.all(work);
  const event = before?.status === after.status ? "progress" : after.status.toLowerCase();
  troupe.nc.publish(eventSubject("workflow", after.id, event), encodeJson(after));
  if (before?.status !== after.status) log.info({ workflowId: after.id, workflow: after.workflow, status: after.status }, "workflow transition");
};

/**
 * Enqueue once more the running dependents of `settled` (a no-op for those already
 * enqueued). Cancellations are not redone: a late completion of a failed run is normal and
 * must stay cheap, so a coordinator that dies while cancelling leaves those steps to finish.
 */
const redo = async (troupe: Troupe, record: WorkflowRecord, settled: ReadonlyArray<string>) => {
  const work: Array<Promise<unknown>> = [];
  for (const [name, step] of Object.entries(record.steps)) {
    const def = record.definition.steps[name]!;
    if (step.status === "RUNNING" && def.after.some((d) => settled.includes(d))) {
      work.push(troupe.enqueue(untypedTask(def.task, def.queue), step.input, { id: stepTaskId(record.id, name), notify: stepsSubject(record.id, name) }));
    }
  }
  await Promise.all(work);
};

/**
 * Apply events to a run: read, transition, compare-and-set, carry out. Retries on a lost
 * compare-and-set (another coordinator moved the run first). A batch of step completions
 * is one event, and one write. Returns the new record.
 */
export const applyEvent = async (troupe: Troupe, id: string, event: WorkflowEvent, log: Logger): Promise<WorkflowRecord | undefined> => {
  for (let i = 0; i < 50; i++) {
    const current = await readWorkflow(troupe, id);
    if (current === undefined) return undefined;
    const next = advance(current.record, event);
    if (JSON.stringify(next) === JSON.stringify(current.record)) {
      // Nothing new: a completion seen before, redelivered because whoever applied it died
      // before acknowledging. Redo what that transition had to carry out (idempotent).
      if (event.type === "STEPS_SETTLED") await redo(troupe, current.record, event.settled.map((s) => s.step));
      return current.record;
    }
    const written = await troupe.nats.publisher.compareAndSet(kvSubject(WORKFLOWS_BUCKET, id), encodeJson(next), current.revision);
    if (written === undefined) continue; // another coordinator moved the run first
    await carryOut(troupe, current.record, next, log);
    return next;
  }
  throw new Error(`workflow ${id} kept changing under this coordinator`);
};

/** Create a run RUNNING with its first steps, and enqueue them. */
export const startRun = async (
  troupe: Troupe,
  definition: { name: string; steps: WorkflowRecord["definition"]["steps"]; policy: WorkflowRecord["policy"] },
  input: unknown,
  log: Logger,
  id: string = nuid.next(),
): Promise<WorkflowRecord> => {
  const now = Date.now();
  const pending: WorkflowRecord = {
    id,
    workflow: definition.name,
    status: "PENDING",
    policy: definition.policy,
    input,
    definition: { steps: definition.steps },
    steps: Object.fromEntries(Object.keys(definition.steps).map((s) => [s, { status: "PENDING" as const }])),
    createdAt: new Date(now).toISOString(),
  };
  const running = advance(pending, { type: "START", at: now });
  await troupe.nats.publisher.publish(kvSubject(WORKFLOWS_BUCKET, id), encodeJson(running), { lastSubjectSequence: 0 });
  await carryOut(troupe, pending, running, log);
  return running;
};

export interface CoordinatorOptions {
  /** How often to look for runs left half-done (ms, default 30000; 0: never, not even at start). */
  readonly reconcileEvery?: number;
}

/** Consumes step completions and advances runs until `stop()`. */
export class Coordinator {
  private messages: ConsumerMessages | undefined;
  private readonly pending: JsMsg[] = [];
  private flushing: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly troupe: Troupe,
    private readonly log: Logger,
  ) {}

  static async start(troupe: Troupe, options: CoordinatorOptions = {}): Promise<Coordinator> {
    const coordinator = new Coordinator(troupe, troupe.log.child({ coordinator: nuid.next() }));
    const consumer = await troupe.nats.js.consumers.get(STEPS_STREAM, COORDINATOR_CONSUMER);
    coordinator.messages = await consumer.consume({ max_messages: 512 });
    const messages = coordinator.messages;
    coordinator.loop = (async () => {
      for await (const m of messages) coordinator.enqueueMessage(m);
    })().catch((err) => coordinator.log.warn({ err }, "coordinator stopped consuming"));
    const every = options.reconcileEvery ?? 30_000;
    if (every > 0) {
      await coordinator.reconcile();
      coordinator.timer = setInterval(() => void coordinator.reconcile(), every);
      coordinator.timer.unref();
    }
    coordinator.log.info("coordinator started");
    return coordinator;
  }

  /** Completions are applied in batches, one write per run per batch. */
  private enqueueMessage(m: JsMsg): void {
    this.pending.push(m);
    this.flushing ??= this.flush().finally(() => (this.flushing = undefined));
  }

  private async flush(): Promise<void> {
    while (this.pending.length > 0) {
      await new Promise((r) => setImmediate(r)); // let a burst gather
      const batch = this.pending.splice(0);
      const byRun = new Map<string, Array<{ m: JsMsg; settled: StepSettlement }>>();
      for (const m of batch) {
        // troupe.steps.<runId>.<step>.<taskId>
        const [, , runId, step] = m.subject.split(".");
        const decoded = decodeJson(m.data);
        const record = decoded.ok ? (decoded.value as TaskRecord) : undefined;
        if (runId === undefined || step === undefined || record === undefined || !TerminalStatuses.has(record.status)) {
          this.log.warn({ subject: m.subject }, "malformed step completion terminated");
          m.term();
          continue;
        }
        const list = byRun.get(runId) ?? [];
        list.push({ m, settled: settlement(step, record) });
        byRun.set(runId, list);
      }
      await Promise.all(
        [...byRun].map(async ([runId, items]) => {
          try {
            await applyEvent(this.troupe, runId, settledEvent(items.map((i) => i.settled)), this.log);
            for (const i of items) i.m.ack();
          } catch (err) {
            this.log.warn({ err, workflowId: runId }, "step completions not applied; they will be redelivered");
            for (const i of items) i.m.nak(500);
          }
        }),
      );
    }
  }

  /**
   * Finish what a dead coordinator or client left: RUNNING steps whose task was never
   * created are enqueued; ones whose task ended without a completion on record are applied.
   */
  async reconcile(): Promise<void> {
    try {
      const keys = await this.troupe.nats.workflows.keys();
      for await (const id of keys) {
        const run = await readWorkflow(this.troupe, id);
        if (run === undefined || isWorkflowTerminal(run.record.status)) continue;
        for (const [step, state] of Object.entries(run.record.steps)) {
          if (state.status !== "RUNNING" || state.taskId === undefined) continue;
          const task = await readRecord(this.troupe.nats.tasks, state.taskId);
          if (task === undefined) {
            const def = run.record.definition.steps[step]!;
            await this.troupe.enqueue(untypedTask(def.task, def.queue), state.input, { id: state.taskId, notify: stepsSubject(id, step) });
          } else if (TerminalStatuses.has(task.record.status)) {
            await applyEvent(this.troupe, id, settledEvent([settlement(step, task.record)]), this.log);
          }
        }
      }
    } catch (err) {
      this.log.warn({ err }, "reconciliation pass failed");
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.messages?.close().catch(() => undefined);
    await this.loop;
    await this.flushing;
  }
}

const settlement = (step: string, record: TaskRecord): StepSettlement => ({
  step,
  status: record.status as StepSettlement["status"],
  output: record.output,
  error: record.error === undefined ? undefined : { _tag: record.error._tag, message: record.error.message },
});

const settledEvent = (settled: StepSettlement[]): WorkflowEvent => ({ type: "STEPS_SETTLED", settled, at: Date.now() });
