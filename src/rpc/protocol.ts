/**
 * `defineProtocol`: a versioned group of tasks. A worker serving a protocol's tasks
 * advertises the protocol and its version in the method directory (`troupe-methods`) and on
 * its `troupe-rpc` service, so JSON-RPC callers see which methods belong together. The
 * protocol is found from the tasks themselves: give the worker the tasks (or a module that
 * exports the protocol), nothing else.
 */
import { InvalidDefinition } from "../errors.js";
import { isValidTaskName } from "../nats/topology.js";
import { isTaskDefinition, type TaskDefinition } from "../task.js";

export interface ProtocolOptions {
  /** Dotted names allowed, as for tasks: `math`, `images.v2`. */
  readonly name: string;
  /** Letters, digits, `.`, `_`, `+` and `-`: `1.0.0`. */
  readonly version: string;
  /** The tasks (methods) of the protocol; a task belongs to one protocol at most. */
  readonly tasks: ReadonlyArray<TaskDefinition>;
}

export interface ProtocolDefinition {
  readonly _tag: "ProtocolDefinition";
  readonly name: string;
  readonly version: string;
  readonly tasks: ReadonlyArray<TaskDefinition>;
}

const VERSION = /^[A-Za-z0-9._+-]{1,64}$/;
const OPTIONS = new Set(["name", "version", "tasks"]);

/** The protocol each task was grouped into. */
const protocols = new WeakMap<TaskDefinition, ProtocolDefinition>();

/** Group tasks into a versioned protocol; `InvalidDefinition` names what is wrong. */
export const defineProtocol = (options: ProtocolOptions): ProtocolDefinition => {
  const name = String(options.name);
  const invalid = (message: string) => new InvalidDefinition({ message: `protocol "${name}": ${message}` });
  if (!isValidTaskName(name)) throw new InvalidDefinition({ message: `protocol name "${name}": use dot-separated segments of letters, digits, "_" and "-"` });
  for (const key of Object.keys(options)) if (!OPTIONS.has(key)) throw invalid(`unknown option "${key}" (options: ${[...OPTIONS].join(", ")})`);
  if (typeof options.version !== "string" || !VERSION.test(options.version)) {
    throw invalid(`version must be 1 to 64 letters, digits, ".", "_", "+" or "-" (such as "1.0.0"), got ${JSON.stringify(options.version)}`);
  }
  if (!Array.isArray(options.tasks) || options.tasks.length === 0) throw invalid("tasks must be a non-empty array of task definitions (defineTask)");
  const names = new Set<string>();
  for (const task of options.tasks) {
    if (!isTaskDefinition(task)) throw invalid("tasks must be task definitions (defineTask)");
    if (names.has(task.name)) throw invalid(`task "${task.name}" is given twice`);
    names.add(task.name);
    const other = protocols.get(task);
    if (other !== undefined) throw invalid(`task "${task.name}" already belongs to protocol "${other.name}" ${other.version}`);
  }
  const protocol: ProtocolDefinition = { _tag: "ProtocolDefinition", name, version: options.version, tasks: [...options.tasks] };
  for (const task of protocol.tasks) protocols.set(task, protocol);
  return protocol;
};

/** The protocol a task belongs to, if any. */
export const protocolOf = (task: TaskDefinition): ProtocolDefinition | undefined => protocols.get(task);

export const isProtocol = (value: unknown): value is ProtocolDefinition =>
  typeof value === "object" && value !== null && (value as { _tag?: unknown })._tag === "ProtocolDefinition";
