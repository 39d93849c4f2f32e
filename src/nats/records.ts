/** Reading task records from the `troupe-tasks` bucket: decoded, shape-checked, with their revision. */
import type { KV } from "@nats-io/kv";
import type { TaskRecord } from "../../machines/task.js";
import { decodeJson } from "./codec.js";

/** Minimal shape check of a task record; a work message is trusted only this far. */
export const asRecord = (value: unknown): TaskRecord | undefined => {
  if (typeof value !== "object" || value === null) return undefined;
  const r = value as Record<string, unknown>;
  return typeof r.id === "string" && typeof r.task === "string" && typeof r.status === "string" && typeof r.attempt === "number"
    ? (value as TaskRecord)
    : undefined;
};

/** The record and its revision (the next compare-and-set's expectation), or `undefined`. */
export const readRecord = async (tasks: KV, id: string): Promise<{ record: TaskRecord; revision: number } | undefined> => {
  const entry = await tasks.get(id);
  if (entry === null || entry.operation !== "PUT") return undefined;
  const decoded = decodeJson(entry.value);
  const record = decoded.ok ? asRecord(decoded.value) : undefined;
  return record === undefined ? undefined : { record, revision: entry.revision };
};
