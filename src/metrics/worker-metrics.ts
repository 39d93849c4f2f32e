/**
 * A worker's Prometheus metrics: each attempt it ran to an end (counted and timed, by task
 * type, queue and outcome), its running attempts, and the depth of the queues it serves.
 * The worker reports an attempt once, when its delivery settles (`attempted`): counters
 * only on the hot path; everything else is read when Prometheus scrapes.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { parseWorkSubject, taskSubject } from "../nats/topology.js";
import { MetricsServer, type MetricsOptions } from "./server.js";
import { queueDepthGauge } from "./queue-depth.js";

/** Attempt durations, in seconds: from a few milliseconds to ten minutes. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** A delivery's outcome as the metrics name it; those not listed (skipped) ran no attempt. */
const OUTCOMES: Readonly<Record<string, string>> = {
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
  retrying: "retried",
  lost: "lost",
  interrupted: "interrupted",
};

export interface WorkerMetricsDeps {
  readonly jsm: JetStreamManager;
  /** The task types the worker serves. */
  readonly tasks: Iterable<{ readonly name: string; readonly queue: string }>;
  /** Its attempts running now, and how many it runs at most. */
  readonly running: () => number;
  readonly concurrency: number;
  readonly log: Logger;
}

export class WorkerMetrics {
  private readonly attempts: Counter<"task" | "queue" | "outcome">;
  private readonly durations: Histogram<"task" | "queue" | "outcome">;
  /** Each type by the subject of its work at the default priority. */
  private readonly types = new Map<string, { readonly task: string; readonly queue: string }>();
  /** The labelled series of each type and outcome, made on first use. */
  private readonly series = new Map<string, { readonly count: Counter.Internal; readonly time: Histogram.Internal<"task" | "queue" | "outcome"> }>();

  private constructor(
    private readonly registry: Registry,
    deps: WorkerMetricsDeps,
  ) {
    for (const t of deps.tasks) this.types.set(taskSubject(t.queue, t.name), { task: t.name, queue: t.queue });
    const labelNames = ["task", "queue", "outcome"] as const;
    this.attempts = new Counter({
      name: "troupe_task_attempts_total",
      help: "Attempts this worker ran to an end, by task type, queue and outcome (completed, failed, cancelled, retried, lost, interrupted).",
      labelNames,
      registers: [registry],
    });
    this.durations = new Histogram({
      name: "troupe_task_attempt_duration_seconds",
      help: "How long this worker's attempts took, from delivery to settlement, by task type, queue and outcome.",
      labelNames,
      buckets: DURATION_BUCKETS,
      registers: [registry],
    });
    new Gauge({
      name: "troupe_tasks_running",
      help: "Attempts this worker runs now.",
      registers: [registry],
      collect() {
        this.set(deps.running());
      },
    });
    new Gauge({ name: "troupe_worker_concurrency", help: "Attempts this worker runs at most at once.", registers: [registry] }).set(deps.concurrency);
    queueDepthGauge(registry, deps.jsm, deps.log, (queue, task) => this.types.has(taskSubject(queue, task)));
  }

  private server: MetricsServer | undefined;

  /** The metrics, served on `options.port` until `stop()`. */
  static async start(options: MetricsOptions, deps: WorkerMetricsDeps): Promise<WorkerMetrics> {
    const metrics = new WorkerMetrics(new Registry(), deps);
    metrics.server = await MetricsServer.start(metrics.registry, options);
    return metrics;
  }

  /** The port the endpoint listens on. */
  get port(): number {
    return this.server!.port;
  }

  /** A delivery of a work message on `subject` settled with `outcome`, `ms` after it arrived. */
  attempted(subject: string, outcome: string, ms: number): void {
    const label = OUTCOMES[outcome];
    if (label === undefined) return;
    const base = parseWorkSubject(subject)?.base;
    if (base === undefined) return;
    const key = `${base}\0${label}`;
    let s = this.series.get(key);
    if (s === undefined) {
      const type = this.types.get(base);
      if (type === undefined) return;
      const labels = { task: type.task, queue: type.queue, outcome: label };
      s = { count: this.attempts.labels(labels), time: this.durations.labels(labels) };
      this.series.set(key, s);
    }
    s.count.inc();
    s.time.observe(ms / 1_000);
  }

  stop(): Promise<void> {
    return this.server?.stop() ?? Promise.resolve();
  }
}
