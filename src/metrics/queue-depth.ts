/**
 * `troupe_queue_depth{task,queue}`: the work waiting per task type, read from JetStream
 * (its consumers' `num_pending`) when Prometheus scrapes, never on the hot path.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Logger } from "pino";
import { Gauge, type Registry } from "prom-client";
import { readBacklog } from "../nats/backlog.js";

/** The gauge, in `registry`; `serves` keeps the types it reports (every type when absent). */
export const queueDepthGauge = (
  registry: Registry,
  jsm: JetStreamManager,
  log: Logger,
  serves?: (queue: string, task: string) => boolean,
): Gauge<"task" | "queue"> =>
  new Gauge({
    name: "troupe_queue_depth",
    help: "Tasks waiting to be delivered, by task type and queue (its consumers' num_pending), read at scrape time.",
    labelNames: ["task", "queue"],
    registers: [registry],
    async collect() {
      this.reset();
      try {
        for (const t of (await readBacklog(jsm)).values()) {
          if (serves === undefined || serves(t.queue, t.task)) this.set({ task: t.task, queue: t.queue }, t.waiting);
        }
      } catch (err) {
        // NATS away: the scrape goes on without the depths.
        log.warn({ err }, "queue depth not read for a metrics scrape");
      }
    },
  });
