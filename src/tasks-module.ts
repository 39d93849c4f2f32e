/**
 * A module of tasks: every `defineTask` definition it exports, directly, in an exported
 * array or in an exported protocol (`defineProtocol`). The CLI's `troupe worker <module>`,
 * a worker's `module` option and every executor of a pool load tasks this one way, so they
 * agree on what a module holds.
 */
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { isTaskDefinition, type TaskDefinition } from "./task.js";
import { isProtocol } from "./rpc/protocol.js";

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
    const items = isProtocol(value) ? value.tasks : Array.isArray(value) ? value : [value];
    for (const item of items) if (isTaskDefinition(item)) found.set(item.name, item);
  }
  return [...found.values()];
};
