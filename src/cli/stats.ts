/**
 * `troupe stats [--watch] [--json]`: `troupe.stats()` as a table (or JSON). With `--watch`
 * it redraws every 2 s until Ctrl-C; its rates come from the counts' deltas over the last
 * minute (seeded by the first read of the last minute), so a frame reads no index entry.
 */
import type { Troupe } from "../sdk/troupe.js";
import type { Rates, TaskTypeStats, TroupeStats, TypeCounts } from "../sdk/stats.js";

const REDRAW_MS = 2_000;
const MINUTE_MS = 60_000;

/** One frame's ended counts: by `<queue>\0<task>`, and `""` for the totals. */
interface Sample {
  readonly at: number;
  readonly counts: ReadonlyMap<string, Rates>;
}

const keyOf = (t: TaskTypeStats) => `${t.queue}\0${t.task}`;

const sampleOf = (stats: TroupeStats, at: number, minus?: (key: string) => Rates | undefined): Sample => {
  const counts = new Map<string, Rates>();
  const put = (key: string, c: TypeCounts) => {
    const m = minus?.(key);
    counts.set(key, { completed: c.completed - (m?.completed ?? 0), failed: c.failed - (m?.failed ?? 0) });
  };
  for (const t of stats.types) put(keyOf(t), t);
  put("", stats.totals);
  return { at, counts };
};

/** Rates per minute between the oldest and newest samples kept (retention removing entries never makes one negative). */
const withRates = (stats: TroupeStats, samples: ReadonlyArray<Sample>): TroupeStats => {
  const first = samples[0]!;
  const last = samples[samples.length - 1]!;
  const span = Math.max(1, last.at - first.at);
  const rate = (key: string): Rates => {
    const a = first.counts.get(key);
    const b = last.counts.get(key);
    const per = (x: number | undefined, y: number | undefined) => Math.max(0, Math.round(((y ?? 0) - (x ?? 0)) * (MINUTE_MS / span) * 10) / 10);
    return { completed: per(a?.completed, b?.completed), failed: per(a?.failed, b?.failed) };
  };
  return { ...stats, types: stats.types.map((t) => ({ ...t, perMinute: rate(keyOf(t)) })), totals: { ...stats.totals, perMinute: rate("") } };
};

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
    // The counts a minute before the first read, from its rates: every frame's rates span a minute.
    const firstRates = new Map(first.types.map((t) => [keyOf(t), t.perMinute]));
    const before = sampleOf(first, firstAt - MINUTE_MS, (key) => (key === "" ? first.totals.perMinute : firstRates.get(key)));
    const samples: Sample[] = [before, sampleOf(first, firstAt)];
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([stopped.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), REDRAW_MS)))]);
      clearTimeout(timer);
      if (!next) return;
      const stats = await troupe.stats({ rates: false });
      const now = Date.now();
      samples.push(sampleOf(stats, now));
      while (samples.length > 2 && samples[1]!.at <= now - MINUTE_MS) samples.shift();
      print(withRates(stats, samples));
    }
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
};
