/**
 * Carrying a layout made by an earlier version over to this one (`troupe setup --migrate`,
 * `Troupe.dev` on an old store). Two changes need the messages moved, not settings updated:
 *
 * - work subjects now carry the task id (`troupe.tasks.<queue>.<id>.<type>`), and
 *   TROUPE_TASKS republishes bells: every queued message is published again under its new
 *   subject into the stream made anew (its consumers go with it; workers make them again);
 * - the record buckets (`troupe-tasks`, `troupe-workflows`, `troupe-workers`) republish their
 *   writes, which nats-server 2.9 cannot add to a stream in place: each record's current value
 *   is written again into the bucket made anew (its history starts there; revisions change,
 *   so a migrated work message carries revision -1: "read the record").
 *
 * Everything goes through a holding stream (TROUPE_MIGRATION) first, so a migration that dies
 * half-way is resumed by running it again: a part whose stream is made anew already is only
 * poured back. Nothing else may run meanwhile.
 */
import { DeliverPolicy, JetStreamApiError, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { jetstream } from "@nats-io/jetstream";
import { TaskRecord as TaskRecordSchema } from "../../machines/records.js";
import { decodeWith } from "./codec.js";
import { bucketOptions, LAYOUT_BUCKETS, layoutDrift, layoutStreams, type LayoutSettings } from "./layout.js";
import { Headers, TASKS_STREAM, WORKERS_BUCKET, workSubject } from "./topology.js";

export const MIGRATION_STREAM = "TROUPE_MIGRATION";
const ROOT = "troupe.migration";

export interface MigrationReport {
  /** What was carried over: `stream TROUPE_TASKS: 12 queued tasks`, `bucket troupe-tasks: 340 records`. */
  readonly moved: ReadonlyArray<string>;
}

const notFound = (e: unknown) => e instanceof JetStreamApiError && (e.code === 10059 || e.code === 10014);

/** Every message of `stream` on `filter`, oldest first, through an ordered consumer; `lastPerSubject`: each subject's last only. */
const readAll = async function* (nc: NatsConnection, stream: string, filter: string, lastPerSubject = false) {
  const js = jetstream(nc);
  const consumer = await js.consumers.get(stream, {
    filter_subjects: filter,
    deliver_policy: lastPerSubject ? DeliverPolicy.LastPerSubject : DeliverPolicy.All,
  });
  try {
    if ((await consumer.info()).num_pending === 0) return;
    const messages = await consumer.consume({ max_messages: 512 });
    try {
      for await (const m of messages) {
        yield m;
        if (m.info.pending === 0) break;
      }
    } finally {
      await messages.close().catch(() => undefined);
    }
  } finally {
    // Not left to the server's five-minute inactivity threshold.
    await consumer.delete().catch(() => undefined);
  }
};

/** A copy of `headers` without the ones a store sets, plus `extra`. */
const keptHeaders = (headers: MsgHdrs | undefined, extra: Record<string, string> = {}): MsgHdrs => {
  const h = natsHeaders();
  for (const [k, v] of headers ?? []) {
    if (k.startsWith("Nats-") || k === Headers.revision) continue;
    for (const value of v) h.append(k, value);
  }
  for (const [k, v] of Object.entries(extra)) h.set(k, v);
  return h;
};

export const migrateLayout = async (nc: NatsConnection, jsm: JetStreamManager, options: LayoutSettings, progress: (line: string) => void = () => undefined): Promise<MigrationReport> => {
  const js = jetstream(nc);
  const moved: string[] = [];
  try {
    await jsm.streams.add({ name: MIGRATION_STREAM, subjects: [`${ROOT}.>`] });
  } catch (e) {
    if (!(e instanceof JetStreamApiError && e.code === 10058)) throw e; // there already: a migration resumed
  }
  const outdated = new Set((await layoutDrift(jsm, options)).filter((d) => d.setting === "republish").map((d) => d.stream));
  const remake = async (config: Partial<StreamConfig> & { name: string }) => {
    await jsm.streams.delete(config.name).catch((e: unknown) => {
      if (!notFound(e)) throw e;
    });
    await jsm.streams.add(config);
  };

  // The work stream: each message under its new subject.
  const workHold = `${ROOT}.work`;
  if (outdated.has(TASKS_STREAM)) {
    await jsm.streams.purge(MIGRATION_STREAM, { filter: `${workHold}.>` });
    let held = 0;
    // Read by sequence, not through a consumer: a work queue's consumer would take them away.
    const { first_seq: first, last_seq: last } = (await jsm.streams.info(TASKS_STREAM)).state;
    for (let seq = first; seq <= last && last > 0; seq += 256) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(256, last - seq + 1) }, (_, i) => jsm.streams.getMessage(TASKS_STREAM, { seq: seq + i })),
      );
      for (const m of batch) {
        if (m === null) continue; // acknowledged, or deleted
        const record = decodeWith(TaskRecordSchema, m.data, "task record");
        if (!record.ok) continue; // a malformed message no worker could run: left behind
        const r = record.value;
        const subject = workSubject(r.queue, r.task, r.id, r.priority, r.key);
        await js.publish(`${workHold}.${subject}`, m.data, { headers: keptHeaders(m.header) });
        held++;
      }
      if (held > 0 && (seq - first) % 25_600 === 0) progress(`stream ${TASKS_STREAM}: ${held} queued messages held`);
    }
    await remake(layoutStreams(options).find((s) => s.name === TASKS_STREAM)!);
    progress(`stream ${TASKS_STREAM}: ${held} queued messages held`);
  }
  let poured = 0;
  for await (const m of readAll(nc, MIGRATION_STREAM, `${workHold}.>`)) {
    // Its record may have moved on since it was enqueued, at revisions the migration changes: read it.
    await js.publish(m.subject.slice(workHold.length + 1), m.data, { headers: keptHeaders(m.headers, { [Headers.revision]: "-1" }) });
    poured++;
  }
  if (poured > 0) moved.push(`stream ${TASKS_STREAM}: ${poured} queued tasks`);
  await jsm.streams.purge(MIGRATION_STREAM, { filter: `${workHold}.>` });

  // The record buckets: each key's current value written again.
  const kvm = new Kvm(js);
  for (const bucket of LAYOUT_BUCKETS.filter((b) => b.republish !== undefined)) {
    const stream = `KV_${bucket.name}`;
    const hold = `${ROOT}.kv.${bucket.name}`;
    if (outdated.has(stream)) {
      await jsm.streams.purge(MIGRATION_STREAM, { filter: `${hold}.>` });
      // The registry of live workers is written again by each worker within seconds: not carried.
      if (bucket.name !== WORKERS_BUCKET) {
        for await (const m of readAll(nc, stream, `$KV.${bucket.name}.>`, true)) {
          const op = m.headers?.get("KV-Operation") ?? "";
          if (op === "DEL" || op === "PURGE") continue;
          await js.publish(`${hold}.${m.subject.slice(`$KV.${bucket.name}.`.length)}`, m.data);
        }
      }
      await jsm.streams.delete(stream).catch((e: unknown) => {
        if (!notFound(e)) throw e;
      });
      await kvm.create(bucket.name, bucketOptions(bucket, options.replicas ?? 1));
    }
    let written = 0;
    for await (const m of readAll(nc, MIGRATION_STREAM, `${hold}.>`)) {
      await js.publish(`$KV.${bucket.name}.${m.subject.slice(hold.length + 1)}`, m.data);
      written++;
    }
    if (written > 0) moved.push(`bucket ${bucket.name}: ${written} records`);
    await jsm.streams.purge(MIGRATION_STREAM, { filter: `${hold}.>` });
  }
  await jsm.streams.delete(MIGRATION_STREAM);
  for (const line of moved) progress(line);
  return { moved };
};
