/**
 * The roles of a Troupe deployment and the least NATS permissions each needs, as data:
 * `troupe auth init <dir>` writes them as a nats-server `authorization` block (`auth.conf`, to
 * `include`) and one connection file per role (`<role>.json`). Only the admin manages the
 * layout (streams, buckets, their settings); the others open it (layout "verify") and use it.
 */
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, rm, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import bcrypt from "bcryptjs";
import { LAYOUT_BUCKETS, PAYLOADS_STREAM, layoutStreams } from "./layout.js";
import {
  ADVISORIES_STREAM,
  COORDINATOR_CONSUMER,
  EVENTS_STREAM,
  INDEX_STREAM,
  LEASES_BUCKET,
  LIMITS_BUCKET,
  LOGS_STREAM,
  METHODS_BUCKET,
  OPEN_RUNS_BUCKET,
  PAUSES_BUCKET,
  PAYLOADS_BUCKET,
  REAPER_CONSUMER,
  SCHEDULES_BUCKET,
  STEPS_STREAM,
  TASKS_BUCKET,
  TASKS_STREAM,
  WORKERS_BUCKET,
  WORKFLOWS_BUCKET,
  consumerName,
  BELLS_ROOT,
  RECORD_SUBJECTS,
  isValidQueueName,
  isValidTaskName,
  PRIORITIES,
  TASKS_ROOT,
  TASKS_SUBJECTS,
} from "./topology.js";
import { AuthFilesExist, InvalidOption } from "../errors.js";

export const ROLES = ["admin", "client", "operator", "worker", "coordinator", "inspector", "gateway", "retention"] as const;
export type Role = (typeof ROLES)[number];

export interface RolePermissions {
  readonly publish: ReadonlyArray<string>;
  readonly subscribe: ReadonlyArray<string>;
  /** Publishes refused even when an allow pattern matches. */
  readonly deny: ReadonlyArray<string>;
  /** Subscriptions refused (messages on these subjects never delivered) even when an allow pattern matches. */
  readonly subscribeDeny?: ReadonlyArray<string>;
  /**
   * Whether it answers requests (`allow_responses`): it may publish once to the reply subject
   * of each request it received. Only workers (their control endpoints, JSON-RPC) and the
   * gateway (JSON-RPC) answer; a role without it cannot forge a reply.
   */
  readonly allowResponses: boolean;
}

const api = (s: string) => `$JS.API.${s}`;
const kv = (bucket: string) => `$KV.${bucket}.>`;
const kvKey = (bucket: string, key: string) => `$KV.${bucket}.${key}`;
const purge = (stream: string) => api(`STREAM.PURGE.${stream}`);
const kvStream = (bucket: string) => `KV_${bucket}`;

/** Streams anyone with a role may read through short-lived (ordered) consumers: records, histories, logs, payloads. */
const READ_STREAMS = [EVENTS_STREAM, LOGS_STREAM, INDEX_STREAM, PAYLOADS_STREAM, ...LAYOUT_BUCKETS.map((b) => kvStream(b.name))];

/** Only the retention identity removes messages: a purge's body (its filter) is not a subject a permission can limit. */
const REMOVALS = [api("STREAM.PURGE.>"), api("STREAM.MSG.DELETE.>")];

/** The one subject JSON-RPC is served on, in its queue group: only workers and the gateway subscribe to it. */
const RPC = "troupe.rpc";

/** What every role but the admin may do: look the layout up, read records and histories, get replies. */
const READ: RolePermissions = {
  publish: [
    api("INFO"),
    api("STREAM.INFO.*"),
    api("STREAM.NAMES"),
    api("STREAM.LIST"),
    api("STREAM.MSG.GET.*"),
    api("DIRECT.GET.>"),
    api("CONSUMER.INFO.*.*"),
    api("CONSUMER.NAMES.*"),
    api("CONSUMER.LIST.*"),
    ...READ_STREAMS.flatMap((s) => [api(`CONSUMER.CREATE.${s}`), api(`CONSUMER.CREATE.${s}.>`), api(`CONSUMER.MSG.NEXT.${s}.*`), api(`CONSUMER.DELETE.${s}.*`)]),
    "$JS.FC.>",
  ],
  subscribe: ["_INBOX.>"],
  // Layout management is the admin's alone: no role creates, changes or deletes a stream.
  // Records' writes are heard on `troupe.events.<kind>.<id>` from the server alone (RePublish).
  deny: [RECORD_SUBJECTS, api("STREAM.CREATE.>"), api("STREAM.UPDATE.>"), api("STREAM.DELETE.>"), api(`CONSUMER.DELETE.${TASKS_STREAM}.>`), api(`CONSUMER.DELETE.${STEPS_STREAM}.>`), api(`CONSUMER.DELETE.${ADVISORIES_STREAM}.>`)],
  allowResponses: false,
};

/** Large payloads: written (chunks and their meta), never purged (an overwrite or delete of an object purges its old chunks: retention's). */
const PAYLOADS = [`$O.${PAYLOADS_BUCKET}.>`];

const withRead = (extra: Partial<RolePermissions>): RolePermissions => ({
  publish: [...READ.publish, ...(extra.publish ?? [])],
  subscribe: [...READ.subscribe, ...(extra.subscribe ?? [])],
  // No role but the admin and the retention identity purges or deletes a message.
  deny: [...READ.deny, ...REMOVALS, ...(extra.deny ?? [])],
  subscribeDeny: extra.subscribeDeny ?? [],
  allowResponses: extra.allowResponses ?? false,
});

/** What a client publishes to submit tasks and start workflows, and to read (its stats requests included). */
const SUBMIT = [
  ...[TASKS_BUCKET, WORKFLOWS_BUCKET, OPEN_RUNS_BUCKET].map(kv),
  ...PAYLOADS,
  "troupe.tasks.>",
  "troupe.index.>",
  // Workers' stats (`troupe workers`, `ls` running tasks): a request a worker answers; not drain, shutdown or cancel.
  "troupe.control.*.stats",
  RPC,
  "$SRV.>",
];

/** Each role's permissions. */
export const rolePermissions = (role: Role): RolePermissions => {
  switch (role) {
    case "admin":
      return { publish: [">"], subscribe: [">"], deny: [], allowResponses: true };
    case "client":
      // Submit and read: tasks, workflow runs, results, histories, logs, stats.
      return withRead({ publish: SUBMIT, subscribe: ["troupe.events.>", "troupe.logs.>"], subscribeDeny: [RPC] });
    case "operator":
      // A client that also controls: cancel, retry, drain, shutdown, pause, schedules.
      return withRead({
        publish: [...SUBMIT, ...[PAUSES_BUCKET, SCHEDULES_BUCKET].map(kv), "troupe.control.>"],
        subscribe: ["troupe.events.>", "troupe.logs.>"],
        subscribeDeny: [RPC],
      });
    case "gateway":
      // A client that also serves JSON-RPC (`troupe gateway`): each request is a task it submits.
      return withRead({ publish: SUBMIT, subscribe: ["troupe.events.>", "troupe.logs.>", RPC, "$SRV.>"], allowResponses: true });
    case "worker":
      // Its task types' consumers are its own to create and tune (ensureTaskConsumer); no stream is.
      // Records of the tasks it runs, its heartbeat, rate limits, the methods it serves; no
      // workflow, schedule, pause or lease, and no other worker's control.
      return withRead({
        publish: [
          ...[TASKS_BUCKET, WORKERS_BUCKET, LIMITS_BUCKET, METHODS_BUCKET].map(kv),
          ...PAYLOADS,
          api(`CONSUMER.CREATE.${TASKS_STREAM}.>`),
          api(`CONSUMER.DURABLE.CREATE.${TASKS_STREAM}.*`),
          api(`CONSUMER.MSG.NEXT.${TASKS_STREAM}.*`),
          api(`CONSUMER.MSG.NEXT.${ADVISORIES_STREAM}.${REAPER_CONSUMER}`),
          `$JS.ACK.${TASKS_STREAM}.>`,
          `$JS.ACK.${ADVISORIES_STREAM}.${REAPER_CONSUMER}.>`,
          "troupe.tasks.>",
          "troupe.index.>",
          "troupe.steps.>",
          "troupe.logs.>",
          // Its notes (an attempt fenced, a message rejected); records' subjects are the server's.
          "troupe.events.*.*.*",
          "$SRV.>",
        ],
        subscribe: ["troupe.>", "$SRV.>"],
        allowResponses: true,
      });
    case "coordinator":
      // Workflow runs (steps are tasks it submits), schedules under a lease, the reaper; it
      // cancels a cancelled run's steps, and controls nothing else.
      return withRead({
        publish: [
          ...[TASKS_BUCKET, WORKFLOWS_BUCKET, OPEN_RUNS_BUCKET, SCHEDULES_BUCKET, LIMITS_BUCKET].map(kv),
          kvKey(LEASES_BUCKET, "scheduler"),
          kvKey(LEASES_BUCKET, "reconcile"),
          ...PAYLOADS,
          api(`CONSUMER.MSG.NEXT.${STEPS_STREAM}.${COORDINATOR_CONSUMER}`),
          `$JS.ACK.${STEPS_STREAM}.${COORDINATOR_CONSUMER}.>`,
          // It fails tasks whose deliveries ran out (the reaper), as full workers do.
          api(`CONSUMER.MSG.NEXT.${ADVISORIES_STREAM}.${REAPER_CONSUMER}`),
          `$JS.ACK.${ADVISORIES_STREAM}.${REAPER_CONSUMER}.>`,
          "troupe.tasks.>",
          "troupe.index.>",
          "troupe.steps.>",
          "troupe.control.*.cancel",
          "troupe.control.*.stats",
          "$SRV.>",
        ],
        subscribe: ["troupe.>"],
        subscribeDeny: [RPC],
      });
    case "inspector":
      // Reads only, and asks workers for their stats.
      return withRead({ publish: ["troupe.control.*.stats", "$SRV.>"], subscribe: ["troupe.>"], subscribeDeny: [RPC] });
    case "retention":
      // The sweeper alone (`troupe retention`): removes finished records, their payloads, index
      // entries and a cancelled task's waiting work, under its lease.
      return {
        publish: [
          ...READ.publish,
          ...[kvStream(TASKS_BUCKET), kvStream(WORKFLOWS_BUCKET), kvStream(OPEN_RUNS_BUCKET), INDEX_STREAM, PAYLOADS_STREAM, TASKS_STREAM].map(purge),
          api(`STREAM.MSG.DELETE.${INDEX_STREAM}`),
          api(`STREAM.MSG.DELETE.${TASKS_STREAM}`),
          kvKey(LEASES_BUCKET, "retention"),
          // A removed object's meta is marked deleted.
          `$O.${PAYLOADS_BUCKET}.M.>`,
        ],
        subscribe: READ.subscribe,
        deny: READ.deny,
        subscribeDeny: [RPC],
        allowResponses: false,
      };
  }
};

export interface RoleCredentials {
  readonly user: string;
  readonly pass: string;
}

const quoted = (items: ReadonlyArray<string>) => `[${items.map((s) => JSON.stringify(s)).join(", ")}]`;

/**
 * A worker role limited to some queues' task types (`troupe auth init --worker <queue>=<type>,…`):
 * it may create, pull and acknowledge only those types' consumers (each priority's), sees
 * only its queues' work subjects, and may not read the work stream's messages. Consumer
 * names hold one subject token, so a permission cannot match "every consumer of a queue":
 * the types are listed. A keyed type's consumers (one per key) are not among them.
 */
export interface WorkerScope {
  readonly queue: string;
  readonly types: ReadonlyArray<string>;
}

/** One user of auth.conf: a role, and for a scoped worker the queue it serves. */
export interface Identity {
  readonly role: Role;
  /** `troupe-<role>`, `troupe-worker-<queue>`: the user name and the connection file's name. */
  readonly name: string;
  readonly scope?: WorkerScope;
}

/**
 * The inbox prefix of an identity: its replies and pulled messages come to `<prefix>.…`,
 * which only it may subscribe to (with `_INBOX.>` any user could read any other's replies,
 * pulled work included).
 */
export const inboxPrefix = (identity: Identity) => `_INBOX_${identity.name}`;

const drop = (items: ReadonlyArray<string>, gone: ReadonlyArray<string>) => items.filter((i) => !gone.includes(i));

/**
 * A scoped worker's permissions: the worker role's, with the work stream narrowed to its
 * queue's types, its rate limits and RPC directory entries to its types', and no JSON-RPC
 * serving (a member of the `troupe-rpc` group answers for every queue's methods).
 */
const scopedWorker = (base: RolePermissions, { queue, types }: WorkerScope): RolePermissions => {
  const consumers = types.flatMap((type) => PRIORITIES.map((priority) => consumerName(queue, type, priority)));
  return {
    publish: [
      ...drop(base.publish, [
        api(`CONSUMER.CREATE.${TASKS_STREAM}.>`),
        api(`CONSUMER.DURABLE.CREATE.${TASKS_STREAM}.*`),
        api(`CONSUMER.MSG.NEXT.${TASKS_STREAM}.*`),
        `$JS.ACK.${TASKS_STREAM}.>`,
        // MAX_DELIVERIES of every queue are reaped by full workers: reaping reads the message.
        api(`CONSUMER.MSG.NEXT.${ADVISORIES_STREAM}.${REAPER_CONSUMER}`),
        `$JS.ACK.${ADVISORIES_STREAM}.${REAPER_CONSUMER}.>`,
        // Not other queues' work subjects, index entries, limits or methods.
        "troupe.tasks.>",
        "troupe.index.>",
        kv(LIMITS_BUCKET),
        kv(METHODS_BUCKET),
      ]),
      // Its own consumers only, by name, each over this queue's work (the filter is the last
      // part of a create subject): no other queue's consumer can be made or remade.
      ...consumers.map((c) => api(`CONSUMER.CREATE.${TASKS_STREAM}.${c}.${TASKS_ROOT}${queue}.>`)),
      ...consumers.map((c) => api(`CONSUMER.MSG.NEXT.${TASKS_STREAM}.${c}`)),
      ...consumers.map((c) => `$JS.ACK.${TASKS_STREAM}.${c}.>`),
      `${TASKS_ROOT}${queue}.>`,
      `troupe.index.task.*.${queue}.>`,
      ...types.map((type) => kvKey(LIMITS_BUCKET, `${queue}.${type}`)),
      ...types.map((type) => kvKey(METHODS_BUCKET, type)),
    ],
    subscribe: [...drop(base.subscribe, ["troupe.>"]), "troupe.control.>", "troupe.events.>", `${BELLS_ROOT}${queue}.>`],
    deny: [...base.deny, api(`DIRECT.GET.${TASKS_STREAM}`), api(`DIRECT.GET.${TASKS_STREAM}.>`), api(`STREAM.MSG.GET.${TASKS_STREAM}`)],
    subscribeDeny: [...(base.subscribeDeny ?? []), RPC],
    allowResponses: true,
  };
};

/** What an identity may do: its role's permissions on its own inbox; no one but workers sees work subjects. */
export const identityPermissions = (identity: Identity): RolePermissions => {
  const base = rolePermissions(identity.role);
  if (identity.role === "admin") return base;
  const own = `${inboxPrefix(identity)}.>`;
  const onInbox: RolePermissions = {
    ...base,
    subscribe: base.subscribe.map((s) => (s === "_INBOX.>" ? own : s)),
    subscribeDeny: identity.role === "worker" ? (base.subscribeDeny ?? []) : [...(base.subscribeDeny ?? []), TASKS_SUBJECTS],
  };
  return identity.scope === undefined ? onInbox : scopedWorker(onInbox, identity.scope);
};

/** Each role once, then a scoped worker per `--worker` given. */
export const identities = (scopes: ReadonlyArray<WorkerScope> = []): Identity[] => [
  ...ROLES.map((role) => ({ role, name: `troupe-${role}` })),
  ...scopes.map((scope) => ({ role: "worker" as const, name: `troupe-worker-${scope.queue}`, scope })),
];

/** `<queue>=<type>[,<type>…]` (`--worker payments=charge,refund`), checked. */
export const parseWorkerScope = (text: string): WorkerScope => {
  const [queue = "", list = ""] = text.split("=", 2);
  const types = list.split(",").map((t) => t.trim()).filter((t) => t !== "");
  if (!isValidQueueName(queue) || types.length === 0 || !types.every(isValidTaskName)) {
    throw new InvalidOption({ message: `--worker ${text}: expected <queue>=<task>[,<task>…], e.g. payments=charge,refund` });
  }
  return { queue, types };
};

/**
 * One user of auth.conf: an identity's name and `password` as the server stores it (a bcrypt
 * hash, `$2b$…`, which nats-server compares a password with, so the file gives no one a
 * password), or a user nkey (`U…`, the public key of one process's seed) with the identity's
 * permissions: one process of a role, refused alone by removing its line.
 */
export type AuthUser = { readonly identity: Identity; readonly password: string } | { readonly identity: Identity; readonly nkey: string };

/** The nats-server `authorization { users: [...] }` block for these users. */
export const authConf = (users: ReadonlyArray<AuthUser>): string => {
  const blocks = users.map((user) => {
    const { identity } = user;
    const login = "nkey" in user ? `nkey: ${JSON.stringify(user.nkey)}` : `user: ${JSON.stringify(identity.name)}, password: ${JSON.stringify(user.password)}`;
    const p = identityPermissions(identity);
    const deny = p.deny.length === 0 ? "" : `, deny: ${quoted(p.deny)}`;
    const subscribeDeny = (p.subscribeDeny ?? []).length === 0 ? "" : `, deny: ${quoted(p.subscribeDeny ?? [])}`;
    return [
      `    # ${identity.role}${identity.scope === undefined ? "" : ` of queue ${identity.scope.queue} (${identity.scope.types.join(", ")})`}${"nkey" in user ? ` (${identity.name}, one process)` : ""}`,
      `    {`,
      `      ${login}`,
      `      permissions: {`,
      `        publish: { allow: ${quoted(p.publish)}${deny} }`,
      `        subscribe: { allow: ${quoted(p.subscribe)}${subscribeDeny} }`,
      // Only the identities that answer requests (workers' control endpoints, JSON-RPC) may reply.
      ...(identity.role === "admin" || !p.allowResponses ? [] : [`        allow_responses: true`]),
      `      }`,
      `    }`,
    ].join("\n");
  });
  return `# Troupe roles (troupe auth init): include this file in the nats-server configuration.\n# Passwords are bcrypt hashes; each role's password is in its own <role>.json.\n# Layout streams: ${layoutStreams().map((s) => s.name).join(", ")}.\nauthorization {\n  users: [\n${blocks.join("\n")}\n  ]\n}\n`;
};

/** The connection options an identity's file holds: `Troupe.connect({ servers, ...JSON.parse(file) })` or `--auth FILE`. */
export const roleConnection = (identity: Identity, pass: string) => ({
  user: identity.name,
  pass,
  // Only the admin creates the layout; every other role only opens it, on its own inbox.
  ...(identity.role === "admin" ? {} : { layout: "verify" as const, inboxPrefix: inboxPrefix(identity) }),
});

export interface AuthInitResult {
  /** The `auth.conf` written. */
  readonly conf: string;
  /** Each identity's connection file, by its file name without `.json` (`admin`, `worker-payments`). */
  readonly files: Readonly<Record<string, string>>;
}

/** The connection file's name of an identity: `<role>.json`, `worker-<queue>.json`. */
export const identityFile = (identity: Identity) => identity.name.slice("troupe-".length);

/**
 * bcrypt's cost in auth.conf. The server pays it on every connection; the passwords are 192
 * random bits, so the hash guards against reading them, not against guessing them.
 */
const BCRYPT_COST = 10;

export interface WriteAuthOptions {
  /** Replace the files an earlier `troupe auth init` left (their passwords stop working once the server reloads). */
  readonly force?: boolean;
}

/**
 * `troupe auth init <dir> [--worker <queue>=<types>]… [--force]`: fresh random passwords,
 * `<dir>/auth.conf` (their bcrypt hashes) and one `<dir>/<name>.json` each (the password).
 * The folder is made (or set to) mode 0700 and each file is created new, mode 0600 (`wx`: a
 * file or a symbolic link in its place is never written through). A folder that already holds
 * any of these files is refused with `AuthFilesExist`, unless `force`: then they are removed
 * (a link, not what it points to) and written anew.
 */
export const writeAuth = async (dir: string, scopes: ReadonlyArray<WorkerScope> = [], options: WriteAuthOptions = {}): Promise<AuthInitResult> => {
  const all = identities(scopes);
  const conf = join(dir, "auth.conf");
  const files: Record<string, string> = Object.fromEntries(all.map((identity) => [identityFile(identity), join(dir, `${identityFile(identity)}.json`)]));
  const targets = [conf, ...Object.values(files)];
  const present = (await Promise.all(targets.map(async (f) => ((await lstat(f).then(() => true, () => false)) ? [f] : [])))).flat();
  if (present.length > 0 && options.force !== true) {
    throw new AuthFilesExist({
      message: `${dir} already holds ${present.map((f) => basename(f)).join(", ")} (a server may still use their passwords): nothing written; pass --force to replace them`,
      files: present,
    });
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const users = await Promise.all(
    all.map(async (identity) => {
      const pass = randomBytes(24).toString("base64url");
      return { identity, pass, password: await bcrypt.hash(pass, BCRYPT_COST) };
    }),
  );
  // Removed only now that everything is ready: `rm` unlinks a symbolic link itself.
  await Promise.all(present.map((f) => rm(f, { force: true })));
  const write = (file: string, text: string) => writeFile(file, text, { mode: 0o600, flag: "wx" });
  await write(conf, authConf(users));
  for (const { identity, pass } of users) await write(files[identityFile(identity)]!, `${JSON.stringify(roleConnection(identity, pass), null, 2)}\n`);
  return { conf, files };
};
