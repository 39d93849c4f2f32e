/** The benchmark's no-op task, in a module `troupe worker` can load (the scale-out measurement's worker processes). */
import { defineTask, Schema } from "../src/index.js";

export const noop = defineTask({
  name: "bench.noop",
  input: Schema.Struct({ i: Schema.Number, pad: Schema.String }),
  output: Schema.Number,
  handler: async ({ i }) => i,
});
