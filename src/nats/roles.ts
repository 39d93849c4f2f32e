/**
 * The roles of a Troupe deployment and the least NATS permissions each needs, as data:
 * `troupe auth init <dir>` writes them as a nats-server `authorization` block (`auth.conf`, to
 * `include`) and one connection file per role (`<role>.json`). Only the admin manages the
 * layout (streams, buckets, their settings); the others open it (layout "verify") and use it.
 */
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
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
} from "./topology.js";

export const ROLES = ["admin", "client", "worker", "coordinator", "inspector"] as const;
export type Role = (typeof ROLES)[number];

export interface RolePermissions {
  readonly publish: ReadonlyArray<string>;
  readonly subscribe: ReadonlyArray<string>;
  /** Publishes refused even when an allow pattern matches. */
  readonly deny: ReadonlyArray<string>;
}

const api = (s: string) => `$JS.API.${s}`;
const kv = (bucket: string) => `$KV.${bucket}.>`;
const purge = (stream: string) => api(`STREAM.PURGE.${stream}`);
const kvStream = (bucket: string) => `KV_${bucket}`;

/** Streams anyone with a role may read through short-lived (ordered) consumers: records, histories, logs, payloads. */
const READ_STREAMS = [EVENTS_STREAM, LOGS_STREAM, INDEX_STREAM, PAYLOADS_STREAM, ...LAYOUT_BUCKETS.map((b) => kvStream(b.name))];

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
  deny: [api("STREAM.CREATE.>"), api("STREAM.UPDATE.>"), api("STREAM.DELETE.>"), api(`CONSUMER.DELETE.${TASKS_STREAM}.>`), api(`CONSUMER.DELETE.${STEPS_STREAM}.>`), api(`CONSUMER.DELETE.${ADVISORIES_STREAM}.>`)],
};

/** Retention (run by workers and coordinators) removes finished records, their payloads, index entries and events. */
const RETENTION = [kvStream(TASKS_BUCKET), kvStream(WORKFLOWS_BUCKET), kvStream(OPEN_RUNS_BUCKET), EVENTS_STREAM, INDEX_STREAM, PAYLOADS_STREAM].map(purge);

const PAYLOADS = [`$O.${PAYLOADS_BUCKET}.>`, purge(PAYLOADS_STREAM)];

const withRead = (extra: Partial<RolePermissions>): RolePermissions => ({
  publish: [...READ.publish, ...(extra.publish ?? [])],
  subscribe: [...READ.subscribe, ...(extra.subscribe ?? [])],
  deny: [...READ.deny, ...(extra.deny ?? [])],
});

/** Each role's permissions. */
export const rolePermissions = (role: Role): RolePermissions => {
  switch (role) {
    case "admin":
      return { publish: [">"], subscribe: [">"], deny: [] };
    case "client":
      // Submit, wait, cancel, retry, schedule, pause; workflows started from a client.
      return withRead({
        publish: [
          ...[TASKS_BUCKET, WORKFLOWS_BUCKET, OPEN_RUNS_BUCKET, PAUSES_BUCKET, SCHEDULES_BUCKET].map(kv),
          ...PAYLOADS,
          purge(kvStream(OPEN_RUNS_BUCKET)),
          "troupe.tasks.>",
          "troupe.events.>",
          "troupe.index.>",
          "troupe.control.>",
          "troupe.rpc",
          "$SRV.>",
        ],
        subscribe: ["troupe.notify.>", "troupe.events.>", "troupe.logs.>"],
      });
    case "worker":
      // Its task types' consumers are its own to create and tune (ensureTaskConsumer); no stream is.
      return withRead({
        publish: [
          ...[TASKS_BUCKET, WORKERS_BUCKET, WORKFLOWS_BUCKET, OPEN_RUNS_BUCKET, LIMITS_BUCKET, METHODS_BUCKET, LEASES_BUCKET].map(kv),
          ...PAYLOADS,
          ...RETENTION,
          api(`CONSUMER.CREATE.${TASKS_STREAM}.>`),
          api(`CONSUMER.DURABLE.CREATE.${TASKS_STREAM}.*`),
          api(`CONSUMER.MSG.NEXT.${TASKS_STREAM}.*`),
          api(`CONSUMER.MSG.NEXT.${ADVISORIES_STREAM}.${REAPER_CONSUMER}`),
          api(`STREAM.MSG.DELETE.${TASKS_STREAM}`),
          `$JS.ACK.${TASKS_STREAM}.>`,
          `$JS.ACK.${ADVISORIES_STREAM}.${REAPER_CONSUMER}.>`,
          "troupe.>",
          "$SRV.>",
        ],
        subscribe: ["troupe.>", "$SRV.>"],
      });
    case "coordinator":
      // Workflow runs (steps are tasks it submits), schedules under a lease, retention.
      return withRead({
        publish: [
          ...[TASKS_BUCKET, WORKFLOWS_BUCKET, OPEN_RUNS_BUCKET, SCHEDULES_BUCKET, LEASES_BUCKET, LIMITS_BUCKET, PAUSES_BUCKET].map(kv),
          ...PAYLOADS,
          ...RETENTION,
          api(`CONSUMER.MSG.NEXT.${STEPS_STREAM}.${COORDINATOR_CONSUMER}`),
          `$JS.ACK.${STEPS_STREAM}.${COORDINATOR_CONSUMER}.>`,
          "troupe.tasks.>",
          "troupe.events.>",
          "troupe.index.>",
          "troupe.notify.>",
          "troupe.control.>",
          "$SRV.>",
        ],
        subscribe: ["troupe.>", "$SRV.>"],
      });
    case "inspector":
      // Reads only, and asks workers for their stats.
      return withRead({ publish: ["troupe.control.*.stats", "$SRV.>"], subscribe: ["troupe.>", "$SRV.>"] });
  }
};

export interface RoleCredentials {
  readonly user: string;
  readonly pass: string;
}

const quoted = (items: ReadonlyArray<string>) => `[${items.map((s) => JSON.stringify(s)).join(", ")}]`;

/** The nats-server `authorization { users: [...] }` block for these credentials. */
export const authConf = (credentials: Readonly<Record<Role, RoleCredentials>>): string => {
  const users = ROLES.map((role) => {
    const p = rolePermissions(role);
    const { user, pass } = credentials[role];
    const deny = p.deny.length === 0 ? "" : `, deny: ${quoted(p.deny)}`;
    return [
      `    # ${role}`,
      `    {`,
      `      user: ${JSON.stringify(user)}, password: ${JSON.stringify(pass)}`,
      `      permissions: {`,
      `        publish: { allow: ${quoted(p.publish)}${deny} }`,
      `        subscribe: { allow: ${quoted(p.subscribe)} }`,
      // Workers and gateways answer requests (micro services, JSON-RPC) on the requesters' inboxes.
      ...(role === "admin" ? [] : [`        allow_responses: true`]),
      `      }`,
      `    }`,
    ].join("\n");
  });
  return `# Troupe roles (troupe auth init): include this file in the nats-server configuration.\n# Layout streams: ${layoutStreams().map((s) => s.name).join(", ")}.\nauthorization {\n  users: [\n${users.join("\n")}\n  ]\n}\n`;
};

/** The connection options a role's file holds: `Troupe.connect({ servers, ...JSON.parse(file) })` or `--auth FILE`. */
export const roleConnection = (role: Role, credentials: RoleCredentials) => ({
  user: credentials.user,
  pass: credentials.pass,
  // Only the admin creates the layout; every other role only opens it.
  ...(role === "admin" ? {} : { layout: "verify" as const }),
});

export interface AuthInitResult {
  /** The `auth.conf` written. */
  readonly conf: string;
  /** Each role's connection file. */
  readonly files: Readonly<Record<Role, string>>;
}

/** `troupe auth init <dir>`: fresh random passwords, `<dir>/auth.conf` and `<dir>/<role>.json` (mode 0600). */
export const writeAuth = async (dir: string): Promise<AuthInitResult> => {
  await mkdir(dir, { recursive: true });
  const credentials = Object.fromEntries(ROLES.map((role) => [role, { user: `troupe-${role}`, pass: randomBytes(24).toString("base64url") }])) as Record<Role, RoleCredentials>;
  const conf = join(dir, "auth.conf");
  await writeFile(conf, authConf(credentials), { mode: 0o600 });
  const files = {} as Record<Role, string>;
  for (const role of ROLES) {
    files[role] = join(dir, `${role}.json`);
    await writeFile(files[role], `${JSON.stringify(roleConnection(role, credentials[role]), null, 2)}\n`, { mode: 0o600 });
  }
  return { conf, files };
};
