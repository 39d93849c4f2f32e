/**
 * Configuration: every connection, layout, retention, worker, JSON-RPC, metrics and log
 * option from a config file (`troupe.config.json`, `.yaml` or `.yml`, the first found walking
 * up from the working directory, or the file `TROUPE_CONFIG` names), from `TROUPE_*`
 * variables, and from overrides (the CLI's flags). Precedence: override > variable > file > default. Every value
 * is decoded with an Effect Schema; a bad one, or a key the file should not have, is
 * `InvalidOption` naming the file or variable and the key. The SDK never reads any of this by
 * itself: `Troupe.connect(loadConfig().connection)` is the user's choice.
 */
import { existsSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { Duration, Schema, SchemaTransformation } from "effect";
import { parse as parseYaml } from "yaml";
import { parseDuration } from "./duration.js";
import { InvalidOption } from "./errors.js";
import { decodeValueWith } from "./nats/codec.js";
import { DEFAULT_PAYLOAD_THRESHOLD, DEFAULT_SUBMIT_RETRY_FOR, type ConnectOptions } from "./nats/connection.js";
import type { MetricsOptions } from "./metrics/server.js";
import type { RpcOptions } from "./rpc/service.js";
import type { StopOptions, WorkerOptions } from "./worker/worker.js";

/** The names a config file may have, looked for in this order in each folder from the working directory up. */
export const CONFIG_FILES = ["troupe.config.json", "troupe.config.yaml", "troupe.config.yml"] as const;

/** How one kind of value is checked, read from text (a variable, a flag) and shown. */
interface Kind<T> {
  readonly schema: Schema.Decoder<T, never>;
  /** What a value must be, as an error says it. */
  readonly expected: string;
  /** A variable's or a flag's text as the value it stands for, before it is decoded. */
  readonly fromText: (text: string) => unknown;
  /** A path or a module: a config file's is relative to the file's folder. */
  readonly path?: boolean;
  readonly show?: (value: T) => string;
}

const NUMBER = /^[+-]?\d+(\.\d+)?$/;
const numberOrText = (text: string): unknown => (NUMBER.test(text.trim()) ? Number(text) : text);
const asText = (text: string): unknown => text;

const Milliseconds = Schema.Union([Schema.Number, Schema.String])
  .check(Schema.makeFilter((value) => parseDuration(value) !== undefined))
  .pipe(Schema.decodeTo(Schema.Number, SchemaTransformation.transform({ decode: (value) => parseDuration(value)!, encode: (ms) => ms })));
const showDuration = (ms: number) => Duration.format(Duration.millis(ms));

const text: Kind<string> = { schema: Schema.NonEmptyString, expected: "a non-empty string", fromText: asText };
const path: Kind<string> = { ...text, expected: "a path", path: true };
const servers: Kind<ReadonlyArray<string>> = {
  schema: Schema.Union([Schema.String, Schema.Array(Schema.String)]).pipe(
    Schema.decodeTo(
      Schema.Array(Schema.NonEmptyString).check(Schema.isMinLength(1)),
      SchemaTransformation.transform<ReadonlyArray<string>, string | ReadonlyArray<string>>({
        decode: (v) => (typeof v === "string" ? v.split(",") : v).map((s) => s.trim()),
        encode: (v) => v,
      }),
    ),
  ),
  expected: "a server URL, several comma-separated, or a list of them",
  fromText: asText,
  show: (urls) => urls.join(","),
};
const positiveInt: Kind<number> = { schema: Schema.Int.check(Schema.isGreaterThan(0)), expected: "a positive integer", fromText: numberOrText };
const port: Kind<number> = {
  schema: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65_535 })),
  expected: "a port number (0 to 65535)",
  fromText: numberOrText,
};
const duration: Kind<number> = {
  schema: Milliseconds,
  expected: 'a duration (milliseconds, or a string such as "30s" or "30 seconds")',
  fromText: numberOrText,
  show: showDuration,
};
const durationOrFalse: Kind<number | false> = {
  schema: Schema.Union([Schema.Literal(false), Milliseconds]),
  expected: `${duration.expected} or false`,
  fromText: (t) => (t.trim() === "false" ? false : numberOrText(t)),
  show: (v) => (v === false ? "false" : showDuration(v)),
};
const BOOLEAN_TEXT: Readonly<Record<string, boolean>> = { true: true, false: false, "1": true, "0": false, yes: true, no: false };
const boolean: Kind<boolean> = {
  schema: Schema.Boolean,
  expected: "true or false",
  fromText: (t) => BOOLEAN_TEXT[t.trim().toLowerCase()] ?? t,
};
const oneOf = <const L extends ReadonlyArray<string>>(literals: L): Kind<L[number]> => ({
  schema: Schema.Literals(literals),
  expected: `one of ${literals.join(", ")}`,
  fromText: asText,
});

interface Setting<T> {
  readonly kind: Kind<T>;
  /** The variables that set it, the first set one winning. */
  readonly env: ReadonlyArray<string>;
  /** Shown as `****`, in errors too. */
  readonly secret?: boolean;
  /** What applies when nothing sets it (the SDK's own default, shown by `troupe config`; never passed on). */
  readonly fallback?: (resolved: Resolved) => T | undefined;
}

/** What a default may depend on. */
interface Resolved {
  readonly isolated: boolean;
  readonly executors: number | undefined;
}

const setting = <T>(kind: Kind<T>, env: ReadonlyArray<string>, extra: Omit<Setting<T>, "kind" | "env"> = {}): Setting<T> => ({ kind, env, ...extra });
const always =
  <T>(value: T) =>
  (): T =>
    value;
const DAY = 24 * 3_600_000;

/** Every key of the configuration, as a config file nests it (`worker.concurrency` is `worker: { concurrency }`), with its variables. */
const SETTINGS = {
  "connection.servers": setting(servers, ["TROUPE_SERVERS", "NATS_URL"], { fallback: always(["nats://127.0.0.1:4222"]) }),
  "connection.user": setting(text, ["TROUPE_USER"]),
  "connection.pass": setting(text, ["TROUPE_PASS"], { secret: true }),
  "connection.token": setting(text, ["TROUPE_TOKEN"], { secret: true }),
  "connection.credentials": setting(path, ["TROUPE_CREDS"]),
  "connection.nkey": setting(path, ["TROUPE_NKEY"]),
  "connection.inboxPrefix": setting(text, ["TROUPE_INBOX_PREFIX"]),
  "connection.connectTimeout": setting(duration, ["TROUPE_CONNECT_TIMEOUT"]),
  "connection.tls.caFile": setting(path, ["TROUPE_TLS_CA"]),
  "connection.tls.certFile": setting(path, ["TROUPE_TLS_CERT"]),
  "connection.tls.keyFile": setting(path, ["TROUPE_TLS_KEY"]),
  "connection.name": setting(text, ["TROUPE_NAME"], { fallback: always("troupe") }),
  "connection.submitRetryFor": setting(duration, ["TROUPE_SUBMIT_RETRY_FOR"], { fallback: always(DEFAULT_SUBMIT_RETRY_FOR) }),
  "layout.replicas": setting(positiveInt, ["TROUPE_REPLICAS"], { fallback: always(1) }),
  "layout.mode": setting(oneOf(["create", "verify"] as const), ["TROUPE_LAYOUT"], { fallback: always("create" as const) }),
  "layout.eventsMaxAge": setting(duration, ["TROUPE_EVENTS_MAX_AGE"], { fallback: always(7 * DAY) }),
  "layout.logsMaxAge": setting(duration, ["TROUPE_LOGS_MAX_AGE"], { fallback: always(3 * DAY) }),
  "layout.logsMaxBytes": setting(positiveInt, ["TROUPE_LOGS_MAX_BYTES"], { fallback: always(1024 ** 3) }),
  "layout.payloadThreshold": setting(positiveInt, ["TROUPE_PAYLOAD_THRESHOLD"], { fallback: always(DEFAULT_PAYLOAD_THRESHOLD) }),
  "retention.completed": setting(duration, ["TROUPE_RETENTION_COMPLETED"], { fallback: always(7 * DAY) }),
  "retention.failed": setting(duration, ["TROUPE_RETENTION_FAILED"], { fallback: always(30 * DAY) }),
  "retention.cancelled": setting(duration, ["TROUPE_RETENTION_CANCELLED"], { fallback: always(30 * DAY) }),
  "worker.module": setting(path, ["TROUPE_MODULE"]),
  "worker.id": setting(text, ["TROUPE_WORKER_ID"]),
  "worker.concurrency": setting(positiveInt, ["TROUPE_CONCURRENCY"], {
    fallback: ({ isolated, executors }) => (isolated ? (executors ?? availableParallelism()) : 1),
  }),
  "worker.isolation": setting(oneOf(["none", "thread", "process"] as const), ["TROUPE_ISOLATION"], { fallback: always("none" as const) }),
  "worker.executors": setting(positiveInt, ["TROUPE_EXECUTORS"], { fallback: ({ isolated }) => (isolated ? availableParallelism() : undefined) }),
  "worker.memoryLimitMb": setting(positiveInt, ["TROUPE_MEMORY_LIMIT"]),
  "worker.gracePeriod": setting(duration, ["TROUPE_GRACE"], { fallback: always(5_000) }),
  "worker.stopTimeout": setting(duration, ["TROUPE_STOP_TIMEOUT"], { fallback: always(30_000) }),
  "worker.disconnectTimeout": setting(durationOrFalse, ["TROUPE_DISCONNECT_TIMEOUT"], { fallback: always(30_000) }),
  "worker.exitOnDisconnect": setting(boolean, ["TROUPE_EXIT_ON_DISCONNECT"], { fallback: always(true) }),
  "worker.pullExpires": setting(duration, ["TROUPE_PULL_EXPIRES"], { fallback: always(5_000) }),
  "rpc.enabled": setting(boolean, ["TROUPE_RPC"], { fallback: always(true) }),
  "rpc.timeout": setting(duration, ["TROUPE_RPC_TIMEOUT"], { fallback: always(60_000) }),
  "metrics.port": setting(port, ["TROUPE_METRICS_PORT"]),
  "metrics.host": setting(text, ["TROUPE_METRICS_HOST"]),
  "log.level": setting(oneOf(["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const), ["TROUPE_LOG_LEVEL"], { fallback: always("info" as const) }),
};

/** A key of the configuration, such as `worker.concurrency`. */
export type ConfigKey = keyof typeof SETTINGS;
type ValueOf<K extends ConfigKey> = (typeof SETTINGS)[K] extends Setting<infer T> ? T : never;
type Getter = <K extends ConfigKey>(key: K) => ValueOf<K> | undefined;

const KEYS = Object.keys(SETTINGS) as ConfigKey[];
const settingOf = (key: ConfigKey): Setting<unknown> => SETTINGS[key] as Setting<unknown>;

/** A value given as text (a CLI flag) and where it came from, e.g. `flag --concurrency`. */
export interface ConfigOverride {
  readonly key: ConfigKey;
  readonly text: string;
  readonly source: string;
}

export interface LoadConfigOptions {
  /** The config file; else `TROUPE_CONFIG`; else the first `troupe.config.*` from `cwd` up. */
  readonly file?: string;
  /** What gave `file`, as the error for a missing one says it (the CLI: `--config`). */
  readonly fileSource?: string;
  /** Where the search for a config file starts, and what relative paths are from (default: the working directory). */
  readonly cwd?: string;
  /** The variables (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Values over everything else (the CLI's flags). */
  readonly overrides?: ReadonlyArray<ConfigOverride>;
  /** Values under everything else but the defaults (the CLI's `.troupe/url`). */
  readonly fallbacks?: ReadonlyArray<ConfigOverride>;
  /** The error for a bad override (default `InvalidOption`). */
  readonly overrideError?: (message: string) => Error;
}

/** One key's effective value (secrets as `****`, unset as `undefined`) and where it came from: `default`, `file <path>`, `env <NAME>`, or an override's source. */
export interface ConfigValue {
  readonly key: ConfigKey;
  readonly value: unknown;
  /** The value as `troupe config` prints it. */
  readonly shown: string;
  readonly source: string;
}

/** The effective configuration, as the SDK's options. */
export interface TroupeConfig {
  /** For `Troupe.connect` (connection, layout and retention). */
  readonly connection: ConnectOptions;
  /** For `troupe.worker` (add `tasks`, or keep `module`); executors, memoryLimitMb and gracePeriod only with isolation. */
  readonly worker: WorkerOptions;
  /** For `worker.run` / `worker.stop` (`worker.stopTimeout`). */
  readonly stop: StopOptions;
  /** For a coordinator's `metrics` (a worker's is in `worker`): when `metrics.port` is set. */
  readonly metrics?: MetricsOptions;
  /** For a gateway (a worker's is in `worker`): `rpc.timeout`. */
  readonly rpc: RpcOptions;
  readonly logLevel: string;
  /** The config file read, absolute; none found, `undefined`. */
  readonly file?: string;
  /** Every key, in a stable order, with its source. */
  readonly values: ReadonlyArray<ConfigValue>;
}

/** The sections a file nests keys in: `connection`, `connection.tls`, `worker`, ... */
const SECTIONS: ReadonlySet<string> = new Set(
  KEYS.flatMap((key) => {
    const parts = key.split(".");
    return parts.slice(1).map((_, i) => parts.slice(0, i + 1).join("."));
  }),
);

/** The names a section holds (its keys and subsections), for the error about an unknown one. */
const namesIn = (section: string): string[] => {
  const start = section === "" ? 0 : section.length + 1;
  return [...new Set([...SECTIONS, ...KEYS].filter((k) => start === 0 || k.startsWith(`${section}.`)).map((k) => k.slice(start).split(".")[0]!))];
};

const shownInput = (value: unknown) => (typeof value === "string" || (typeof value === "object" && value !== null) ? JSON.stringify(value) : String(value));

/** `value` decoded as `key`'s kind, or `fail` with the message `<where>: <key> must be <expected>, got <value>` (its `text`, when it was text). */
const decodeSetting = (key: ConfigKey, value: unknown, where: string, fail: (message: string) => Error, text?: string): unknown => {
  const s = settingOf(key);
  const decoded = decodeValueWith(s.kind.schema, value, key);
  if (decoded.ok) return decoded.value;
  throw fail(`${where}: ${key} must be ${s.kind.expected}, got ${s.secret ? "****" : shownInput(text ?? value)}`);
};

/** A variable's or a flag's text, decoded as `key`'s kind. */
const decodeText = (key: ConfigKey, text: string, where: string, fail: (message: string) => Error): unknown =>
  decodeSetting(key, settingOf(key).kind.fromText(text), where, fail, text);

const invalid = (message: string) => new InvalidOption({ message });

/** A config file's path or module, relative to the file's folder; a URL stays one. */
const fromFile = (value: string, file: string) => (/^[a-z][a-z0-9+.-]*:/i.test(value) && !isAbsolute(value) ? value : resolve(dirname(file), value));

/** The config file `cwd` is under: the first of `CONFIG_FILES` in it or the nearest folder above. */
const findConfigFile = (cwd: string): string | undefined => {
  for (let dir = resolve(cwd); ; dir = dirname(dir)) {
    for (const name of CONFIG_FILES) if (existsSync(join(dir, name))) return join(dir, name);
    if (dirname(dir) === dir) return undefined;
  }
};

const readDocument = (file: string, where: string): unknown => {
  let content: string;
  try {
    content = readFileSync(file, "utf8");
  } catch (e) {
    throw invalid(`${where}: cannot read the config file: ${(e as Error).message}`);
  }
  const json = /\.json$/i.test(file);
  try {
    return json ? JSON.parse(content) : parseYaml(content);
  } catch (e) {
    throw invalid(`${where}: not valid ${json ? "JSON" : "YAML"}: ${(e as Error).message.split("\n")[0]}`);
  }
};

/** The file's values by key: every key known, every section an object. */
const fileValues = (doc: unknown, file: string, where: string): Map<ConfigKey, unknown> => {
  const values = new Map<ConfigKey, unknown>();
  const walk = (node: unknown, prefix: string) => {
    if (node === null || node === undefined) return; // an empty section (`worker:` with nothing under it)
    if (typeof node !== "object" || Array.isArray(node)) {
      throw invalid(`${where}: ${prefix === "" ? "the file" : prefix} must be an object of settings, got ${shownInput(node)}`);
    }
    for (const [name, value] of Object.entries(node)) {
      const key = prefix === "" ? name : `${prefix}.${name}`;
      if (key in SETTINGS) {
        if (value === null) continue;
        const decoded = decodeSetting(key as ConfigKey, value, where, invalid);
        values.set(key as ConfigKey, settingOf(key as ConfigKey).kind.path ? fromFile(decoded as string, file) : decoded);
      } else if (SECTIONS.has(key)) {
        walk(value, key);
      } else {
        throw invalid(`${where}: unknown key "${key}" (${prefix === "" ? "sections" : `keys of ${prefix}`}: ${namesIn(prefix).join(", ")})`);
      }
    }
  };
  walk(doc, "");
  return values;
};

/** `value` without its undefined keys. */
const present = <T extends object>(value: T): T => Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
/** An empty object as none. */
const orUndefined = <T extends object>(value: T): T | undefined => (Object.keys(value).length === 0 ? undefined : value);

/**
 * The effective configuration: `overrides` over `TROUPE_*` variables over the config file over
 * `fallbacks`. Throws `InvalidOption` (for an override, `overrideError`'s error) naming the
 * file or variable and the key of a bad value, or the unknown key of a file.
 */
export const loadConfig = (options: LoadConfigOptions = {}): TroupeConfig => {
  const cwd = options.cwd ?? process.cwd();
  const env = options.env ?? process.env;
  const given = options.file ?? (env.TROUPE_CONFIG || undefined);
  const file = given === undefined ? findConfigFile(cwd) : resolve(cwd, given);
  const where = file === undefined ? "" : relative(cwd, file) || file;
  if (given !== undefined && !existsSync(resolve(cwd, given))) {
    throw invalid(`${options.file === undefined ? "TROUPE_CONFIG" : (options.fileSource ?? "file")}: no config file ${given}`);
  }
  const chosen = new Map<ConfigKey, { value: unknown; source: string }>();
  const take = (layer: ReadonlyArray<ConfigOverride>, fail: (message: string) => Error) => {
    for (const o of layer) {
      chosen.set(o.key, { value: decodeText(o.key, o.text, o.source, fail), source: o.source });
    }
  };
  take(options.fallbacks ?? [], invalid);
  if (file !== undefined) {
    for (const [key, value] of fileValues(readDocument(file, where), file, where)) chosen.set(key, { value, source: `file ${where}` });
  }
  for (const key of KEYS) {
    const name = settingOf(key).env.find((n) => (env[n] ?? "") !== "");
    if (name === undefined) continue;
    chosen.set(key, { value: decodeText(key, env[name]!, name, invalid), source: `env ${name}` });
  }
  take(options.overrides ?? [], options.overrideError ?? invalid);

  const get: Getter = (key) => chosen.get(key)?.value as ValueOf<typeof key> | undefined;
  const isolation = get("worker.isolation");
  const pool = isolation === "thread" || isolation === "process" ? isolation : undefined;
  const tls = orUndefined(present({ caFile: get("connection.tls.caFile"), certFile: get("connection.tls.certFile"), keyFile: get("connection.tls.keyFile") }));
  const retention = orUndefined(present({ completed: get("retention.completed"), failed: get("retention.failed"), cancelled: get("retention.cancelled") }));
  const connection: ConnectOptions = present({
    servers: get("connection.servers"),
    user: get("connection.user"),
    pass: get("connection.pass"),
    token: get("connection.token"),
    credentials: get("connection.credentials"),
    nkey: get("connection.nkey"),
    inboxPrefix: get("connection.inboxPrefix"),
    connectTimeout: get("connection.connectTimeout"),
    tls,
    name: get("connection.name"),
    submitRetryFor: get("connection.submitRetryFor"),
    replicas: get("layout.replicas"),
    layout: get("layout.mode"),
    eventsMaxAge: get("layout.eventsMaxAge"),
    logsMaxAge: get("layout.logsMaxAge"),
    logsMaxBytes: get("layout.logsMaxBytes"),
    payloadThreshold: get("layout.payloadThreshold"),
    retention,
  });
  const metricsPort = get("metrics.port");
  const metrics = metricsPort === undefined ? undefined : present({ port: metricsPort, host: get("metrics.host") });
  const rpcTimeout = get("rpc.timeout");
  const rpc: RpcOptions = rpcTimeout === undefined ? {} : { timeout: rpcTimeout };
  const worker: WorkerOptions = present({
    module: get("worker.module"),
    id: get("worker.id"),
    concurrency: get("worker.concurrency"),
    ...(pool === undefined
      ? {}
      : { isolation: pool, executors: get("worker.executors"), memoryLimitMb: get("worker.memoryLimitMb"), gracePeriod: get("worker.gracePeriod") }),
    disconnectTimeout: get("worker.disconnectTimeout"),
    exitOnDisconnect: get("worker.exitOnDisconnect"),
    pullExpires: get("worker.pullExpires"),
    metrics,
    rpc: get("rpc.enabled") === false ? false : rpcTimeout === undefined ? undefined : rpc,
  });
  const stopTimeout = get("worker.stopTimeout");
  const values = KEYS.map((key): ConfigValue => {
    const s = settingOf(key);
    const set = chosen.get(key);
    const value = set?.value ?? s.fallback?.({ isolated: pool !== undefined, executors: get("worker.executors") });
    const shown = value === undefined ? "-" : s.secret ? "****" : s.kind.show !== undefined ? s.kind.show(value) : String(value);
    return { key, value: s.secret && value !== undefined ? "****" : value, shown, source: set?.source ?? "default" };
  });
  return {
    connection,
    worker,
    stop: stopTimeout === undefined ? {} : { timeout: stopTimeout },
    ...(metrics === undefined ? {} : { metrics }),
    rpc,
    logLevel: get("log.level") ?? "info",
    ...(file === undefined ? {} : { file }),
    values,
  };
};
