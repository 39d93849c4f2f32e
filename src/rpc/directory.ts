/**
 * The method directory, KV bucket `troupe-methods`: one entry per JSON-RPC method (a task
 * name), put by every worker that serves the task when it starts. It is how an RPC instance
 * answers for a task it does not run itself (any instance of the one queue group may get any
 * request), and what `rpc.discover` lists. Entries stay when their workers stop: a method
 * once advertised can be called (the task waits queued until a worker serves it again).
 */
import { Schema } from "effect";
import type { KV } from "@nats-io/kv";
import type { JetStreamManager } from "@nats-io/jetstream";
import { encodeJson, decodeWith } from "../nats/codec.js";
import { readBucket } from "../nats/bucket.js";
import { METHODS_BUCKET } from "../nats/topology.js";
import type { TaskDefinition } from "../task.js";
import { protocolOf } from "./protocol.js";

/** A JSON Schema (draft 2020-12) as Effect exports it. */
export type JsonSchema = Readonly<Record<string, unknown>>;

/** One method as the directory holds it, under the method name. */
export const MethodEntry = Schema.Struct({
  method: Schema.String,
  task: Schema.String,
  queue: Schema.String,
  protocol: Schema.optional(Schema.String),
  version: Schema.optional(Schema.String),
  /** The task's input (the request's `params`) as JSON Schema. */
  params: Schema.Record(Schema.String, Schema.Unknown),
  /** The task's output (the response's `result`) as JSON Schema. */
  result: Schema.Record(Schema.String, Schema.Unknown),
  /** The worker that last advertised it, and when. */
  workerId: Schema.optional(Schema.String),
  advertisedAt: Schema.String,
});
export type MethodEntry = typeof MethodEntry.Type;

/**
 * A schema's encoded side as JSON Schema, through Effect's export: named parts inline, and
 * what must stay a reference (a recursive part) in the schema's own `$defs`.
 */
export const jsonSchemaOf = (schema: TaskDefinition["input"]): JsonSchema => {
  try {
    const doc = Schema.toJsonSchemaDocument(schema, { referencePolicy: () => undefined });
    return Object.keys(doc.definitions).length === 0 ? (doc.schema as JsonSchema) : { ...(doc.schema as JsonSchema), $defs: doc.definitions };
  } catch {
    // A declaration Effect cannot describe: any JSON, as far as a caller can know.
    return {};
  }
};

/** A task's directory entry. */
export const methodEntry = (task: TaskDefinition, workerId?: string): MethodEntry => {
  const protocol = protocolOf(task);
  return {
    method: task.name,
    task: task.name,
    queue: task.queue,
    ...(protocol === undefined ? {} : { protocol: protocol.name, version: protocol.version }),
    params: jsonSchemaOf(task.input),
    result: jsonSchemaOf(task.output),
    ...(workerId === undefined ? {} : { workerId }),
    advertisedAt: new Date().toISOString(),
  };
};

/** Put one entry per task (a worker's start). */
export const advertiseMethods = async (kv: KV, tasks: Iterable<TaskDefinition>, workerId: string): Promise<void> => {
  await Promise.all([...tasks].map((task) => kv.put(task.name, encodeJson(methodEntry(task, workerId)))));
};

/** The entry of one method, or `undefined` when no worker ever advertised it. */
export const findMethod = async (kv: KV, method: string): Promise<MethodEntry | undefined> => {
  const entry = await kv.get(method);
  if (entry === null || entry.operation !== "PUT") return undefined;
  const decoded = decodeWith(MethodEntry, entry.value, "method entry");
  return decoded.ok ? decoded.value : undefined;
};

/** Every method advertised. */
export const listMethods = async (jsm: JetStreamManager, kv: KV): Promise<MethodEntry[]> =>
  (await readBucket(jsm, METHODS_BUCKET, kv, MethodEntry, "method entry")).map((e) => e.value);
