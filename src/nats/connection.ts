/**
 * The one NATS connection layer: connect with the user's options, then make sure every
 * stream, bucket and consumer of the layout exists. Creation is idempotent and safe when
 * many processes start at once: an "already exists" answer is success.
 */
import { readFile } from "node:fs/promises";
import {
  connect,
  credsAuthenticator,
  type NatsConnection,
  type ConnectionOptions,
} from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { Kvm, type KV, type KvOptions } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { NatsFailure, TopologyConflict } from "../errors.js";
import type { DurationInput } from "../duration.js";
import { AckedPublisher } from "./publisher.js";
import {
  COORDINATOR_CONSUMER,
  STEPS_STREAM,
  STEPS_SUBJECTS,
  ADVISORIES_STREAM,
  MAX_DELIVERIES_SUBJECTS,
  REAPER_CONSUMER,
  consumerName,
  EVENTS_STREAM,
  EVENTS_SUBJECTS,
  LOGS_STREAM,
  LOGS_SUBJECTS,
  TASKS_BUCKET,
  TASKS_STREAM,
  TASKS_SUBJECTS,
  taskSubject,
  WORKERS_BUCKET,
  WORKFLOWS_BUCKET,
  PAUSES_BUCKET,
  SCHEDULES_BUCKET,
  LEASES_BUCKET,
  LEASE_TTL_MS,
  LIMITS_BUCKET,
  keySubject,
  INDEX_STREAM,
  INDEX_SUBJECTS,
  OPEN_RUNS_BUCKET,
  PAYLOADS_BUCKET,
  METHODS_BUCKET,
} from "./topology.js";

export interface TlsConnectOptions {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

export interface ConnectOptions {
  /** `nats://host:port`, or several; `NATS_URL` or 127.0.0.1:4222 when unset. */
  readonly servers?: string | ReadonlyArray<string>;
  readonly user?: string;
  readonly pass?: string;
  readonly token?: string;
  /** Path to a `.creds` file (JWT + nkey seed). */
  readonly credentials?: string;
  readonly tls?: TlsConnectOptions;
  /** Connection name shown by the server (`nats server report connections`). */
  readonly name?: string;
  /** Stream and bucket replicas: 1 by default, 3 in a cluster. */
  readonly replicas?: number;
  /** How long TROUPE_EVENTS keeps events (ms); 7 days by default. */
  readonly eventsMaxAge?: number;
  /** How long TROUPE_LOGS keeps handlers' log lines (ms); 3 days by default. */
  readonly logsMaxAge?: number;
  /** How many bytes TROUPE_LOGS keeps at most, the oldest lines dropped first; 1 GiB by default. */
  readonly logsMaxBytes?: number;
  /**
   * Inputs and outputs whose JSON is over this many bytes go to the object store
   * `troupe-payloads`, the record holding a reference (default 256 KiB).
   */
  readonly payloadThreshold?: number;
  /**
   * How long finished task and workflow records (with their payloads and index entries) are
   * kept, by status: milliseconds or durations such as `"7 days"` (defaults: COMPLETED 7 days,
   * FAILED and CANCELLED 30 days). The workers and coordinators of this client apply it.
   */
  readonly retention?: RetentionOptions;
}

export interface RetentionOptions {
  readonly completed?: DurationInput;
  readonly failed?: DurationInput;
  readonly cancelled?: DurationInput;
}

export interface NatsHandle {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tasks: KV;
  readonly workers: KV;
  readonly workflows: KV;
  /** Paused queues and task types (`troupe.pause`). */
  readonly pauses: KV;
  readonly schedules: KV;
  /** Single-leader leases (the scheduler's). */
  readonly leases: KV;
  /** Limiters of limited task types. */
  readonly limits: KV;
  readonly replicas: number;
  /** Workflow runs not finished yet (the keys coordinators reconcile). */
  readonly openRuns: KV;
  /** Large inputs and outputs (`troupe-payloads`). */
  readonly payloads: ObjectStore;
  /** JSON over this many bytes goes to `payloads`. */
  readonly payloadThreshold: number;
  /** The JSON-RPC method directory (`troupe-methods`): one entry per task a worker advertised. */
  readonly methods: KV;
  /** Pipelined acked publishes: the KV writes and work messages of the hot path. */
  readonly publisher: AckedPublisher;
}

/** Inputs and outputs over 256 KiB of JSON go to the object store. */
export const DEFAULT_PAYLOAD_THRESHOLD = 256 * 1024;

/** Worker registry entries expire when a worker stops refreshing them. */
export const WORKERS_TTL = 30_000;

const isApiError = (e: unknown, ...codes: number[]) =>
  e instanceof JetStreamApiError && codes.includes(e.code);

/** A NATS error as a `NatsFailure` saying what was being done. */
export const asFailure = (what: string) => (cause: unknown) =>
  new NatsFailure({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}`, cause });

export const connectNats = async (options: ConnectOptions = {}): Promise<NatsConnection> => {
  const servers = options.servers ?? process.env.NATS_URL ?? "nats://127.0.0.1:4222";
  const opts: ConnectionOptions = {
    servers: typeof servers === "string" ? servers.split(",") : [...servers],
    name: options.name ?? "troupe",
    // Measured: nats-core builds an Error (with a stack) per request for async traces;
    // turning that off roughly doubles client throughput.
    noAsyncTraces: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  };
  if (options.user !== undefined) {
    opts.user = options.user;
    opts.pass = options.pass ?? "";
  }
  if (options.token !== undefined) opts.token = options.token;
  if (options.credentials !== undefined) {
    opts.authenticator = credsAuthenticator(await readFile(options.credentials));
  }
  if (options.tls !== undefined) opts.tls = { ...options.tls };
  try {
    return await connect(opts);
  } catch (e) {
    throw asFailure(`cannot connect to NATS at ${opts.servers}`)(e);
  }
};

const ensureStream = async (jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string; subjects: string[] }) => {
  try {
    const info = await jsm.streams.info(config.name);
    const missing = config.subjects.filter((s) => !info.config.subjects?.includes(s));
    if (missing.length > 0) {
      throw new TopologyConflict({
        message: `stream ${config.name} exists without subjects ${missing.join(", ")}; delete it or fix its subjects`,
      });
    }
    return;
  } catch (e) {
    if (!isApiError(e, 10059)) throw e; // 10059: stream not found
  }
  try {
    await jsm.streams.add(config);
  } catch (e) {
    // 10058: another process created it first.
    if (!isApiError(e, 10058)) throw e;
  }
};

const ensureBucket = async (jsm: JetStreamManager, kvm: Kvm, name: string, opts: Partial<KvOptions>): Promise<KV> => {
  try {
    await jsm.streams.info(`KV_${name}`);
    return await kvm.open(name);
  } catch (e) {
    if (!isApiError(e, 10059)) throw e;
  }
  try {
    return await kvm.create(name, opts);
  } catch {
    return await kvm.open(name); // created concurrently by another process
  }
};

/** Create (or find) the whole layout (the README's NATS layout) with `replicas` copies. */
export const openNats = async (nc: NatsConnection, options: ConnectOptions = {}): Promise<NatsHandle> => {
  const replicas = options.replicas ?? 1;
  try {
    const jsm = await jetstreamManager(nc);
    const js = jetstream(nc);
    await ensureStream(jsm, {
      name: TASKS_STREAM,
      subjects: [TASKS_SUBJECTS],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      num_replicas: replicas,
      duplicate_window: 2 * 60 * 1_000_000_000,
    });
    await ensureStream(jsm, {
      name: EVENTS_STREAM,
      subjects: [EVENTS_SUBJECTS],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: replicas,
      discard: DiscardPolicy.Old,
      max_age: (options.eventsMaxAge ?? 7 * 24 * 3600 * 1000) * 1_000_000,
    });
    await ensureStream(jsm, {
      name: LOGS_STREAM,
      subjects: [LOGS_SUBJECTS],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: replicas,
      discard: DiscardPolicy.Old,
      max_age: (options.logsMaxAge ?? 3 * 24 * 3600 * 1000) * 1_000_000,
      max_bytes: options.logsMaxBytes ?? 1024 ** 3,
    });
    await ensureStream(jsm, {
      name: ADVISORIES_STREAM,
      subjects: [MAX_DELIVERIES_SUBJECTS],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      num_replicas: replicas,
      max_age: 7 * 24 * 3600 * 1_000_000_000,
    });
    await ensureStream(jsm, {
      name: INDEX_STREAM,
      subjects: [INDEX_SUBJECTS],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: replicas,
      duplicate_window: 2 * 60 * 1_000_000_000,
    });
    await ensureStream(jsm, {
      name: STEPS_STREAM,
      subjects: [STEPS_SUBJECTS],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      num_replicas: replicas,
    });
    for (const [stream, durable, ackWaitS] of [
      [ADVISORIES_STREAM, REAPER_CONSUMER, 30],
      [STEPS_STREAM, COORDINATOR_CONSUMER, 10],
    ] as const) {
      try {
        await jsm.consumers.add(stream, {
          durable_name: durable,
          ack_policy: AckPolicy.Explicit,
          ack_wait: ackWaitS * 1_000_000_000,
          max_deliver: -1,
        });
      } catch (e) {
        if (!isApiError(e, 10148, 10013)) throw e; // exists already
      }
    }
    const kvm = new Kvm(js);
    const [tasks, workers, workflows, pauses, schedules, leases, limits, openRuns, methods] = await Promise.all([
      ensureBucket(jsm, kvm, TASKS_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, WORKERS_BUCKET, { history: 1, replicas, ttl: WORKERS_TTL }),
      ensureBucket(jsm, kvm, WORKFLOWS_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, PAUSES_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, SCHEDULES_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, LEASES_BUCKET, { history: 1, replicas, ttl: LEASE_TTL_MS }),
      ensureBucket(jsm, kvm, LIMITS_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, OPEN_RUNS_BUCKET, { history: 1, replicas }),
      ensureBucket(jsm, kvm, METHODS_BUCKET, { history: 1, replicas }),
    ]);
    const payloads = await new Objm(js).create(PAYLOADS_BUCKET, { replicas, storage: StorageType.File });
    return {
      nc,
      js,
      jsm,
      tasks,
      workers,
      workflows,
      pauses,
      schedules,
      leases,
      limits,
      openRuns,
      methods,
      payloads,
      payloadThreshold: options.payloadThreshold ?? DEFAULT_PAYLOAD_THRESHOLD,
      replicas,
      publisher: new AckedPublisher(nc),
    };
  } catch (e) {
    if (e instanceof TopologyConflict) throw e;
    throw asFailure("cannot create the Troupe streams and buckets")(e);
  }
};

export interface ConsumerSettings {
  /** The lease: how long a delivery may go without an ack or a heartbeat. */
  readonly ackWaitMs: number;
  /** Deliveries before JetStream gives up and raises MAX_DELIVERIES (-1: never). */
  readonly maxDeliver?: number;
  /** Deliveries held at once (`limits.perKey` for a key's consumer). */
  readonly maxAckPending?: number;
}

/** The durable pull consumer of one task type; refuses a name collision. */
export const ensureTaskConsumer = async (
  jsm: JetStreamManager,
  queue: string,
  type: string,
  settings: ConsumerSettings,
  priority?: number,
  key?: string,
): Promise<string> => {
  const name = consumerName(queue, type, priority, key);
  const filter = key === undefined ? taskSubject(queue, type, priority) : keySubject(queue, type, key);
  const config = {
    durable_name: name,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: filter,
    ack_wait: settings.ackWaitMs * 1_000_000,
    max_deliver: settings.maxDeliver ?? -1,
    max_ack_pending: settings.maxAckPending ?? 20_000,
    max_waiting: 4_096,
    // A key's consumer goes when its key has been idle an hour; the next task of the key makes it again.
    ...(key === undefined ? {} : { inactive_threshold: 3_600 * 1_000_000_000 }),
  };
  try {
    const info = await jsm.consumers.info(TASKS_STREAM, name);
    if (info.config.filter_subject !== filter) {
      throw new TopologyConflict({
        message: `task "${type}" on queue "${queue}" maps to consumer ${name}, which already serves ${info.config.filter_subject}; rename one of the tasks`,
      });
    }
    if (info.config.ack_wait !== config.ack_wait || info.config.max_deliver !== config.max_deliver || info.config.max_ack_pending !== config.max_ack_pending) {
      await jsm.consumers.update(TASKS_STREAM, name, { ack_wait: config.ack_wait, max_deliver: config.max_deliver, max_ack_pending: config.max_ack_pending });
    }
    return name;
  } catch (e) {
    if (!isApiError(e, 10014)) throw e; // 10014: consumer not found
  }
  try {
    await jsm.consumers.add(TASKS_STREAM, config);
  } catch (e) {
    if (!isApiError(e, 10148, 10013)) throw e; // created concurrently
  }
  return name;
};
