/**
 * How a handle prints (`console.log(run)`, `util.inspect`): its class and the few fields a
 * person reads, not the client's internals behind it.
 */
import type { InspectOptionsStylized, inspect as Inspect } from "node:util";

/** `TaskRun { id: '…', task: 'noop', queue: 'default' }` on one line; `[TaskRun]` past the inspection's depth. */
export const inspectHandle = (
  name: string,
  fields: Readonly<Record<string, unknown>>,
  depth: number,
  options: InspectOptionsStylized,
  inspect: typeof Inspect,
): string =>
  depth < 0 ? options.stylize(`[${name}]`, "special") : `${name} ${inspect(fields, { ...options, depth: typeof options.depth === "number" ? options.depth - 1 : options.depth, breakLength: Infinity })}`;
