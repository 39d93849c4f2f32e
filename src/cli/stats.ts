/**
 * `troupe stats [--watch] [--json]`: `troupe.stats()` as a table (or JSON). With `--watch`
 * it redraws every 2 s until Ctrl-C; its rates come from the counts' deltas over the last
 * minute (seeded by the first read of the last minute), so a frame reads no index entry.
 */
import type { Troupe } from "../sdk/troupe.js";
import { RateWindow, type TroupeStats, type TypeCounts } from "../sdk/stats.js";

const REDRAW_MS = 2_000;

const rate = (n: number | undefined) => (n === undefined ? "-" : n >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1));

/** The stats as a table, the totals, and the live workers. */
export const renderStats = (stats: TroupeStats): string => {
  const header = ["TASK", "QUEUE", "WAITING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "RETRIED", "DONE/MIN", "FAILED/MIN", "WORKERS"];
  const cells = (name: string, queue: string, c: TypeCounts) => [
    name,
    queue,
    ...[c.waiting, c.running, c.completed, c.failed, c.cancelled, c.retried].map(String),
    rate(c.perMinute?.completed),
    rate(c.perMinute?.failed),
    String(c.workers),
  ];
  const rows = [header, ...stats.types.map((t) => cells(t.task, t.queue, t)), cells("total", "", stats.totals)];
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((cell, i) => (i < 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ").trimEnd();
  const out = [`troupe stats at ${stats.at}`, ...rows.map(line)];
  out.push("(completed, failed, cancelled, retried: within the index's retention; running: delivered, not yet settled)");
  out.push(`live workers: ${stats.workers.length}`);
  for (const w of stats.workers) {
    out.push(`  ${w.id}  ${w.state}  ${w.hostname}:${w.pid}  running ${w.running}/${w.concurrency}  processed ${w.processed}  failed ${w.failed}  tasks ${w.tasks.map((t) => t.name).join(",")}`);
  }
  return `${out.join("\n")}\n`;
};

/** Print the stats once, or with `watch` every 2 s until SIGINT/SIGTERM. */
export const showStats = async (troupe: Troupe, options: { readonly watch: boolean; readonly json: boolean }): Promise<void> => {
  const print = (stats: TroupeStats) => {
    if (options.json) process.stdout.write(options.watch ? `${JSON.stringify(stats)}\n` : `${JSON.stringify(stats, null, 2)}\n`);
    else process.stdout.write(`${options.watch && process.stdout.isTTY ? "\x1b[H\x1b[2J" : ""}${renderStats(stats)}${options.watch ? "\n" : ""}`);
  };
  const first = await troupe.stats();
  const firstAt = Date.now();
  print(first);
  if (!options.watch) return;
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    const window = new RateWindow(first, firstAt);
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([stopped.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), REDRAW_MS)))]);
      clearTimeout(timer);
      if (!next) return;
      const stats = await troupe.stats({ rates: false });
      print(window.add(stats, Date.now()));
    }
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
};
