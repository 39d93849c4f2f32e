/** Limits across workers, against a real server and worker processes. */
import { afterEach, describe, expect, it } from "vitest";
import { defineTask, InvalidDefinition, InvalidOption, Schema } from "../../src/index.js";
import { limited } from "../fixtures/limit-tasks.js";
import { killCliChildren, startWorkerProcess } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(async () => {
  killCliChildren();
  await closeAll();
});

/** A task that notes when each attempt runs, by key, and how many run at once. */
const tracked = (name: string, limits: Parameters<typeof defineTask>[0]["limits"], ms: number) => {
  const spans: Array<{ key: string; start: number; end: number }> = [];
  let running = 0;
  let most = 0;
  const task = defineTask({
    name,
    input: Schema.Struct({ key: Schema.String }),
    output: Schema.Null,
    limits,
    handler: async ({ key }) => {
      running++;
      most = Math.max(most, running);
      const start = performance.now();
      await new Promise((r) => setTimeout(r, ms));
      spans.push({ key, start, end: performance.now() });
      running--;
      return null;
    },
  });
  return { task, spans, most: () => most };
};

const overlaps = (spans: ReadonlyArray<{ start: number; end: number }>) =>
  spans.some((a, i) => spans.some((b, j) => i !== j && a.start < b.end && b.start < a.end));

describe("limits", () => {
  it("a rate limit of 5/s holds across two worker processes", { timeout: 120_000 }, async () => {
    const troupe = await connect(server());
    await Promise.all([
      startWorkerProcess(server().url, "test/fixtures/limit-tasks.ts", 8),
      startWorkerProcess(server().url, "test/fixtures/limit-tasks.ts", 8),
    ]);
    const runs = await Promise.all(Array.from({ length: 15 }, (_, n) => troupe.submit(limited, { n })));
    expect(await Promise.all(runs.map((r) => r.result({ timeout: 60_000 })))).toEqual(Array.from({ length: 15 }, (_, n) => n));
    const starts = (await Promise.all(runs.map((r) => r.get()))).map((r) => Date.parse(r.startedAt ?? "")).sort((a, b) => a - b);
    // At most 5 starts in any window of a second: the recorded starts come a little after the
    // limiter's admissions (a write away, longer on a loaded machine), hence the margin;
    // unlimited, the 15 would start within a few milliseconds of each other.
    for (let i = 5; i < starts.length; i++) expect(starts[i]! - starts[i - 5]!).toBeGreaterThanOrEqual(800);
    expect(starts.at(-1)! - starts[0]!).toBeGreaterThanOrEqual(1_600);
    expect(new Set((await Promise.all(runs.map((r) => r.get()))).map((r) => r.workerId)).size).toBe(2);
  });

  it("perKey: 1 never overlaps two attempts of one key while other keys run, and keys take turns", async () => {
    const troupe = await connect(server());
    const { task, spans } = tracked("limit.key", { perKey: 1 }, 40);
    const many = await Promise.all(Array.from({ length: 30 }, () => troupe.submit(task, { key: "big" }, { key: "big" })));
    const few = await Promise.all(Array.from({ length: 3 }, () => troupe.submit(task, { key: "small" }, { key: "small" })));
    await Promise.all([troupe.worker({ tasks: [task], concurrency: 4 }), troupe.worker({ tasks: [task], concurrency: 4 })]);
    await Promise.all([...many, ...few].map((r) => r.result({ timeout: 60_000 })));
    const big = spans.filter((s) => s.key === "big");
    const small = spans.filter((s) => s.key === "small");
    expect(overlaps(big)).toBe(false);
    expect(overlaps(small)).toBe(false);
    // The two keys ran side by side, and the small one was not kept waiting behind the big one.
    expect(small.some((s) => big.some((b) => s.start < b.end && b.start < s.end))).toBe(true);
    const lastSmall = Math.max(...small.map((s) => s.end));
    expect(big.filter((b) => b.start < lastSmall).length).toBeLessThan(10);
    expect((await few[0]!.get()).key).toBe("small");
  });

  it("concurrency: at most that many attempts of the type at once across workers", async () => {
    const troupe = await connect(server());
    const { task, most } = tracked("limit.conc", { concurrency: 2 }, 30);
    await Promise.all([troupe.worker({ tasks: [task], concurrency: 4 }), troupe.worker({ tasks: [task], concurrency: 4 })]);
    const runs = await Promise.all(Array.from({ length: 20 }, () => troupe.submit(task, { key: "-" })));
    await Promise.all(runs.map((r) => r.result({ timeout: 60_000 })));
    expect(most()).toBe(2);
  });

  it("refuses bad limits and keys, naming them", async () => {
    const troupe = await connect(server());
    const define = (limits: unknown) => () => defineTask({ name: "x", input: Schema.Null, output: Schema.Null, handler: () => null, limits: limits as never });
    expect(define({ concurrency: 0 })).toThrow(InvalidDefinition);
    expect(define({ rate: { limit: 5 } })).toThrow(/limits.rate.per/);
    expect(define({ perkey: 1 })).toThrow(/unknown option "limits.perkey"/);
    const { task } = tracked("limit.bad", { perKey: 1 }, 1);
    await expect(troupe.submit(task, { key: "a" }, { key: "no spaces" })).rejects.toBeInstanceOf(InvalidOption);
  });
});
