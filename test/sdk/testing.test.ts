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
});
