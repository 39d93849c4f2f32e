/**
 * A module of tasks: every `defineTask` definition it exports, directly or in an exported
 * array. The CLI's `troupe worker <module>`, a worker's `module` option and every executor
 * of a pool load tasks this one way, so they agree on what a module holds.
 */
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { TaskDefinition } from "./task.js";

const isTask = (value: unknown): value is TaskDefinition =>
  typeof value === "object" && value !== null && (value as { _tag?: unknown })._tag === "TaskDefinition";

/** A path (relative to the working directory) or a URL, as `import()` takes it. */
export const moduleUrl = (module: string | URL): string => {
  if (module instanceof URL) return module.href;
  if (/^[a-z][a-z0-9+.-]*:/i.test(module) && !isAbsolute(module)) return module;
  return pathToFileURL(resolve(module)).href;
};

/** Every task definition a module exports, by name (the last one of a name wins). */
export const loadTasks = async (module: string | URL): Promise<TaskDefinition[]> => {
  const mod = (await import(moduleUrl(module))) as Record<string, unknown>;
  const found = new Map<string, TaskDefinition>();
  for (const value of Object.values(mod)) {
    for (const item of Array.isArray(value) ? value : [value]) if (isTask(item)) found.set(item.name, item);
  }
  return [...found.values()];
};
