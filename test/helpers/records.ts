/** Reading task state in tests: by watching KV and counting events, never by sleeping. */
import { jetstreamManager } from "@nats-io/jetstream";
import { connectionOf, Topology } from "../../src/internals.js";
import type { TaskRecord, Troupe } from "../../src/index.js";

/** Resolves with the first record of the task that satisfies `predicate` (a KV watch). */
export const recordWhere = async (troupe: Troupe, id: string, predicate: (r: TaskRecord) => boolean): Promise<TaskRecord> => {
  const watch = await connectionOf(troupe).tasks.watch({ key: id });
  try {
    for await (const e of watch) {
      if (e.operation !== "PUT") continue;
      let record: TaskRecord;
      try {
        record = e.json<TaskRecord>();
      } catch {
        continue; // not a record (a test wrote garbage on purpose)
      }
      if (predicate(record)) return record;
    }
  } finally {
    watch.stop();
  }
  throw new Error("watch ended");
};

/** How many events TROUPE_EVENTS holds on `subject` (wildcards allowed). */
export const eventCount = async (troupe: Troupe, subject: string): Promise<number> => {
  const jsm = await jetstreamManager(connectionOf(troupe).nc);
  const info = await jsm.streams.info(Topology.EVENTS_STREAM, { subjects_filter: subject });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
};
