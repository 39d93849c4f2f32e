/**
 * The one NATS connection layer: connect with the user's options, then make sure every
 * stream, bucket and consumer of the layout exists. Creation is idempotent and safe when
 * many processes start at once: an "already exists" answer is success.
 */
import { readFile } from "node:fs/promises";
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type NatsConnection,
  type ConnectionOptions,
  type Server,
  type ServerInfo,
} from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { Kvm, type KV, type KvOptions } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { LayoutMissing, LayoutOutdated, NatsFailure, TopologyConflict } from "../errors.js";
import { bucketOptions, formatDrift, LAYOUT_BUCKETS, LAYOUT_CONSUMERS, layoutDrift, layoutStreams, MIGRATED, verifyLayout, type LayoutMode } from "./layout.js";
import { migrateLayout } from "./migrate.js";
import { permissionDenied } from "./permissions.js";
import { isTransientJetStream, withRetryFor } from "./retry.js";
import { parseDuration, type DurationInput } from "../duration.js";
import { AckedPublisher } from "./publisher.js";
import { connectFailure } from "./connect-failure.js";
import {
  consumerName,
  EVENTS_STREAM,
  TASKS_BUCKET,
  TASKS_STREAM,
  taskSubject,
  WORKERS_BUCKET,
  WORKFLOWS_BUCKET,
  PAUSES_BUCKET,
  SCHEDULES_BUCKET,
  LEASES_BUCKET,
  LIMITS_BUCKET,
  keySubject,
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
  /** Path to a user nkey seed file (`SU...`), for a server that lists the user's public nkey. */
  readonly nkey?: string;
  /**
   * Where replies (and pulled messages) come: `<prefix>.…` instead of `_INBOX.…`. A role's
   * connection file from `troupe auth init` sets its own, the only inbox it may subscribe to.
   */
  readonly inboxPrefix?: string;
  /** How long one connection attempt may take before it fails (ms or a duration); 10 s by default. */
  readonly connectTimeout?: DurationInput;
  readonly tls?: TlsConnectOptions;
  /** Connection name shown by the server (`nats server report connections`). */
  readonly name?: string;
  /** Stream and bucket replicas: 1 by default, 3 in a cluster. */
  readonly replicas?: number;
  /**
   * `"create"` (default): create whatever of the layout is missing, which needs JetStream admin
   * rights; `"verify"`: only open it, failing with `LayoutMissing` ("run `troupe setup`") when
   * something is missing: what a client, worker or coordinator with a role uses (docs/security.md).
   */
  readonly layout?: LayoutMode;
  /**
   * Carry a layout made by an earlier version over to this one (its queued work and records
   * copied into the new streams) instead of failing with `LayoutOutdated`: `troupe setup
   * --migrate` and `Troupe.dev` do; nothing else may run meanwhile.
   */
  readonly migrate?: boolean;
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
  /**
   * How long a submit keeps trying to publish its work message through a leader election
   * or a node's restart (no stream answering, no PubAck in time) before it fails with
   * `NatsFailure`: milliseconds or a duration such as `"1 minute"`; 30 s by default, 0 not to retry.
   */
  readonly submitRetryFor?: DurationInput;
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
  /** How long (ms) a work message's publish is tried again after a transient failure. */
  readonly submitRetryFor: number;
}

/** Inputs and outputs over 256 KiB of JSON go to the object store. */
export const DEFAULT_PAYLOAD_THRESHOLD = 256 * 1024;

/** A submit rides out a leader election (5 to 15 s measured on a loaded 3-node cluster) or a node's restart. */
export const DEFAULT_SUBMIT_RETRY_FOR = 30_000;

/** One connection attempt's bound (`connectTimeout`). */
export const DEFAULT_CONNECT_TIMEOUT = 10_000;
const PING_INTERVAL_MS = 5_000;

export { WORKERS_TTL } from "./layout.js";

const isApiError = (e: unknown, ...codes: number[]) =>
  e instanceof JetStreamApiError && codes.includes(e.code);

/** A NATS error as a `NatsFailure` saying what was being done. */
export const asFailure = (what: string) => (cause: unknown) =>
  new NatsFailure({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}`, cause });

/**
 * Reconnect away from the server just lost. nats.js dials the lost server first (its pool
 * rotates only after that), and a frozen server's port still accepts TCP connections (the
 * kernel does) without ever answering: that costs a whole connect timeout while the other
 * servers of the cluster have elected leaders and carry on. So the first attempt after a
 * disconnect goes to another server of the pool; later ones follow nats.js's rotation,
 * which comes back to the lost server too (a single server, or the only one left).
 */
const awayFromLost = () => {
  let connected: NatsConnection | undefined;
  let lastListen = "";
  const choose = (pool: ReadonlyArray<Server>, info: ServerInfo | null): Server | null => {
    // `info` is the lost server's INFO only on the first attempt after a disconnect (a dial clears it).
    if (info === null || connected === undefined || pool[0]?.listen !== lastListen) return null;
    return pool.find((s) => s.listen !== lastListen) ?? null;
  };
  const watch = (nc: NatsConnection) => {
    connected = nc;
    lastListen = nc.getServer();
    void (async () => {
      for await (const status of nc.status()) if (status.type === "reconnect") lastListen = nc.getServer();
    })().catch(() => undefined);
  };
  return { choose, watch };
};

export const connectNats = async (options: ConnectOptions = {}): Promise<NatsConnection> => {
  const servers = options.servers ?? process.env.NATS_URL ?? "nats://127.0.0.1:4222";
  const opts: ConnectionOptions = {
    servers: typeof servers === "string" ? servers.split(",") : [...servers],
    name: options.name ?? "troupe",
    // Measured: nats-core builds an Error (with a stack) per request for async traces;
    // turning that off roughly doubles client throughput.
    noAsyncTraces: true,
    // A server that stops answering (frozen, cut off) is left after three missed pings, 5 s
    // apart, for another server of the list; nats.js waits 2 × 2 min by default, while an
    // election elsewhere takes seconds. Not less: a loaded process answers pings late.
    pingInterval: PING_INTERVAL_MS,
    maxPingOut: 3,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // Each attempt is bounded: a server that never finishes the handshake is an error, not a hang.
    timeout: parseDuration(options.connectTimeout) ?? DEFAULT_CONNECT_TIMEOUT,
  };
  if (options.user !== undefined) {
    opts.user = options.user;
    opts.pass = options.pass ?? "";
  }
  if (options.token !== undefined) opts.token = options.token;
  if (options.inboxPrefix !== undefined) opts.inboxPrefix = options.inboxPrefix;
  const secret = async (file: string, what: string): Promise<Uint8Array> => {
    try {
      return await readFile(file);
    } catch (e) {
      throw asFailure(`cannot read the ${what} file ${file}`)(e);
    }
  };
  if (options.credentials !== undefined) {
    opts.authenticator = credsAuthenticator(await secret(options.credentials, "credentials"));
  } else if (options.nkey !== undefined) {
    const seed = new TextDecoder().decode(await secret(options.nkey, "nkey seed")).trim();
    opts.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
  }
  if (options.tls !== undefined) opts.tls = { ...options.tls };
  const away = awayFromLost();
  opts.reconnectToServer = away.choose;
  try {
    const nc = await connect(opts);
    away.watch(nc);
    return nc;
  } catch (e) {
    throw await connectFailure(opts.servers as string[], options, e, opts.timeout ?? DEFAULT_CONNECT_TIMEOUT);
  }
};

/** Create a stream of the layout unless it is there (as it is, or made by an earlier version: `upgradeLayout` compares its settings). */
const ensureStream = async (jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string; subjects: string[] }) => {
  try {
    await jsm.streams.add(config);
  } catch (e) {
    // 10058: there already (made by another process, or with other settings).
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

/**
 * What this version changed in the layout, for a layout made by an earlier one: the record
 * buckets' history and TROUPE_EVENTS' subjects are updated in place (by a process that may
 * create the layout); work subjects without task ids and buckets that republish nothing need
 * their messages carried over (`migrate`, run by `troupe setup --migrate` and `Troupe.dev`):
 * anyone else is told so with `LayoutOutdated`. Other drift (replicas, ages) is `troupe setup`'s.
 */
const upgradeLayout = async (nc: NatsConnection, jsm: JetStreamManager, options: ConnectOptions, create: boolean): Promise<void> => {
  const drift = await layoutDrift(jsm, options);
  const outdated = drift.filter((d) => MIGRATED.includes(d.setting));
  if (outdated.length > 0) {
    if (create && options.migrate === true) {
      await migrateLayout(nc, jsm, options);
      return upgradeLayout(nc, jsm, { ...options, migrate: false }, create);
    }
    throw new LayoutOutdated({
      message: `the Troupe layout on this server predates this version (${outdated.map((d) => d.what).join(", ")} ${outdated.length === 1 ? "has" : "have"} no RePublish): stop every Troupe process and run \`troupe setup --migrate\``,
      outdated: outdated.map(formatDrift),
    });
  }
  const versionUpgrades = drift.filter((d) => (d.setting === "max_msgs_per_subject" && (d.actual as number) < (d.configured as number)) || (d.setting === "subjects" && d.stream === EVENTS_STREAM));
  if (versionUpgrades.length === 0) return;
  if (!create) {
    throw new LayoutOutdated({ message: `the Troupe layout on this server predates this version: run \`troupe setup\``, outdated: versionUpgrades.map(formatDrift) });
  }
  for (const d of versionUpgrades) await jsm.streams.update(d.stream, { [d.setting]: d.configured });
};

/** Create (or find) the whole layout (the README's NATS layout) with `replicas` copies. */
export const openNats = async (nc: NatsConnection, options: ConnectOptions = {}): Promise<NatsHandle> => {
  const submitRetryFor = parseDuration(options.submitRetryFor) ?? DEFAULT_SUBMIT_RETRY_FOR;
  // A server without JetStream is not a passing unavailability: said at once.
  if (nc.info !== undefined && nc.info.jetstream !== true) {
    throw new NatsFailure({ message: `the NATS server at ${nc.getServer()} runs without JetStream, which Troupe needs (start it with -js, or jetstream {} in its configuration)` });
  }
  try {
    // Idempotent, so tried again through a passing unavailability (an election, a loaded
    // cluster's slow answer), as long as a submit would be.
    return await withRetryFor(nc, () => openLayout(nc, options), isTransientJetStream, submitRetryFor);
  } catch (e) {
    if (e instanceof TopologyConflict || e instanceof LayoutMissing || e instanceof LayoutOutdated) throw e;
    throw permissionDenied(e) ?? asFailure(`cannot ${options.layout === "verify" ? "open" : "create"} the Troupe streams and buckets`)(e);
  }
};

const openLayout = async (nc: NatsConnection, options: ConnectOptions): Promise<NatsHandle> => {
  const replicas = options.replicas ?? 1;
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  // A role without layout rights only checks the layout is there (LayoutMissing otherwise).
  const create = options.layout !== "verify";
  if (create) {
    for (const stream of layoutStreams(options)) await ensureStream(jsm, stream);

    for (const [stream, durable, ackWaitS] of LAYOUT_CONSUMERS) {
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
  } else {
    await verifyLayout(jsm);
  }
  // Before the buckets are opened: a migration makes some of them again.
  await upgradeLayout(nc, jsm, options, create);
  const kvm = new Kvm(js);
  const bucket = (name: string): Promise<KV> => {
    const b = LAYOUT_BUCKETS.find((x) => x.name === name)!;
    return create ? ensureBucket(jsm, kvm, name, bucketOptions(b, replicas)) : kvm.open(name);
  };
  const [tasks, workers, workflows, pauses, schedules, leases, limits, openRuns, methods] = await Promise.all(
    [TASKS_BUCKET, WORKERS_BUCKET, WORKFLOWS_BUCKET, PAUSES_BUCKET, SCHEDULES_BUCKET, LEASES_BUCKET, LIMITS_BUCKET, OPEN_RUNS_BUCKET, METHODS_BUCKET].map(bucket),
  ) as [KV, KV, KV, KV, KV, KV, KV, KV, KV];
  const payloads = create
    ? await new Objm(js).create(PAYLOADS_BUCKET, { replicas, storage: StorageType.File })
    : await new Objm(js).open(PAYLOADS_BUCKET);
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
    submitRetryFor: parseDuration(options.submitRetryFor) ?? DEFAULT_SUBMIT_RETRY_FOR,
  };
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
