/**
 * Workflow hosting. A coordinator consumes step completions from TROUPE_STEPS (a durable
 * consumer shared by every coordinator), settles each step from its task's record in the
 * bucket (the notice only says which to read), and advances the runs through the workflow
 * store, a batch of completions at a time. Any number may run and any may die: the state is only
 * in KV, step task ids are deterministic (a step is enqueued once), and a reconciliation
 * pass finishes whatever a dead coordinator (or client) left half-done.
 */
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { Scheduler } from "../schedule/scheduler.js";
import { startReaper } from "../worker/reaper.js";
import { isTransientJetStream, withRetryFor } from "../nats/retry.js";
import { nuid } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { isWorkflowTerminal, stepTaskId, type StepSettlement, type WorkflowEvent } from "../../machines/workflow.js";
import { Effect } from "effect";
import { TerminalStatuses, type TaskRecord } from "../../machines/records.js";
import type { NatsHandle } from "../nats/connection.js";
import { COORDINATOR_CONSUMER, STEPS_STREAM, stepsSubject } from "../nats/topology.js";
import { LeaderLease } from "../nats/leader.js";

/** The lease a reconciliation pass holds: one coordinator reconciles at a time. */
const RECONCILE_LEASE = "reconcile";
import type { TaskStore } from "../store/task-store.js";
import type { WorkflowStore } from "../store/workflow-store.js";
import { CoordinatorMetrics } from "../metrics/coordinator-metrics.js";
import { metricsOption, type MetricsOptions } from "../metrics/server.js";
import { InvalidOption } from "../errors.js";

export interface CoordinatorOptions {
  /** How often to look for runs left half-done (ms, default 30000; 0: never, not even at start). */
  readonly reconcileEvery?: number;
  /** Run a scheduler beside it (default true): schedules fire wherever a coordinator runs. */
  readonly scheduler?: boolean;
  /** Serve Prometheus metrics on `GET /metrics` at this port (0: a free one, see `metricsPort`). */
  readonly metrics?: MetricsOptions;
}

/** What settles a step: its task's record, from the bucket. */
type StepCompletion = Pick<TaskRecord, "status" | "output" | "error">;
/** Deliveries of a step completion whose task's record has not ended yet before it is left to reconciliation. */
const UNSETTLED_LOOKS = 5;

/** Consumes step completions and advances runs until `stop()`. */
export class Coordinator {
  private messages: ConsumerMessages | undefined;
  private readonly pending: JsMsg[] = [];
  private flushing: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  private readonly lease: LeaderLease;
  private stopped = false;

  private constructor(
    nats: NatsHandle,
    private readonly workflows: WorkflowStore,
    private readonly tasks: TaskStore,
    private readonly log: Logger,
  ) {
    this.lease = new LeaderLease(nats.leases, RECONCILE_LEASE, `c-${nuid.next()}`, log, false);
  }

  static async start(nats: NatsHandle, workflows: WorkflowStore, tasks: TaskStore, log: Logger, options: CoordinatorOptions = {}): Promise<Coordinator> {
    const coordinator = new Coordinator(nats, workflows, tasks, log.child({ coordinator: nuid.next() }));
    if (options.metrics !== undefined) {
      const metrics = metricsOption(options.metrics, (message) => new InvalidOption({ message: `coordinator: ${message}` }));
      coordinator.metrics = await CoordinatorMetrics.start(metrics, nats.jsm, coordinator.log);
    }
    if (options.scheduler !== false) coordinator.scheduler = Scheduler.start(nats, tasks, log);
    // Tasks whose deliveries ran out are failed by coordinators too: with only workers limited
    // to their queues (which may not read the work stream), someone must.
    try {
      coordinator.reaper = await startReaper(nats, tasks, coordinator.log);
    } catch (e) {
      await coordinator.stop();
      throw e;
    }
    try {
      // Started through a passing unavailability (an election, a node back from a pause), for `submitRetryFor`.
      coordinator.messages = await withRetryFor(
        nats.nc,
        async () => (await nats.js.consumers.get(STEPS_STREAM, COORDINATOR_CONSUMER)).consume({ max_messages: 512 }),
        isTransientJetStream,
        nats.submitRetryFor,
      );
    } catch (e) {
      // Nothing of a coordinator that did not start keeps running.
      await coordinator.stop();
      throw e;
    }
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
    coordinator.log.info({ metricsPort: coordinator.metrics?.port }, "coordinator started");
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
      const checked = await Promise.all(batch.map(async (m) => ({ m, verdict: await this.verify(m) })));
      for (const { m, verdict } of checked) {
        if ("again" in verdict) {
          m.nak(verdict.again);
          continue;
        }
        if ("refused" in verdict) {
          this.log.warn({ subject: m.subject, reason: verdict.refused }, "step completion terminated");
          m.term();
          continue;
        }
        const list = byRun.get(verdict.runId) ?? [];
        list.push({ m, settled: settlement(verdict.step, verdict.record) });
        byRun.set(verdict.runId, list);
      }
      await Promise.all(
        [...byRun].map(async ([runId, items]) => {
          try {
            const event = settledEvent(items.map((i) => i.settled));
            const applied = await this.workflows.apply(runId, event, this.log);
            this.metrics?.applied(items.length, applied, event.at);
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
   * A step completion (`troupe.steps.<runId>.<step>.<taskId>`) is a wake-up, not a result: what
   * settles the step is its task's record as the bucket holds it, read here, whose id must be
   * the run's step's task id and which must have ended. Anyone who may publish a notice (every
   * worker) could otherwise settle any run's step with an output of their choosing. A record
   * not ended yet (a replica behind) is looked at again a few times, then left to reconciliation.
   */
  private async verify(m: JsMsg): Promise<{ readonly runId: string; readonly step: string; readonly record: StepCompletion } | { readonly again: number } | { readonly refused: string }> {
    const [, , runId, step, taskId, ...rest] = m.subject.split(".");
    if (runId === undefined || step === undefined || rest.length > 0 || taskId !== stepTaskId(runId, step)) return { refused: "not the run's step's task" };
    const read = await Effect.runPromise(Effect.result(this.tasks.read(taskId)));
    if (read._tag === "Failure") return read.failure._tag === "NatsFailure" ? { again: 500 } : { refused: read.failure.message };
    const record = read.success?.record;
    if (record !== undefined && record.id === taskId && record.notify === stepsSubject(runId, step) && TerminalStatuses.has(record.status)) return { runId, step, record };
    if (m.info.deliveryCount < UNSETTLED_LOOKS) return { again: 1_000 };
    return { refused: record === undefined ? "its task has no record" : `its task's record is ${record.status}, not ended, or not this step's` };
  }

  /**
   * Finish what a dead coordinator or client left, in the runs not finished yet (only
   * those: finished runs are never read again): RUNNING steps whose task was never created
   * are enqueued; ones whose task ended without a completion on record are applied; a run
   * that ended but is still listed open is closed.
   */
  async reconcile(): Promise<void> {
    // One pass at a time here, and one coordinator at a time in all (the `reconcile` lease,
    // renewed between runs): N coordinators do not each read every open run.
    if (this.reconciling !== undefined) return this.reconciling;
    this.reconciling = this.reconcilePass().finally(() => (this.reconciling = undefined));
    return this.reconciling;
  }

  private reconciling: Promise<void> | undefined;

  private async reconcilePass(): Promise<void> {
    if (!(await this.lease.hold().catch(() => false))) return;
    try {
      let ids: string[];
      try {
        ids = await this.workflows.openIds();
      } catch (err) {
        this.log.warn({ err }, "reconciliation pass failed");
        return;
      }
      for (const id of ids) {
        if (this.stopped) return;
        await this.lease.hold().catch(() => false);
        try {
          await this.reconcileRun(id);
        } catch (err) {
          // One run's trouble (an unreadable record) does not stop the others'.
          this.log.warn({ err, workflowId: id }, "reconciliation of a run failed");
        }
      }
    } finally {
      // The lease would lapse before the next pass anyway (it lives 5 s): given up for the next one.
      await this.lease.release();
    }
  }

  private async reconcileRun(id: string): Promise<void> {
    const run = await this.workflows.read(id);
    if (run === undefined || isWorkflowTerminal(run.record.status)) {
      // Ended, or never written (its client died before): no longer open. A key younger than
      // a minute with no run may be a start in flight: left to the next pass.
      if (run !== undefined || (await this.workflows.openSince(id)) > 60_000) await this.workflows.closed(id, run?.record);
      return;
    }
    for (const [step, state] of Object.entries(run.record.steps)) {
      if (state.status !== "RUNNING" || state.taskId === undefined) continue;
      const task = await this.tasks.get(state.taskId);
      if (task === undefined) await this.workflows.enqueueStep(run.record, step, this.log);
      else if (TerminalStatuses.has(task.record.status)) {
        await this.workflows.apply(id, settledEvent([settlement(step, task.record)]), this.log);
      }
    }
  }

  /** The scheduler running beside this coordinator. */
  scheduler: Scheduler | undefined;

  /** The Prometheus endpoint (`metrics`), when asked for. */
  private metrics: CoordinatorMetrics | undefined;
  private reaper: { stop: () => Promise<void> } | undefined;

  /** The port its metrics are served on (`metrics: { port }`; the one picked for port 0). */
  get metricsPort(): number | undefined {
    return this.metrics?.port;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.reconciling;
    await this.scheduler?.stop();
    await this.reaper?.stop();
    clearInterval(this.timer);
    await this.messages?.close().catch(() => undefined);
    await this.loop;
    await this.flushing;
    await this.metrics?.stop();
  }
}

const settlement = (step: string, record: StepCompletion): StepSettlement => ({
  step,
  status: record.status as StepSettlement["status"],
  output: record.output,
  error: record.error === undefined ? undefined : { _tag: record.error._tag, message: record.error.message },
});

const settledEvent = (settled: StepSettlement[]): WorkflowEvent => ({ type: "STEPS_SETTLED", settled, at: Date.now() });
