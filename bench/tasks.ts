/** The benchmark's no-op task, in a module `troupe worker` can load (the scale-out measurement's worker processes). */
import { defineTask, Schema } from "../src/index.js";

/** The no-op's options under another name (the bench's limited and keyed variants). */
export const noopOptions = (name: string) => ({
  name,
  input: Schema.Struct({ i: Schema.Number, pad: Schema.String }),
  output: Schema.Number,
  handler: async ({ i }: { i: number }) => i,
});

export const noop = defineTask(noopOptions("bench.noop"));
