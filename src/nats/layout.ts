/**
 * The Troupe layout as data: every stream and bucket with the settings the configuration asks
 * for. `openNats` creates it from here (layout "create"), a client with a role only checks it
 * is there (layout "verify"), and `troupe setup --check` compares what the server has with it.
 */
import {
  DiscardPolicy,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { LayoutMissing } from "../errors.js";
import {
  ADVISORIES_STREAM,
  BELLS_SUBJECTS,
  COORDINATOR_CONSUMER,
  EVENTS_STREAM,
  EVENTS_SUBJECTS,
  INDEX_STREAM,
  INDEX_SUBJECTS,
  LEASES_BUCKET,
  LEASE_TTL_MS,
  LIMITS_BUCKET,
  LOGS_STREAM,
  LOGS_SUBJECTS,
  MAX_DELIVERIES_SUBJECTS,
  METHODS_BUCKET,
  OPEN_RUNS_BUCKET,
  PAUSES_BUCKET,
  PAYLOADS_BUCKET,
  RECORD_HISTORY,
  recordRepublish,
  REAPER_CONSUMER,
  SCHEDULES_BUCKET,
  STEPS_STREAM,
  STEPS_SUBJECTS,
  TASKS_BUCKET,
  TASKS_STREAM,
  TASKS_SUBJECTS,
  WORKERS_BUCKET,
  WORKFLOWS_BUCKET,
} from "./topology.js";

/** Worker registry entries expire when a worker stops refreshing them. */
export const WORKERS_TTL = 30_000;

/** `"create"`: make whatever is missing (an admin's or `Troupe.dev`'s connection); `"verify"`: only open it, failing with `LayoutMissing`. */
export type LayoutMode = "create" | "verify";

/** What the layout's settings depend on (a subset of the connection options). */
export interface LayoutSettings {
  readonly replicas?: number;
  readonly eventsMaxAge?: number;
  readonly logsMaxAge?: number;
  readonly logsMaxBytes?: number;
}

export type LayoutStream = Partial<StreamConfig> & { readonly name: string; readonly subjects: string[] };

const NS = 1_000_000;
const DAY_MS = 24 * 3600 * 1000;

/** The six streams of the layout, as `jsm.streams.add` takes them. */
export const layoutStreams = (options: LayoutSettings = {}): LayoutStream[] => {
  const num_replicas = options.replicas ?? 1;
  return [
    {
      name: TASKS_STREAM,
      subjects: [TASKS_SUBJECTS],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      num_replicas,
      duplicate_window: 2 * 60 * 1000 * NS,
      // Idle workers hear that work came (its subject) without a copy of it.
      republish: { src: TASKS_SUBJECTS, dest: BELLS_SUBJECTS, headers_only: true },
      allow_direct: true,
    },
    {
      name: EVENTS_STREAM,
      subjects: [EVENTS_SUBJECTS],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas,
      discard: DiscardPolicy.Old,
      max_age: (options.eventsMaxAge ?? 7 * DAY_MS) * NS,
    },
    {
      name: LOGS_STREAM,
      subjects: [LOGS_SUBJECTS],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas,
      discard: DiscardPolicy.Old,
      max_age: (options.logsMaxAge ?? 3 * DAY_MS) * NS,
      max_bytes: options.logsMaxBytes ?? 1024 ** 3,
    },
    { name: ADVISORIES_STREAM, subjects: [MAX_DELIVERIES_SUBJECTS], retention: RetentionPolicy.Workqueue, storage: StorageType.File, num_replicas, max_age: 7 * DAY_MS * NS },
    { name: INDEX_STREAM, subjects: [INDEX_SUBJECTS], retention: RetentionPolicy.Limits, storage: StorageType.File, num_replicas, duplicate_window: 2 * 60 * 1000 * NS },
    { name: STEPS_STREAM, subjects: [STEPS_SUBJECTS], retention: RetentionPolicy.Workqueue, storage: StorageType.File, num_replicas },
  ];
};

/** The durable consumers the layout holds besides the per-type ones workers make: [stream, name, ack wait in seconds]. */
export const LAYOUT_CONSUMERS = [
  [ADVISORIES_STREAM, REAPER_CONSUMER, 30],
  [STEPS_STREAM, COORDINATOR_CONSUMER, 10],
] as const;

export interface LayoutBucket {
  readonly name: string;
  /** Entries expire after this many ms; none when unset. */
  readonly ttl?: number;
  /** Revisions kept per key (1 when unset): a record bucket's history is its records' history. */
  readonly history?: number;
  /** A record bucket republishes every write it stores to `troupe.events.<kind>.<id>` (its live watchers). */
  readonly republish?: { readonly src: string; readonly dest: string };
}

/** The KV buckets of the layout (each a stream `KV_<name>`). */
export const LAYOUT_BUCKETS: ReadonlyArray<LayoutBucket> = [
  { name: TASKS_BUCKET, history: RECORD_HISTORY, republish: recordRepublish("task") },
  // A worker beats every 10 s and its entries expire after 30 s: its last few beats.
  { name: WORKERS_BUCKET, ttl: WORKERS_TTL, history: 8, republish: recordRepublish("worker") },
  { name: WORKFLOWS_BUCKET, history: RECORD_HISTORY, republish: recordRepublish("workflow") },
  { name: PAUSES_BUCKET },
  { name: SCHEDULES_BUCKET },
  { name: LEASES_BUCKET, ttl: LEASE_TTL_MS },
  { name: LIMITS_BUCKET },
  { name: OPEN_RUNS_BUCKET },
  { name: METHODS_BUCKET },
];

/** What `kvm.create` takes to make `bucket` as the layout wants it. */
export const bucketOptions = (bucket: LayoutBucket, replicas: number) => ({
  history: bucket.history ?? 1,
  replicas,
  ...(bucket.ttl === undefined ? {} : { ttl: bucket.ttl }),
  ...(bucket.republish === undefined ? {} : { republish: bucket.republish }),
});

/** The object store's stream. */
export const PAYLOADS_STREAM = `OBJ_${PAYLOADS_BUCKET}`;

const notFound = (e: unknown, code: number) => e instanceof JetStreamApiError && e.code === code;

/** What is missing of the layout, as `stream X` / `bucket Y` / `consumer S/C`; empty when it is all there. */
export const missingLayout = async (jsm: JetStreamManager): Promise<string[]> => {
  const missing: string[] = [];
  const stream = async (name: string, what: string) => {
    try {
      await jsm.streams.info(name);
      return true;
    } catch (e) {
      if (!notFound(e, 10059)) throw e;
      missing.push(what);
      return false;
    }
  };
  for (const s of layoutStreams()) await stream(s.name, `stream ${s.name}`);
  for (const b of LAYOUT_BUCKETS) await stream(`KV_${b.name}`, `bucket ${b.name}`);
  await stream(PAYLOADS_STREAM, `object store ${PAYLOADS_BUCKET}`);
  for (const [s, c] of LAYOUT_CONSUMERS) {
    if (missing.includes(`stream ${s}`)) continue;
    try {
      await jsm.consumers.info(s, c);
    } catch (e) {
      if (!notFound(e, 10014)) throw e;
      missing.push(`consumer ${c} of stream ${s}`);
    }
  }
  return missing;
};

/** Fails with `LayoutMissing` naming what is missing (a connection with layout "verify"). */
export const verifyLayout = async (jsm: JetStreamManager): Promise<void> => {
  const missing = await missingLayout(jsm);
  if (missing.length > 0) {
    throw new LayoutMissing({ message: `the Troupe layout is missing ${missing.join(", ")}: run \`troupe setup\``, missing });
  }
};

/** A layout setting the server holds other than the configuration says. */
export interface LayoutDrift {
  /** `stream TROUPE_EVENTS`, `bucket troupe-leases`, `object store troupe-payloads`. */
  readonly what: string;
  readonly stream: string;
  /** The stream config field: `num_replicas`, `storage`, `retention`, `max_age`, `max_bytes`, `max_msgs_per_subject`, `subjects`, `republish`. */
  readonly setting: keyof StreamConfig;
  readonly configured: unknown;
  readonly actual: unknown;
}

/** Settings `jsm.streams.update` can change in place; the others need the stream made again. */
export const UPDATABLE: ReadonlyArray<keyof StreamConfig> = ["num_replicas", "max_age", "max_bytes", "max_msgs_per_subject", "subjects"];

/**
 * Settings whose drift means the layout predates this version: the work subjects carry no
 * task id and the record buckets republish nothing (TROUPE_TASKS' and the record buckets'
 * RePublish). Their messages must be carried over (`troupe setup --migrate`).
 */
export const MIGRATED: ReadonlyArray<keyof StreamConfig> = ["republish"];

const NAMES: Partial<Record<keyof StreamConfig, string>> = {
  num_replicas: "replicas",
  max_age: "max age",
  max_bytes: "max bytes",
  max_msgs_per_subject: "history",
  republish: "republish",
};

const shown = (setting: keyof StreamConfig, value: unknown): string => {
  if (setting === "max_age" && typeof value === "number") {
    if (value === 0) return "none";
    const ms = value / NS;
    for (const [unit, size] of [["d", DAY_MS], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
    return `${ms}ms`;
  }
  if (setting === "republish") {
    const r = value as { src?: string; dest?: string } | undefined;
    return r === undefined || r === null ? "none" : `${r.src} → ${r.dest}`;
  }
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
};

/** One line per drift: `stream TROUPE_EVENTS: max age is 1h, the configuration says 7d`. */
export const formatDrift = (d: LayoutDrift): string =>
  `${d.what}: ${NAMES[d.setting] ?? d.setting} is ${shown(d.setting, d.actual)}, the configuration says ${shown(d.setting, d.configured)}${
    UPDATABLE.includes(d.setting) ? "" : MIGRATED.includes(d.setting) ? " (run `troupe setup --migrate`)" : " (cannot be changed in place: recreate the stream)"
  }`;

/** What the layout wants of every stream, bucket and the object store, as stream configs (the settings compared). */
export const wantedStreams = (options: LayoutSettings = {}): Array<{ readonly what: string; readonly config: Partial<StreamConfig> & { name: string } }> => {
  const replicas = options.replicas ?? 1;
  return [
    ...layoutStreams(options).map((config) => ({ what: `stream ${config.name}`, config })),
    ...LAYOUT_BUCKETS.map((b) => ({
      what: `bucket ${b.name}`,
      config: {
        name: `KV_${b.name}`,
        num_replicas: replicas,
        storage: StorageType.File,
        max_age: (b.ttl ?? 0) * NS,
        max_msgs_per_subject: b.history ?? 1,
        ...(b.republish === undefined ? {} : { republish: b.republish }),
      },
    })),
    { what: `object store ${PAYLOADS_BUCKET}`, config: { name: PAYLOADS_STREAM, num_replicas: replicas, storage: StorageType.File } },
  ];
};

const sameRepublish = (a: unknown, b: unknown): boolean => {
  const x = (a ?? undefined) as { src?: string; dest?: string; headers_only?: boolean } | undefined;
  const y = (b ?? undefined) as { src?: string; dest?: string; headers_only?: boolean } | undefined;
  if (x === undefined || y === undefined) return x === y;
  return x.src === y.src && x.dest === y.dest && (x.headers_only ?? false) === (y.headers_only ?? false);
};

/** Every setting of the layout that drifted from `options` (replicas, storage, retention, max age, max bytes, history, subjects, republish, bucket TTLs); missing parts are `missingLayout`'s. */
export const layoutDrift = async (jsm: JetStreamManager, options: LayoutSettings = {}): Promise<LayoutDrift[]> => {
  const drift: LayoutDrift[] = [];
  const wanted = wantedStreams(options);
  // Asked at once: every process that opens the layout asks this.
  const actuals = await Promise.all(
    wanted.map(({ config }) =>
      jsm.streams.info(config.name).then(
        (info) => info.config,
        (e: unknown) => {
          if (notFound(e, 10059)) return undefined;
          throw e;
        },
      ),
    ),
  );
  for (const [i, { what, config }] of wanted.entries()) {
    const actual = actuals[i];
    if (actual === undefined) continue;
    for (const setting of ["num_replicas", "storage", "retention", "max_age", "max_bytes", "max_msgs_per_subject", "subjects", "republish"] as const) {
      const configured = config[setting];
      if (configured === undefined && setting !== "republish") continue;
      const differs =
        setting === "subjects"
          ? JSON.stringify([...((actual.subjects ?? []) as string[])].sort()) !== JSON.stringify([...(configured as string[])].sort())
          : setting === "republish"
            ? !sameRepublish(actual.republish, configured)
            : actual[setting] !== configured;
      if (differs) drift.push({ what, stream: config.name, setting, configured, actual: actual[setting] });
    }
  }
  return drift;
};
