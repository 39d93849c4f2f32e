/**
 * The CLI's side of the configuration (src/config.ts): its flags as overrides, the server
 * `troupe dev` left in `.troupe/url` as a fallback, and what `troupe config` prints.
 */
import { existsSync, readFileSync } from "node:fs";
import { loadConfig, type ConfigKey, type ConfigOverride, type TroupeConfig } from "../config.js";
import { processAlive } from "../dev/store-lock.js";

/**
 * Where `troupe dev` writes its URL, for the other verbs of the same directory: the URL on the
 * first line, `pid <n>` of the `troupe dev` that wrote it on the second.
 */
export const DEV_URL_FILE = ".troupe/url";

/** What `troupe dev` writes to `DEV_URL_FILE`. */
export const devUrlText = (url: string): string => `${url}\npid ${process.pid}\n`;

/** `DEV_URL_FILE`'s URL, or why it is not used: the `troupe dev` that wrote it no longer runs (killed, its file left behind). */
export const readDevUrl = (): { readonly url: string } | { readonly stale: string } | undefined => {
  if (!existsSync(DEV_URL_FILE)) return undefined;
  const [url = "", second = ""] = readFileSync(DEV_URL_FILE, "utf8").split("\n");
  const pid = /^pid (\d+)$/.exec(second.trim())?.[1];
  if (url.trim() === "") return undefined;
  if (pid !== undefined && !processAlive(Number(pid))) {
    return { stale: `${DEV_URL_FILE} names the server of a \`troupe dev\` (pid ${pid}) that no longer runs: not using it (start \`troupe dev\` again)` };
  }
  return { url: url.trim() };
};

/** The flags that set one key each. */
const FLAG_KEYS: Readonly<Record<string, ConfigKey>> = {
  server: "connection.servers",
  user: "connection.user",
  password: "connection.pass",
  token: "connection.token",
  creds: "connection.credentials",
  nkey: "connection.nkey",
  "connect-timeout": "connection.connectTimeout",
  "tls-ca": "connection.tls.caFile",
  "tls-cert": "connection.tls.certFile",
  "tls-key": "connection.tls.keyFile",
  replicas: "layout.replicas",
  concurrency: "worker.concurrency",
  "memory-limit": "worker.memoryLimitMb",
  grace: "worker.gracePeriod",
  "stop-timeout": "worker.stopTimeout",
  "disconnect-timeout": "worker.disconnectTimeout",
  "metrics-port": "metrics.port",
};

/** The keys a `--auth` file may hold, as `troupe auth init` writes them (`{ "user", "pass", "layout" }`), or one process's `{ "nkey": "<seed file>", … }`. */
const AUTH_KEYS: Readonly<Record<string, ConfigKey>> = {
  user: "connection.user",
  pass: "connection.pass",
  token: "connection.token",
  credentials: "connection.credentials",
  nkey: "connection.nkey",
  layout: "layout.mode",
  inboxPrefix: "connection.inboxPrefix",
};

/** `--auth FILE`: a JSON object of connection options, each an override from `flag --auth`. */
const authOverrides = (file: string, fail: (message: string) => Error): ConfigOverride[] => {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw fail(`--auth ${file}: ${(e as Error).message.split("\n")[0]}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw fail(`--auth ${file}: must be a JSON object such as { "user": ..., "pass": ... }`);
  return Object.entries(doc).map(([name, value]) => {
    const key = AUTH_KEYS[name];
    if (key === undefined || typeof value !== "string") throw fail(`--auth ${file}: unknown or non-text key "${name}" (keys: ${Object.keys(AUTH_KEYS).join(", ")})`);
    return { key, text: value, source: "flag --auth" };
  });
};

export interface CliConfigOptions {
  /** `troupe worker <module>`'s argument: over `worker.module`. */
  readonly module?: string;
  /** The error for a bad flag value (a usage mistake). */
  readonly flagError: (message: string) => Error;
}

/** The configuration of one command: its flags over TROUPE_* variables over the config file (`--config`). */
export const cliConfig = (flags: Readonly<Record<string, unknown>>, options: CliConfigOptions): TroupeConfig => {
  // --auth FILE (a role's file from `troupe auth init`) first, so that an explicit flag wins over it.
  const overrides: ConfigOverride[] = typeof flags.auth === "string" ? authOverrides(flags.auth, options.flagError) : [];
  for (const [flag, key] of Object.entries(FLAG_KEYS)) {
    const text = flags[flag];
    if (typeof text === "string") overrides.push({ key, text, source: `flag --${flag}` });
  }
  // --threads N / --processes N: an isolation and its executors.
  for (const [flag, isolation] of [["threads", "thread"], ["processes", "process"]] as const) {
    const text = flags[flag];
    if (typeof text !== "string") continue;
    overrides.push({ key: "worker.isolation", text: isolation, source: `flag --${flag}` }, { key: "worker.executors", text, source: `flag --${flag}` });
  }
  // --password-file FILE: the password off the command line (where `ps` shows it), its trailing newline dropped.
  if (typeof flags["password-file"] === "string") {
    const file = flags["password-file"];
    if (typeof flags.password === "string") throw options.flagError("give one of --password and --password-file");
    let text: string;
    try {
      text = readFileSync(file, "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      throw options.flagError(`--password-file ${file}: ${(e as Error).message.split("\n")[0]}`);
    }
    if (text === "") throw options.flagError(`--password-file ${file}: the file is empty`);
    overrides.push({ key: "connection.pass", text, source: "flag --password-file" });
  }
  if (options.module !== undefined) overrides.push({ key: "worker.module", text: options.module, source: "argument" });
  const dev = readDevUrl();
  const fallbacks: ConfigOverride[] = [{ key: "connection.name", text: "troupe-cli", source: "default" }];
  if (dev !== undefined && "url" in dev) fallbacks.push({ key: "connection.servers", text: dev.url, source: `file ${DEV_URL_FILE}` });
  return loadConfig({
    ...(typeof flags.config === "string" ? { file: flags.config, fileSource: "--config" } : {}),
    overrides,
    fallbacks,
    overrideError: options.flagError,
  });
};

/**
 * When nothing names a server (no flag, variable, config file, or `troupe dev` in this folder),
 * the line that says the command falls back to the default one, and what it may create there.
 */
export const fallbackNotice = (config: TroupeConfig): string | undefined => {
  const source = (key: ConfigKey) => config.values.find((v) => v.key === key);
  const servers = source("connection.servers");
  if (servers === undefined || servers.source !== "default") return undefined;
  const create = config.connection.layout !== "verify";
  const dev = readDevUrl();
  return (
    (dev !== undefined && "stale" in dev ? `${dev.stale}; ` : "") +
    `no NATS server given (--server, NATS_URL, connection.servers of a config file, or a \`troupe dev\` in this folder); ` +
    `using ${servers.shown}${create ? ", creating the Troupe layout there if it is missing (layout mode create)" : ""}`
  );
};

/** `troupe config`: every key, its value (secrets masked) and where it came from; `json`: as one JSON object. */
export const formatConfig = (config: TroupeConfig, json: boolean): string => {
  if (json) {
    const values = Object.fromEntries(config.values.map((v) => [v.key, { value: v.value ?? null, source: v.source }]));
    return `${JSON.stringify({ file: config.file ?? null, values }, null, 2)}\n`;
  }
  const keyWidth = Math.max(...config.values.map((v) => v.key.length));
  const valueWidth = Math.min(40, Math.max(...config.values.map((v) => v.shown.length)));
  const lines = config.values.map((v) => `${v.key.padEnd(keyWidth)}  ${v.shown.padEnd(valueWidth)}  ${v.source}`);
  return `config file: ${config.file ?? "none (no troupe.config.json, .yaml or .yml here or above)"}\n${lines.join("\n")}\n`;
};
