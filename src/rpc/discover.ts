/**
 * `rpc.discover`: the methods as an OpenRPC document (`{ openrpc, info, methods }`), each
 * with its params and result as JSON Schema. A task whose input is an object is described
 * by its properties, called by name; any other input by one descriptor, `params`, whose
 * schema is that of the whole `params` value (and `x-troupe.wholeParams: true`).
 */
import { VERSION } from "../version.js";
import type { JsonSchema, MethodEntry } from "./directory.js";

export const OPENRPC_VERSION = "1.3.2";

interface ContentDescriptor {
  readonly name: string;
  readonly schema: JsonSchema;
  readonly required?: boolean;
}

export interface OpenRpcMethod {
  readonly name: string;
  readonly description: string;
  readonly paramStructure?: "by-name";
  readonly params: ReadonlyArray<ContentDescriptor>;
  readonly result: ContentDescriptor;
  readonly tags?: ReadonlyArray<{ readonly name: string }>;
  /** Where the task runs, and the protocol it belongs to. */
  readonly "x-troupe": {
    readonly task: string;
    readonly queue: string;
    readonly protocol?: string;
    readonly version?: string;
    /** The one descriptor stands for the whole `params` value (an input that is not an object). */
    readonly wholeParams?: true;
  };
}

export interface OpenRpcDocument {
  readonly openrpc: string;
  readonly info: { readonly title: string; readonly version: string; readonly description: string };
  readonly methods: ReadonlyArray<OpenRpcMethod>;
  /** The protocols the methods belong to (`defineProtocol`), with their methods. */
  readonly "x-troupe-protocols": ReadonlyArray<{ readonly name: string; readonly version: string; readonly methods: ReadonlyArray<string> }>;
}

/** The input's properties, or `undefined` when it is not an object with properties. */
const paramsOf = (schema: JsonSchema): ContentDescriptor[] | undefined => {
  const properties = schema.properties as Record<string, JsonSchema> | undefined;
  if (schema.type !== "object" || properties === undefined) return undefined;
  const required = new Set((schema.required as string[] | undefined) ?? []);
  // A property's references point into the schema's own definitions: they go with it.
  const defs = schema.$defs === undefined ? {} : { $defs: schema.$defs };
  return Object.entries(properties).map(([name, property]) => ({ name, schema: { ...property, ...defs }, required: required.has(name) }));
};

export const openRpcDocument = (entries: ReadonlyArray<MethodEntry>): OpenRpcDocument => {
  const sorted = [...entries].sort((a, b) => (a.method < b.method ? -1 : a.method > b.method ? 1 : 0));
  const protocols = new Map<string, { name: string; version: string; methods: string[] }>();
  for (const e of sorted) {
    if (e.protocol === undefined || e.version === undefined) continue;
    const key = `${e.protocol}@${e.version}`;
    const p = protocols.get(key) ?? { name: e.protocol, version: e.version, methods: [] };
    p.methods.push(e.method);
    protocols.set(key, p);
  }
  return {
    openrpc: OPENRPC_VERSION,
    info: {
      title: "troupe-rpc",
      version: VERSION,
      description: "Troupe tasks as JSON-RPC 2.0 methods on NATS subject troupe.rpc: each call is a durable task.",
    },
    methods: sorted.map((e) => {
      const byName = paramsOf(e.params);
      return {
        name: e.method,
        description: `task ${e.task} on queue ${e.queue}${e.protocol === undefined ? "" : `, protocol ${e.protocol} ${e.version ?? ""}`.trimEnd()}`,
        ...(byName === undefined ? {} : { paramStructure: "by-name" as const }),
        params: byName ?? [{ name: "params", schema: e.params, required: true }],
        result: { name: "result", schema: e.result },
        ...(e.protocol === undefined ? {} : { tags: [{ name: e.protocol }] }),
        "x-troupe": {
          task: e.task,
          queue: e.queue,
          ...(e.protocol === undefined ? {} : { protocol: e.protocol }),
          ...(e.version === undefined ? {} : { version: e.version }),
          ...(byName === undefined ? { wholeParams: true as const } : {}),
        },
      };
    }),
    "x-troupe-protocols": [...protocols.values()],
  };
};
