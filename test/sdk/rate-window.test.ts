/**
 * `RateWindow`: the last minute's rates of repeated stats reads (`troupe stats --watch`, the
 * inspector's queues), from the ended counts' deltas, seeded by a first read's own rates.
 */
import { describe, expect, it } from "vitest";
import { RateWindow, type TroupeStats } from "../../src/sdk/stats.js";

const MINUTE = 60_000;
const counts = { waiting: 0, running: 0, cancelled: 0, retried: 0, workers: 1 };
const read = (completed: number, failed: number, perMinute?: { completed: number; failed: number }): TroupeStats => ({
  at: new Date(0).toISOString(),
  types: [{ task: "math.add", queue: "default", ...counts, completed, failed, ...(perMinute === undefined ? {} : { perMinute }) }],
  totals: { ...counts, completed, failed, ...(perMinute === undefined ? {} : { perMinute }) },
  workers: [],
});

describe("RateWindow", () => {
  it("seeds from the first read's rates, then counts what ended over the last minute only", () => {
    const t0 = 10 * MINUTE;
    // 100 done and 5 failed, of which 30 and 2 in the minute before the first read.
    const window = new RateWindow(read(100, 5, { completed: 30, failed: 2 }), t0);
    // Half a minute on, 15 more done: over the 90 s since the seed's start, 45 done and 2 failed.
    const half = window.add(read(115, 5), t0 + MINUTE / 2);
    expect(half.types[0]!.perMinute).toEqual({ completed: 30, failed: 1.3 });
    // 80 s on, 10 more: the seed's start is over a minute behind and is dropped; 25 done in the 80 s since the first read.
    const later = window.add(read(125, 5), t0 + (4 * MINUTE) / 3);
    expect(later.types[0]!.perMinute).toEqual({ completed: 18.8, failed: 0 });
    expect(later.totals.perMinute).toEqual({ completed: 18.8, failed: 0 });
    // Two idle minutes on, the window holds nothing that ended.
    expect(window.add(read(125, 5), t0 + 4 * MINUTE).types[0]!.perMinute).toEqual({ completed: 0, failed: 0 });
    // Retention removing index entries lowers the counts: a rate is never negative.
    expect(window.add(read(50, 1), t0 + 5 * MINUTE).types[0]!.perMinute).toEqual({ completed: 0, failed: 0 });
  });
});
