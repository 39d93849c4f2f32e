/**
 * A coordinator's Prometheus metrics: the step completions it applied and the workflow runs
 * they finished (by workflow and outcome), and the depth of every task queue.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { Counter, Registry } from "prom-client";
import { isWorkflowTerminal } from "../../machines/workflow.js";
import type { WorkflowRecord } from "../../machines/records.js";
import { MetricsServer, type MetricsOptions } from "./server.js";
import { queueDepthGauge } from "./queue-depth.js";

export class CoordinatorMetrics {
  private constructor(
    private readonly server: MetricsServer,
    private readonly steps: Counter<"workflow">,
    private readonly runs: Counter<"workflow" | "outcome">,
  ) {}

  /** The metrics, served on `options.port` until `stop()`. */
  static async start(options: MetricsOptions, jsm: JetStreamManager, log: Logger): Promise<CoordinatorMetrics> {
    const registry = new Registry();
    const steps = new Counter({
      name: "troupe_workflow_steps_applied_total",
      help: "Step completions this coordinator applied to their workflow runs, by workflow.",
      labelNames: ["workflow"],
      registers: [registry],
    });
    const runs = new Counter({
      name: "troupe_workflow_runs_finished_total",
      help: "Workflow runs finished by a step completion this coordinator applied, by workflow and outcome (completed, failed, cancelled).",
      labelNames: ["workflow", "outcome"],
      registers: [registry],
    });
    queueDepthGauge(registry, jsm, log);
    return new CoordinatorMetrics(await MetricsServer.start(registry, options), steps, runs);
  }

  /** The port the endpoint listens on. */
  get port(): number {
    return this.server.port;
  }

  /**
   * `count` step completions applied in one event at `at` (epoch ms), leaving the run as
   * `record`: the run finished by this event is stamped with that event's time.
   */
  applied(count: number, record: WorkflowRecord | undefined, at: number): void {
    if (record === undefined) return;
    this.steps.inc({ workflow: record.workflow }, count);
    if (isWorkflowTerminal(record.status) && record.finishedAt === new Date(at).toISOString()) {
      this.runs.inc({ workflow: record.workflow, outcome: record.status.toLowerCase() });
    }
  }

  stop(): Promise<void> {
    return this.server.stop();
  }
}
