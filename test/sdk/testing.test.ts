import { Effect } from "effect";
import { describe, expect, it, vi } from "vitest";
import { defineTask, Execution, InvalidInput, Schema, Timeout } from "../../src/index.js";
import { runTask } from "../../src/testing/index.js";

const double = defineTask({
  name: "double",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }, ctx) => {
    ctx.heartbeat({ at: n });
    if (n < 0) throw new Error("negative");
    return n * 2;
  },
});

describe("troupe/testing runTask", () => {
  it("runs a handler alone with the task's schemas and typed errors", async () => {
    const beats = vi.fn();
    expect(await runTask(double, { n: 21 }, { onHeartbeat: beats })).toBe(42);
    expect(beats).toHaveBeenCalledWith({ at: 21 });
    expect(await runTask(double, { n: -1 }).catch((e: unknown) => e)).toBeInstanceOf(Execution);
    expect(await runTask(double, { n: "x" } as never).catch((e: unknown) => e)).toBeInstanceOf(InvalidInput);
  });

  it("interrupts at the task's timeout", async () => {
    const stuck = defineTask({
      name: "stuck",
      input: Schema.Struct({}),
      output: Schema.Void,
      timeout: 20,
      handler: () => Effect.never,
    });
    expect(await runTask(stuck, {}).catch((e: unknown) => e)).toBeInstanceOf(Timeout);
  });

  it("fails an attempt whose output cannot be encoded, at once (never left running)", async () => {
    const odd = defineTask({
      name: "odd.output",
      input: Schema.Struct({}),
      output: Schema.Unknown,
      timeout: "10 seconds",
      handler: async () => ({ n: 1n }),
    });
    const started = Date.now();
    const error = await runTask(odd, {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Execution);
    expect((error as Execution).message).toContain("BigInt");
    expect(Date.now() - started).toBeLessThan(5_000); // not the deadline's Timeout
  });

  it("fails an attempt whose handler's Effect interrupts itself", async () => {
    const quits = defineTask({ name: "quits", input: Schema.Struct({}), output: Schema.Void, timeout: "10 seconds", handler: () => Effect.interrupt });
    const error = await runTask(quits, {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Execution);
    expect((error as Execution).message).toContain("interrupted");
  });

  it("gives an aborted signal to a handler that first asks for it after its deadline", async () => {
    let seen: boolean | undefined;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const late = defineTask({
      name: "late.signal",
      input: Schema.Struct({}),
      output: Schema.Void,
      timeout: 30,
      handler: async (_input, ctx) => {
        await new Promise((r) => setTimeout(r, 150));
        seen = ctx.signal.aborted;
        done();
      },
    });
    expect(await runTask(late, {}).catch((e: unknown) => e)).toBeInstanceOf(Timeout);
    await finished;
    expect(seen).toBe(true);
  });
});
