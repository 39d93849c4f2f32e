/**
 * The workflow store: the only code that writes a workflow run (KV `troupe-workflows`).
 * A run changes one way: read it (decoded), take one transition of the pure workflow
 * machine (`advance`), compare-and-set, then carry out the difference between the two
 * records: enqueue the steps that became RUNNING, cancel the ones that became CANCELLED,
 * and, once it ended, store its TROUPE_INDEX entry (acknowledged, message id `<id>:<status>`)
 * and remove its `troupe-open-runs` key. The write is the run's event: the bucket keeps its
 * revisions and republishes each on `troupe.events.workflow.<id>`. Clients (start, cancel)
 * and coordinators (step completions, reconciliation) all come through here.
 */
import { Effect } from "effect";
import { nuid } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { advance, isWorkflowTerminal, stepTaskId, type WorkflowEvent } from "../../machines/workflow.js";
import { WorkflowRecord as WorkflowRecordSchema, type WorkflowRecord } from "../../machines/records.js";
import { Internal, NatsFailure, Serialization } from "../errors.js";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { bucketKeys } from "../nats/bucket.js";
import type { NatsHandle } from "../nats/connection.js";
import { compareAndSet } from "../nats/compare-and-set.js";
import { permissionDenied } from "../nats/permissions.js";
import { kvSubject, OPEN_RUNS_BUCKET, stepsSubject, workflowIndexSubject, WORKFLOWS_BUCKET } from "../nats/topology.js";
import { publishRetried } from "../nats/publisher.js";
import { traceStart, type TraceCarrier } from "../trace.js";
import { cancelTask } from "./cancel.js";
import type { TaskStore } from "./task-store.js";

export interface StoredRun {
  readonly record: WorkflowRecord;
  readonly revision: number;
}

/** What a run is made from: a workflow definition's name, steps and policy. */
export type RunDefinition = Pick<WorkflowRecord, "policy"> & { readonly name: string; readonly steps: WorkflowRecord["definition"]["steps"] };


/**
 * Whether a transition changed the run: its status or a step's. Every change the machine
 * makes moves a status (a step settles, is scheduled, skipped or cancelled; the run ends),
 * so this is enough, and far cheaper than comparing two serialised runs of many steps.
 */
const changed = (before: WorkflowRecord, after: WorkflowRecord): boolean =>
  before.status !== after.status || Object.entries(after.steps).some(([name, step]) => before.steps[name]?.status !== step.status);

/** Runs whose last write a store keeps, to apply the next change without reading the run back. */
const WRITTEN_KEPT = 256;

export class WorkflowStore {
  constructor(
    private readonly nats: NatsHandle,
    private readonly tasks: TaskStore,
  ) {}

  /** The run and its revision, or `undefined`; `Internal` when the stored run cannot be read. */
  async read(id: string): Promise<StoredRun | undefined> {
    const entry = await this.nats.workflows.get(id);
    if (entry === null || entry.operation !== "PUT") return undefined;
    const decoded = decodeWith(WorkflowRecordSchema, entry.value, "workflow record");
    if (!decoded.ok) throw new Internal({ message: `the stored record of workflow run ${id} is unreadable: ${decoded.error.message}` });
    return { record: decoded.value, revision: entry.revision };
  }

  /** The ids of the runs not finished yet (`troupe-open-runs`): what reconciliation reads, not every run kept. */
  async openIds(): Promise<string[]> {
    // From the bucket's stream info, not a listing (a consumer the server keeps for minutes):
    // a closed run's key holds a delete marker until retention purges it, and is left out.
    const keys = await bucketKeys(this.nats.jsm, OPEN_RUNS_BUCKET);
    const open = await Promise.all(keys.map(async (id) => ((await this.nats.openRuns.get(id))?.operation === "PUT" ? id : undefined)));
    return open.filter((id) => id !== undefined);
  }

  /** How long ago the run's open key was written (ms; 0 when there is none). */
  async openSince(id: string): Promise<number> {
    const entry = await this.nats.openRuns.get(id);
    return entry === null || entry.operation !== "PUT" ? 0 : Date.now() - entry.created.getTime();
  }

  /**
   * A run that ended: its TROUPE_INDEX entry published (once per status, by message id) and
   * its open-runs key removed. Called after the terminal write, and again by reconciliation
   * for a run whose writer died in between (or a key whose run was never written).
   */
  /** Whether this identity may purge an open-runs key (until the server first refuses it). */
  private mayPurge = true;

  async closed(id: string, record: WorkflowRecord | undefined): Promise<void> {
    if (record !== undefined) {
      // Acknowledged before the key goes: the open key is what tells reconciliation to do it again.
      const entry = encodeJson({ id, at: Date.now() });
      await publishRetried(this.nats, workflowIndexSubject(record.status, record.workflow), entry, { msgId: `${id}:${record.status}` });
    }
    // A purge of the key's subject leaves no delete marker behind, one per run for ever. Under
    // roles only the retention identity purges: a delete marker then, which its sweep removes.
    if (this.mayPurge) {
      const purged = await this.nats.jsm.streams.purge(`KV_${OPEN_RUNS_BUCKET}`, { filter: kvSubject(OPEN_RUNS_BUCKET, id) }).then(
        () => true,
        (e: unknown) => {
          if (permissionDenied(e) === undefined) throw e;
          this.mayPurge = false;
          return false;
        },
      );
      if (purged) return;
    }
    const entry = await this.nats.openRuns.get(id);
    if (entry?.operation === "PUT") await this.nats.openRuns.delete(id);
  }

  /** Create a run RUNNING with its first steps, and enqueue them. */
  start(definition: RunDefinition, input: unknown, log: Logger, id: string = nuid.next()): Promise<WorkflowRecord> {
    // Traced as a `troupe.start` span; the run keeps its context, for its steps' submits.
    return traceStart(definition.name, id, (trace) => this.startRun(definition, input, log, id, trace));
  }

  private async startRun(definition: RunDefinition, input: unknown, log: Logger, id: string, trace: TraceCarrier | undefined): Promise<WorkflowRecord> {
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
      ...(trace === undefined ? {} : { trace }),
    };
    const running = advance(pending, { type: "START", at: now });
    const payload = encodeJson(running);
    // Open before it exists: a client dying in between leaves a key reconciliation removes.
    await this.nats.openRuns.put(id, encodeJson({ createdAt: pending.createdAt }));
    const written = await this.write(id, payload, 0);
    if (written === undefined) throw new NatsFailure({ message: `workflow run ${id} exists already` });
    this.remember(id, { record: running, revision: written });
    await this.carryOut(pending, running, log);
    return running;
  }

  /**
   * Apply an event to a run: read, transition, compare-and-set, carry out; again after a
   * lost compare-and-set (another coordinator moved the run first). A batch of step
   * completions is one event and one write. Resolves with the run's record (unchanged when
   * the event changes nothing), or `undefined` when there is no such run.
   */
  async apply(id: string, event: WorkflowEvent, log: Logger): Promise<WorkflowRecord | undefined> {
    for (let i = 0; i < 50; i++) {
      // The run as this store last wrote it, if it did: the compare-and-set tells whether
      // that is still the stored one, which saves reading and decoding a large run per batch.
      const remembered = i === 0 ? this.written.get(id) : undefined;
      const current = remembered ?? (await this.read(id));
      if (current === undefined) return undefined;
      const next = advance(current.record, event);
      if (!changed(current.record, next)) {
        // Only the stored run can say nothing is new: the remembered one may be stale.
        if (remembered !== undefined) continue;
        // Nothing new: a completion seen before, redelivered because whoever applied it died
        // before acknowledging. Redo what that transition had to carry out (idempotent).
        if (event.type === "STEPS_SETTLED") await this.redo(current.record, event.settled.map((s) => s.step), log);
        return current.record;
      }
      const payload = encodeJson(next);
      const revision = await this.write(id, payload, current.revision);
      if (revision === undefined) continue;
      this.remember(id, isWorkflowTerminal(next.status) ? undefined : { record: next, revision });
      await this.carryOut(current.record, next, log);
      return next;
    }
    throw new NatsFailure({ message: `workflow run ${id} kept changing; gave up applying ${event.type}` });
  }

  /**
   * Enqueue a RUNNING step's task (a no-op when it exists: its id is deterministic). A step
   * whose input cannot be sent (over the payload limit) fails, with `Serialization`.
   */
  async enqueueStep(record: WorkflowRecord, step: string, log: Logger): Promise<void> {
    try {
      await this.enqueueTask(record, step);
    } catch (e) {
      if (!(e instanceof Serialization)) throw e;
      const failed = { step, status: "FAILED" as const, error: { _tag: "Serialization", message: e.message } };
      await this.apply(record.id, { type: "STEPS_SETTLED", settled: [failed], at: Date.now() }, log);
    }
  }

  private enqueueTask(record: WorkflowRecord, step: string): Promise<unknown> {
    const def = record.definition.steps[step]!;
    return this.tasks.enqueue({
      id: stepTaskId(record.id, step),
      task: def.task,
      queue: def.queue,
      input: record.steps[step]?.input,
      notify: stepsSubject(record.id, step),
      unique: true,
      trace: record.trace,
    });
  }

  /** The new revision, or `undefined` when the run moved past `expected`. */
  private async write(id: string, payload: Uint8Array, expected: number): Promise<number | undefined> {
    const cas = compareAndSet(this.nats, { handle: this.nats.workflows, bucket: WORKFLOWS_BUCKET }, id, payload, expected);
    const written = await Effect.runPromise(Effect.result(cas));
    if (written._tag === "Success") return written.success;
    this.written.delete(id);
    if (written.failure._tag === "Fenced") return undefined;
    throw written.failure;
  }

  /** The runs this store wrote last, newest last; a few hundred at most. */
  private readonly written = new Map<string, StoredRun>();

  private remember(id: string, run: StoredRun | undefined): void {
    this.written.delete(id);
    if (run === undefined) return;
    this.written.set(id, run);
    if (this.written.size > WRITTEN_KEPT) this.written.delete(this.written.keys().next().value!);
  }

  /** Carry out what changed between two records of a run: enqueue, cancel, close. */
  private async carryOut(before: WorkflowRecord, after: WorkflowRecord, log: Logger): Promise<void> {
    const work: Array<Promise<unknown>> = [];
    for (const [name, step] of Object.entries(after.steps)) {
      const was = before.steps[name];
      if (step.status === "RUNNING" && was?.status !== "RUNNING") work.push(this.enqueueStep(after, name, log));
      if (step.status === "CANCELLED" && was?.status === "RUNNING" && was.taskId !== undefined) {
        const reason = `workflow ${after.id} ${after.status === "CANCELLED" ? "cancelled" : "failed fast"}`;
        work.push(cancelTask(this.nats.nc, this.tasks, was.taskId, reason).catch(() => undefined));
      }
    }
    await Promise.all(work);
    if (isWorkflowTerminal(after.status) && !isWorkflowTerminal(before.status)) {
      await this.closed(after.id, after).catch((err: unknown) => log.warn({ err, workflowId: after.id }, "finished run left open; reconciliation closes it"));
    }
    if (before.status !== after.status) log.info({ workflowId: after.id, workflow: after.workflow, status: after.status }, "workflow transition");
  }

  /**
   * Enqueue once more the running dependents of `settled` (a no-op for those already
   * enqueued). Cancellations are not redone: a late completion of a failed run is normal and
   * must stay cheap, so a coordinator that dies while cancelling leaves those steps to finish.
   */
  private async redo(record: WorkflowRecord, settled: ReadonlyArray<string>, log: Logger): Promise<void> {
    if (isWorkflowTerminal(record.status)) return;
    const work: Array<Promise<unknown>> = [];
    for (const [name, step] of Object.entries(record.steps)) {
      const def = record.definition.steps[name]!;
      if (step.status === "RUNNING" && def.after.some((d) => settled.includes(d))) work.push(this.enqueueStep(record, name, log));
    }
    await Promise.all(work);
  }
}
