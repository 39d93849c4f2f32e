/**
 * A module of tasks: every `defineTask` definition it exports, directly, in an exported
 * array or in an exported protocol (`defineProtocol`). The CLI's `troupe worker <module>`,
 * a worker's `module` option and every executor of a pool load tasks this one way, so they
 * agree on what a module holds.
 */
import { existsSync } from "node:fs";
import { basename, isAbsolute, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { InvalidDefinition } from "./errors.js";
import { isTaskDefinition, type TaskDefinition } from "./task.js";
import { isProtocol } from "./rpc/protocol.js";

/** A path (relative to the working directory) or a URL, as `import()` takes it. */
export const moduleUrl = (module: string | URL): string => {
  if (module instanceof URL) return module.href;
  if (/^[a-z][a-z0-9+.-]*:/i.test(module) && !isAbsolute(module)) return module;
  return pathToFileURL(resolve(module)).href;
};

/** A preload flag whose module is a TypeScript loader, or a flag of Node's own type stripping. */
const LOADER_FLAG = /^(--import|--require|-r|--loader|--experimental-loader)$/;
const TYPESCRIPT_LOADER = /tsx|ts-node|@swc-node|esbuild-register|@esbuild-kit|jiti|ts-blank-space|@ts-morph|typescript/i;
const TYPESCRIPT_FLAG = /^--(experimental-strip-types|experimental-transform-types)$/;

/** Whether `node` flags (`process.execArgv`, `NODE_OPTIONS` split) load a TypeScript loader or strip types. */
export const typeScriptFlags = (flags: ReadonlyArray<string>): boolean =>
  flags.some((flag, i) => {
    if (TYPESCRIPT_FLAG.test(flag)) return true;
    const [name, value] = flag.includes("=") ? [flag.slice(0, flag.indexOf("=")), flag.slice(flag.indexOf("=") + 1)] : [flag, flags[i + 1]];
    return LOADER_FLAG.test(name ?? "") && value !== undefined && TYPESCRIPT_LOADER.test(value);
  });

/** Whether this process runs TypeScript: under a loader (tsx, ts-node, ...) or Node's own type stripping. */
export const typeScriptRuntime = (): boolean =>
  Boolean((process.features as { typescript?: unknown }).typescript) ||
  typeScriptFlags(process.execArgv) ||
  typeScriptFlags((process.env.NODE_OPTIONS ?? "").split(/\s+/).filter((f) => f !== ""));

/** The TypeScript source a compiled module's name stands for: `tasks.ts` for `tasks.js`, `tasks.mts` for `tasks.mjs`. */
const TYPESCRIPT_TWINS: Record<string, ReadonlyArray<string>> = { ".js": [".ts", ".tsx"], ".mjs": [".mts"], ".cjs": [".cts"], ".jsx": [".tsx"] };

/**
 * A module's URL as this process's runtime resolves it. A file that is there is itself; under
 * a TypeScript loader (tsx, `node --import tsx`) the name `./tasks.js` resolves to the
 * `tasks.ts` beside it, as it does in the program's own imports. A file that is not there is
 * an `InvalidDefinition` saying what to pass instead.
 */
export const resolveModule = (module: string | URL): string => {
  const url = moduleUrl(module);
  if (!url.startsWith("file:")) return url;
  const path = fileURLToPath(url);
  if (existsSync(path)) return url;
  let resolved: string | undefined;
  try {
    resolved = import.meta.resolve(url);
  } catch {
    resolved = undefined;
  }
  if (resolved !== undefined && resolved !== url && resolved.startsWith("file:") && existsSync(fileURLToPath(resolved))) return resolved;
  const extension = /\.[^./\\]+$/.exec(path)?.[0] ?? "";
  const twin = (TYPESCRIPT_TWINS[extension] ?? []).map((ts) => path.slice(0, -extension.length) + ts).find((p) => existsSync(p));
  if (twin !== undefined && typeScriptRuntime()) return pathToFileURL(twin).href;
  if (twin !== undefined) {
    throw new InvalidDefinition({
      message:
        `module ${path} does not exist; ${basename(twin)} is beside it, but this process runs without a TypeScript loader. ` +
        `Run the program under tsx (\`npx tsx main.ts\`, or \`node --import tsx main.js\`), or give the path of the compiled module`,
    });
  }
  throw new InvalidDefinition({ message: `module ${path} does not exist (a relative path is resolved against the working directory, ${process.cwd()})` });
};

/** Every task definition a module exports, by name (the last one of a name wins). */
export const loadTasks = async (module: string | URL): Promise<TaskDefinition[]> => {
  const mod = (await import(resolveModule(module))) as Record<string, unknown>;
  const found = new Map<string, TaskDefinition>();
  for (const value of Object.values(mod)) {
    const items = isProtocol(value) ? value.tasks : Array.isArray(value) ? value : [value];
    for (const item of items) if (isTaskDefinition(item)) found.set(item.name, item);
  }
  return [...found.values()];
};
