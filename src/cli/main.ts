#!/usr/bin/env node
/**
 * The `troupe` command: dev, worker, submit, get, demo.
 * Connection and worker settings from flags, TROUPE_* variables and the config file (./config.ts).
 */
import { dirname } from "node:path";
import { realpathSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { NatsServer } from "../dev/nats-server.js";
import { runDemo } from "../dev/demo.js";
import { untypedTask } from "../task.js";
import { loadTasks } from "../tasks-module.js";
import { connectionOf, Troupe, type TroupeOptions } from "../sdk/troupe.js";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { workflowFromDocument, type WorkflowDefinition } from "../workflow.js";
import { TaskStatuses, WorkflowRecord as WorkflowRecordSchema, type TaskStatus, type WorkflowRecord } from "../../machines/records.js";
import { decodeWith } from "../nats/codec.js";
import { recordSubject } from "../nats/topology.js";
import { parseDuration } from "../duration.js";
import { ProgressBar } from "./progress.js";
import { serveStately } from "../inspect/stately.js";
import { startInspector, type InspectorActions } from "../inspect/server.js";
import { showStats } from "./stats.js";
import { cliConfig, DEV_URL_FILE, devUrlText, fallbackNotice, formatConfig } from "./config.js";
import type { TroupeConfig } from "../config.js";
import { rootLogger } from "../log.js";
import { permissionDenied } from "../nats/permissions.js";
import { TaskNotFound, WorkflowNotFound } from "../errors.js";
import { runAuthInit, runSetup } from "./setup.js";

const USAGE = `troupe — tasks and workflows as actors on NATS JetStream

Usage:
  troupe dev [--store DIR] [--port N] [--ui-port N] [--metrics-port N]
                                             an embedded nats-server -js (port 4222 when free), a
                                             coordinator and the inspector (with its actions: a local
                                             dev tool); writes its URL to .troupe/url
  troupe demo [--tasks N]                    run the demo on its own embedded server
  troupe worker [<module>] [--concurrency N] [--threads N | --processes N] [--memory-limit MB]
                [--grace T] [--stop-timeout T] [--disconnect-timeout T] [--metrics-port N]
                                             run the tasks a module exports (default: worker.module
                                             of the configuration), N at a time (default 1;
                                             with executors, one per executor); --threads/--processes
                                             run handlers in a pool of N worker threads or child
                                             processes; SIGTERM/SIGINT stop it gracefully (finish
                                             running tasks, up to --stop-timeout, default 30s), a
                                             second signal at once
  troupe workers [--json]                    list live workers: state, executors, running tasks, counters
  troupe worker stop <id> [--timeout T]      drain a worker: no new work, running tasks finish (up to T),
                                             then it exits
  troupe worker shutdown <id>                stop a worker now: running tasks are handed back
  troupe pause [<task>] [--queue Q] [--reason TEXT]
                                             pause a task type (or with only --queue, a whole queue):
                                             workers start none of it until resumed; with neither,
                                             list what is paused
  troupe resume [<task>] [--queue Q]         resume it (exit 1, NotPaused, if it was not paused)
  troupe logs [--task ID] [--worker ID] [--follow]
                                             handlers' log lines (pino JSON) from TROUPE_LOGS
  troupe submit <task> '<json>' [--wait [--timeout T]] [--queue Q] [--module FILE] [--priority 1-5] [--key K]
                                             submit a task; --wait prints its final record;
                                             --priority 1 runs first, 5 last (default 3); --key
                                             groups it (keys served round robin, limits.perKey)
  troupe get <id>                            print a task's state record (JSON)
  troupe ls [--status S] [--task NAME] [--queue Q] [--since T|TIME] [--limit N] [--cursor C] [--json]
                                             tasks newest first (finished ones by when they ended), a
                                             page at a time (the last line: the command for the next,
                                             with the same filters); --since 1h or an ISO time
  troupe retry <id> [--wait [--timeout T]]   run a FAILED or CANCELLED task again (same id, history kept)
  troupe retry --status FAILED|CANCELLED [--task NAME] [--queue Q] [--since T] [--limit N]
                                             retry every task the filter lists
  troupe history <id> [--json]               a task's transitions, oldest first: its record's revisions
  troupe cancel <id> [--reason TEXT]         cancel a task (exit 1 if it had already finished)
  troupe coordinator [--metrics-port N]      advance workflow runs and fire schedules (run any number)
  troupe stats [--watch] [--json]            per task type and queue: waiting, running, completed, failed
                                             (and rates per minute), workers; --watch redraws every 2s
  troupe scheduler                           fire schedules only (any number of them; one leads)
  troupe retention                           remove what is past its retention every minute (run it
                                             with the retention identity of troupe auth init)
  troupe gateway [--module FILE] [--timeout T]
                                             serve JSON-RPC 2.0 on troupe.rpc (NATS micro service
                                             troupe-rpc) with no tasks: each call submits a task and
                                             answers with its outcome, waiting up to T (default 60s);
                                             --module checks params against its tasks' schemas
  troupe schedule add <id> <task> '<json>' (--cron EXPR | --every T) [--timezone TZ]
                [--catch-up none|one|all] [--queue Q]
                                             create or replace a schedule: one task per tick,
                                             id <id>-<tick ms>
  troupe schedule ls                         schedules, their next tick, and the leading scheduler
  troupe schedule rm <id>                    remove one (exit 1, ScheduleNotFound, if there was none)
  troupe inspect [--ui-port N] [--actions]   the inspector: actors live, their machines and histories,
                                             on 127.0.0.1; prints its address with this start's token;
                                             --actions: its retry, cancel and drain buttons
  troupe inspect --stately <kind>:<id> [--ui-port N]
                                             one actor in Stately's inspector (docs/stately.md), on
                                             127.0.0.1 with a token
  troupe workflow run <file> [--input '<json>'] [--watch [--timeout T]]
                                             start a workflow from a JSON or YAML file
  troupe workflow get <id>                   print a workflow run's record (JSON)
  troupe workflow cancel <id> [--reason TEXT]
                                             cancel a workflow run (exit 1 if it had already finished)
  troupe setup [--check | --migrate]         create or upgrade the streams, consumers and buckets (an
                                             admin identity: --auth admin.json); --check changes nothing
                                             and reports each missing part or setting that drifted from
                                             the configuration, one line each (exit 1 if any); --migrate
                                             carries a layout made by an earlier version over (its queued
                                             work and records; stop every Troupe process first)
  troupe auth init <dir> [--queue-worker Q=T1,T2]... [--force]
                                             write <dir>/auth.conf (a nats-server authorization block to
                                             include: one user per role, least permissions) and
                                             <dir>/<role>.json for admin, client, worker, coordinator,
                                             inspector; each --queue-worker adds worker-<Q>.json, a
                                             worker that may serve only those tasks of queue Q;
                                             auth.conf holds bcrypt hashes, <dir> is made 0700, files
                                             0600; files already there are refused (AuthFilesExist)
                                             unless --force replaces them all (docs/security.md)
  troupe config [--json]                     the effective configuration (flags, TROUPE_* variables,
                                             troupe.config.json|yaml|yml), each value's source

  T is milliseconds or a duration such as 30s or "30 seconds"; a wait past it exits 1, the work goes on.
  An error is one line on stderr, "troupe <verb>: <_tag>: <message>", exit 1; a mistake in the
  command line is a UsageError, with a hint, exit 2.

Connection (every verb but dev and demo):
  --server URL       NATS server(s), comma-separated (default: $NATS_URL, then the URL
                     \`troupe dev\` wrote to .troupe/url, then nats://127.0.0.1:4222)
  --user U --password-file FILE | --token T | --creds FILE | --nkey SEEDFILE
                     (the password also from TROUPE_PASS; --password P still works but warns:
                     any user of the machine sees it in \`ps\`)
  --tls-ca FILE --tls-cert FILE --tls-key FILE
                     TLS and credentials (docs/security.md); a refused credential or certificate
                     is one line, exit 1
  --auth FILE        a role's connection file from \`troupe auth init\` ({ "user", "pass", "layout" })
  --connect-timeout T  bound on each connection attempt (default 10s)
  --replicas N       stream and bucket replicas when they are created (default 1)
  --config FILE      the config file (default: $TROUPE_CONFIG, then the first troupe.config.json,
                     .yaml or .yml in this directory or above); flags override TROUPE_* variables,
                     which override the file
`;

const options = {
  server: { type: "string" },
  user: { type: "string" },
  password: { type: "string" },
  "password-file": { type: "string" },
  force: { type: "boolean" },
  token: { type: "string" },
  creds: { type: "string" },
  auth: { type: "string" },
  "queue-worker": { type: "string", multiple: true },
  check: { type: "boolean" },
  migrate: { type: "boolean" },
  nkey: { type: "string" },
  "connect-timeout": { type: "string" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  replicas: { type: "string" },
  concurrency: { type: "string" },
  threads: { type: "string" },
  processes: { type: "string" },
  "memory-limit": { type: "string" },
  grace: { type: "string" },
  "stop-timeout": { type: "string" },
  "disconnect-timeout": { type: "string" },
  task: { type: "string" },
  worker: { type: "string" },
  follow: { type: "boolean" },
  json: { type: "boolean" },
  priority: { type: "string" },
  key: { type: "string" },
  cron: { type: "string" },
  every: { type: "string" },
  timezone: { type: "string" },
  "catch-up": { type: "string" },
  store: { type: "string" },
  port: { type: "string" },
  tasks: { type: "string" },
  queue: { type: "string" },
  module: { type: "string" },
  wait: { type: "boolean" },
  reason: { type: "string" },
  input: { type: "string" },
  "ui-port": { type: "string" },
  stately: { type: "string" },
  actions: { type: "boolean" },
  watch: { type: "boolean" },
  timeout: { type: "string" },
  status: { type: "string" },
  since: { type: "string" },
  limit: { type: "string" },
  cursor: { type: "string" },
  help: { type: "boolean", short: "h" },
  config: { type: "string" },
  "metrics-port": { type: "string" },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>["values"];

/** A CLI mistake: printed as `troupe <verb>: UsageError: <message>` with a hint, exit code 2. */
class UsageError extends Error {
  readonly _tag = "UsageError";
}

/** A failure only the CLI names (the SDK answers `false`): printed as `troupe <verb>: <tag>: <message>`, exit code 1. */
class CliFailure extends Error {
  constructor(
    readonly _tag: string,
    message: string,
  ) {
    super(message);
  }
}

const durationFlag = (value: string | undefined, name: string): number | undefined => {
  if (value === undefined) return undefined;
  const text = value.trim();
  const ms = parseDuration(text !== "" && Number.isFinite(Number(text)) ? Number(text) : text);
  if (ms === undefined) throw new UsageError(`--${name} must be milliseconds or a duration such as 30s or "30 seconds", got "${value}"`);
  return ms;
};

const timeoutFlag = (flags: Flags): number | undefined => durationFlag(flags.timeout, "timeout");

const int = (value: string | undefined, name: string, fallback: number): number => {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got "${value}"`);
  return n;
};

/** This command's configuration: flags over TROUPE_* variables over the config file (a bad flag value is a usage mistake). */
const configOf = (flags: Flags, module?: string): TroupeConfig =>
  cliConfig(flags, { ...(module === undefined ? {} : { module }), flagError: (message) => new UsageError(message) });

/** The verb being run, for the lines that name it. */
let currentVerb = "";

/** The client's options, from the configuration; its logger at `log.level`. Says so on stderr when it falls back to the default server. */
const connection = (flags: Flags, config: TroupeConfig = configOf(flags), notice = true): TroupeOptions => {
  const fallback = notice ? fallbackNotice(config) : undefined;
  if (fallback !== undefined) process.stderr.write(`troupe ${currentVerb}: ${fallback}\n`);
  return { ...config.connection, logger: rootLogger(config.logLevel) };
};

/** A short-lived client for one command, closed however the command ends. */
const withClient = async (flags: Flags, use: (troupe: Troupe) => Promise<void>): Promise<void> => {
  // Errors only (on stderr): what a verb has to say goes to stdout, or to stderr as plain lines, not JSON logs.
  const troupe = await Troupe.connect({ ...connection(flags), logger: rootLogger("error") });
  try {
    await use(troupe);
  } finally {
    await troupe.close();
  }
};

/** SIGINT, SIGTERM, or SIGHUP (a closed terminal): each stops a long-running verb. */
const waitForSignal = () =>
  new Promise<NodeJS.Signals>((res) => {
    process.once("SIGINT", () => res("SIGINT"));
    process.once("SIGTERM", () => res("SIGTERM"));
    process.once("SIGHUP", () => res("SIGHUP"));
  });

/** The inspector's buttons: the CLI's own calls (`troupe retry`, `troupe cancel`, `troupe stop`). */
const inspectorActions = (troupe: Troupe): InspectorActions => ({
  retry: (id) => troupe.retry(id),
  cancel: (id) => troupe.cancel(id, "cancelled from the inspector"),
  cancelWorkflow: (id) => troupe.cancelWorkflow(id, "cancelled from the inspector"),
  drain: (id) => troupe.controlWorker(id, "drain"),
});

const inspect = async (flags: Flags) => {
  const port = int(flags["ui-port"], "ui-port", 0);
  const troupe = await Troupe.connect(connection(flags));
  if (flags.stately !== undefined) {
    const stately = await serveStately(troupe, flags.stately, { port }).catch(async (e: unknown) => {
      await troupe.close();
      throw e;
    });
    process.stdout.write(`troupe inspect: ${stately.link} (${flags.stately} in Stately's inspector)\n`);
    await waitForSignal();
    await stately.close();
    await troupe.close();
    return;
  }
  // Read-only unless asked: the buttons act with this process's credential.
  const actions = flags.actions === true ? inspectorActions(troupe) : undefined;
  const inspector = await startInspector(connectionOf(troupe), { port, logger: troupe.log, ...(actions === undefined ? {} : { actions }) }).catch(async (e: unknown) => {
    await troupe.close();
    throw e;
  });
  process.stdout.write(`troupe inspect: ${inspector.link}${actions === undefined ? "" : " (with actions: retry, cancel, drain)"}\n`);
  await waitForSignal();
  await inspector.close();
  await troupe.close();
};

const coordinator = async (flags: Flags) => {
  const config = configOf(flags);
  const troupe = await Troupe.connect(connection(flags, config));
  await troupe.coordinator(config.metrics === undefined ? {} : { metrics: config.metrics });
  const signal = await waitForSignal();
  troupe.log.info({ signal }, "stopping coordinator");
  await troupe.close();
};

/** `troupe gateway`: JSON-RPC on `troupe.rpc`, running no tasks, until a signal. */
const gateway = async (flags: Flags) => {
  const tasks = flags.module === undefined ? [] : await loadTasks(flags.module);
  if (flags.module !== undefined && tasks.length === 0) throw new UsageError(`${flags.module} exports no task definitions (defineTask)`);
  const timeout = timeoutFlag(flags);
  const config = configOf(flags);
  const troupe = await Troupe.connect(connection(flags, config));
  try {
    // --timeout over the configuration's rpc.timeout.
    const rpc = await troupe.gateway({ tasks, ...config.rpc, ...(timeout === undefined ? {} : { timeout }) });
    process.stdout.write(`troupe gateway: JSON-RPC 2.0 on troupe.rpc (NATS micro service troupe-rpc, id ${rpc.id})\n`);
    const signal = await waitForSignal();
    troupe.log.info({ signal }, "stopping gateway");
  } finally {
    await troupe.close();
  }
};

/** Warn on stderr about the tasks no live worker serves: their work waits queued until one starts. */
const warnUnserved = async (troupe: Troupe, verb: string, tasks: ReadonlyArray<{ name: string; queue: string }>) => {
  const seen = new Set<string>();
  for (const task of tasks) {
    const key = `${task.queue}\0${task.name}`;
    if (seen.has(key)) continue;
    seen.add(key);
    // The work is submitted: a registry that cannot be listed (in its bound) is a warning too, not a failure.
    const serving = await troupe.workers(task).catch((e: unknown) => e as Error);
    if (serving instanceof Error) {
      process.stderr.write(`troupe ${verb}: warning: cannot tell whether a live worker serves task "${task.name}": ${serving.message}\n`);
    } else if (serving.length === 0) {
      process.stderr.write(`troupe ${verb}: warning: no live worker serves task "${task.name}" (queue "${task.queue}"); it waits queued until one starts\n`);
    }
  }
};

const workflowDocument = async (file: string): Promise<WorkflowDefinition> => {
  const yaml = /\.ya?ml$/i.test(file);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = yaml ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${file} is not valid ${yaml ? "YAML" : "JSON"}: ${(e as Error).message.split("\n")[0]}`);
  }
  return workflowFromDocument(doc);
};

const workflow = async (flags: Flags, positionals: string[]) => {
  const [sub, arg] = positionals;
  if (sub === "run") {
    if (arg === undefined) throw new UsageError("needs a workflow file (JSON or YAML)");
    const definition = await workflowDocument(arg);
    let input: unknown = {};
    try {
      input = JSON.parse(flags.input ?? "{}");
    } catch (e) {
      throw new UsageError(`--input is not JSON: ${(e as Error).message}`);
    }
    const timeout = timeoutFlag(flags);
    await withClient(flags, async (troupe) => {
      const run = await troupe.start(definition, input);
      await warnUnserved(troupe, "workflow run", Object.values(definition.steps).map((s) => ({ name: s.task, queue: s.queue })));
      if (!flags.watch) {
        process.stdout.write(`${run.id}\n`);
        return;
      }
      const record = await watchRun(troupe, run.id, Object.keys(definition.steps), timeout);
      process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
      if (record.status !== "COMPLETED") process.exitCode = 1;
    });
    return;
  }
  if (sub === "get") {
    if (arg === undefined) throw new UsageError("needs a run id");
    await withClient(flags, async (troupe) => {
      const record = await troupe.getWorkflow(arg);
      if (record === undefined) throw new WorkflowNotFound({ id: arg, message: `no workflow run ${arg}` });
      process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    });
    return;
  }
  if (sub === "cancel") {
    if (arg === undefined) throw new UsageError("needs a run id");
    await withClient(flags, async (troupe) => {
      const result = await troupe.cancelWorkflow(arg, flags.reason);
      process.stdout.write(`${result.message}\n`);
      if (!result.cancelled) process.exitCode = 1;
    });
    return;
  }
  throw new UsageError(sub === undefined ? "use run, get or cancel" : `use run, get or cancel, not "${sub}"`);
};

/** Each step's state, live, with a progress bar; resolves with the terminal record (or `ResultTimeout`). */
const watchRun = async (troupe: Troupe, id: string, steps: string[], timeout: number | undefined): Promise<WorkflowRecord> => {
  const bar = new ProgressBar(steps.length, "steps");
  const seen = new Map<string, string>();
  const show = (record: WorkflowRecord) => {
    for (const name of steps) {
      const status = record.steps[name]?.status ?? "PENDING";
      if (seen.get(name) !== status) {
        seen.set(name, status);
        process.stderr.write(`\n  ${name.padEnd(24)} ${status}`);
      }
    }
    const settled = Object.values(record.steps).filter((s) => s.status !== "PENDING" && s.status !== "RUNNING").length;
    process.stderr.write("\n");
    bar.update(settled, record.status);
  };
  const run = troupe.workflowRun(undefined, id);
  const sub = connectionOf(troupe).nc.subscribe(recordSubject("workflow", id), {
    callback: (_e, msg) => {
      const decoded = decodeWith(WorkflowRecordSchema, msg.data, "workflow record");
      if (decoded.ok) show(decoded.value);
    },
  });
  try {
    const now = await troupe.getWorkflow(id);
    if (now !== undefined) show(now);
    return await run.settledRecord(timeout === undefined ? {} : { timeout });
  } finally {
    sub.unsubscribe();
  }
};

/** 4222 when nothing listens there, so that every other verb finds the server by default; a free port otherwise. */
const devPort = (): Promise<number | undefined> =>
  new Promise((res) => {
    const probe = createServer();
    probe.once("error", () => res(undefined));
    probe.listen(4222, "127.0.0.1", () => probe.close(() => res(4222)));
  });

const dev = async (flags: Flags) => {
  // Every flag checked before anything starts.
  const asked = flags.port === undefined ? undefined : int(flags.port, "port", 4222);
  const metricsPort = flags["metrics-port"] === undefined ? undefined : int(flags["metrics-port"], "metrics-port", 0);
  const uiPort = int(flags["ui-port"], "ui-port", 0);
  const port = asked ?? (await devPort());
  // A store another `troupe dev` (or `Troupe.dev()`) serves is refused: StoreLocked names its server.
  const server = await NatsServer.start({
    storeDir: flags.store ?? ".troupe/nats",
    syncAlways: true,
    ...(port === undefined ? {} : { port }),
  });
  // Stopped however this ends: a signal, or a failure to start what runs on it (the server also dies with this process).
  const stops: Array<() => Promise<unknown>> = [() => server.stop()];
  try {
    // The embedded default also runs a coordinator, so workflows advance with no other process.
    // The configuration's retention and layout, on the embedded server (no credentials, no TLS, one replica).
    const { retention, payloadThreshold, eventsMaxAge, logsMaxAge, logsMaxBytes, logger } = connection(flags, configOf(flags), false);
    // Its own store: one an earlier version left is carried over.
    const troupe = await Troupe.connect({ servers: server.url, retention, payloadThreshold, eventsMaxAge, logsMaxAge, logsMaxBytes, logger, migrate: true });
    stops.unshift(() => troupe.close());
    const coordinator = await troupe.coordinator(metricsPort === undefined ? {} : { metrics: { port: metricsPort } });
    // The local dev tool acts: its embedded server has no credentials, so any process here could do the same.
    const inspector = await startInspector(connectionOf(troupe), { port: uiPort, logger: troupe.log, actions: inspectorActions(troupe) });
    stops.unshift(() => inspector.close());
    await mkdir(dirname(DEV_URL_FILE), { recursive: true });
    await writeFile(DEV_URL_FILE, devUrlText(server.url));
    stops.unshift(() => rm(DEV_URL_FILE, { force: true }));
    process.stdout.write(
      `troupe dev: nats-server with JetStream at ${server.url} (store ${server.storeDir})\n` +
        (port === undefined ? `  port 4222 is taken (another NATS server?): export NATS_URL=${server.url} in other shells\n` : "") +
        `  other troupe commands in this directory find it through ${DEV_URL_FILE}\n` +
        `  troupe worker ./tasks.js        # in another terminal\n` +
        `  nats --server ${server.url} stream ls\n` +
        `A coordinator runs here too; the inspector is at ${inspector.link}\n` +
        (coordinator.metricsPort === undefined ? "" : `  its Prometheus metrics: http://127.0.0.1:${coordinator.metricsPort}/metrics\n`) +
        `Ctrl-C stops it all (so does closing the terminal).\n`,
    );
    await waitForSignal();
  } finally {
    for (const stop of stops) await stop().catch((e: unknown) => process.stderr.write(`troupe dev: while stopping: ${(e as Error).message}\n`));
  }
};

const worker = async (flags: Flags, positionals: string[]) => {
  const [first, id] = positionals;
  if (first === "stop" || first === "shutdown") {
    if (id === undefined) throw new UsageError("needs a worker id (troupe workers lists them)");
    if (positionals.length > 2) throw new UsageError(`takes one worker id, got ${positionals.length - 1}`);
    return controlWorker(flags, first, id);
  }
  if (flags.threads !== undefined && flags.processes !== undefined) throw new UsageError("give --threads or --processes, not both");
  const config = configOf(flags, first);
  const { module, ...options } = config.worker;
  if (module === undefined) throw new UsageError("needs a module that exports tasks (an argument, worker.module in the config file or TROUPE_MODULE)");
  const tasks = await loadTasks(module);
  if (tasks.length === 0) throw new UsageError(`${String(module)} exports no task definitions (defineTask)`);
  const troupe = await Troupe.connect(connection(flags, config));
  try {
    // In this process the tasks run as loaded; isolated, each executor loads the module.
    const w = await troupe.worker(options.isolation === undefined ? { ...options, tasks } : { ...options, module });
    await w.run(config.stop);
  } finally {
    await troupe.close();
  }
};

/** `troupe worker stop|shutdown <id>`: the worker's drain or shutdown endpoint. */
const controlWorker = async (flags: Flags, verb: "stop" | "shutdown", id: string) => {
  const timeout = timeoutFlag(flags);
  await withClient(flags, async (troupe) => {
    const reply = await troupe.controlWorker(id, verb === "stop" ? "drain" : "shutdown", timeout === undefined ? {} : { timeout });
    process.stdout.write(
      verb === "stop"
        ? `worker ${id} draining: ${reply.running} running task(s) finish, then it stops\n`
        : `worker ${id} stopping now: ${reply.running} running task(s) handed back\n`,
    );
  });
};

/** `troupe workers`: each live worker with its executors and running tasks. */
const workers = async (flags: Flags) => {
  await withClient(flags, async (troupe) => {
    const list = await troupe.workerStats();
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
      return;
    }
    if (list.length === 0) {
      process.stdout.write("no live workers\n");
      return;
    }
    for (const w of list) {
      const isolation = w.isolation === undefined ? "in-process" : `${w.executors?.length ?? 0} ${w.isolation === "process" ? "process" : "thread"}${(w.executors?.length ?? 0) === 1 ? "" : w.isolation === "process" ? "es" : "s"}`;
      process.stdout.write(
        `${w.id}  ${w.state}  ${w.hostname}:${w.pid}  ${isolation}  running ${w.running}/${w.concurrency}  processed ${w.processed}  failed ${w.failed}  tasks ${w.tasks.map((t) => t.name).join(",")}\n`,
      );
      if ((w.paused ?? []).length > 0) process.stdout.write(`    paused: ${(w.paused ?? []).join(", ")}\n`);
      for (const e of w.executors ?? []) {
        process.stdout.write(`    ${e.id}  pid ${e.pid}  ${e.taskId === undefined ? "idle" : `running ${e.taskId}`}  ran ${e.ran}  replaced ${e.replaced}\n`);
      }
      for (const t of w.runningTasks) if (!(w.executors ?? []).some((e) => e.taskId === t)) process.stdout.write(`    running ${t}\n`);
    }
  });
};

/** `troupe scheduler`: a scheduler until a signal. */
const scheduler = async (flags: Flags) => {
  const troupe = await Troupe.connect(connection(flags));
  const s = troupe.scheduler();
  troupe.log.info({ scheduler: s.id }, "scheduler started");
  const signal = await waitForSignal();
  troupe.log.info({ signal, scheduler: s.id }, "stopping scheduler");
  await troupe.close();
};

/** `troupe retention`: the retention sweeper until a signal (the one role of `troupe auth init` that may purge). */
const retention = async (flags: Flags) => {
  const troupe = await Troupe.connect(connection(flags));
  troupe.startRetention();
  troupe.log.info("retention sweeper started");
  const signal = await waitForSignal();
  troupe.log.info({ signal }, "stopping retention sweeper");
  await troupe.close();
};

/** `troupe schedule add|ls|rm`. */
const schedule = async (flags: Flags, positionals: string[]) => {
  const [sub, id, task, json] = positionals;
  if (sub === "ls") {
    await withClient(flags, async (troupe) => {
      const [list, leader] = await Promise.all([troupe.schedules(), troupe.schedulerLeader()]);
      process.stdout.write(`leading scheduler: ${leader ?? "none (start troupe scheduler, troupe coordinator or troupe dev)"}\n`);
      for (const e of list) {
        const when = e.cron !== undefined ? `cron "${e.cron}"${e.timezone === undefined ? "" : ` ${e.timezone}`}` : `every ${e.everyMs} ms`;
        process.stdout.write(
          `${e.id}  ${e.task} (queue ${e.queue})  ${when}  catch-up ${e.catchUp}  next ${e.nextTick ?? "-"}  last ${e.lastTick === undefined ? "-" : new Date(e.lastTick).toISOString()}\n`,
        );
      }
    });
    return;
  }
  if (sub === "rm") {
    if (id === undefined) throw new UsageError("needs a schedule id");
    await withClient(flags, async (troupe) => {
      if (!(await troupe.unschedule(id))) throw new CliFailure("ScheduleNotFound", `no schedule ${id}`);
      process.stdout.write(`schedule ${id} removed\n`);
    });
    return;
  }
  if (sub === "add") {
    if (id === undefined || task === undefined) throw new UsageError("needs an id and a task name");
    let input: unknown;
    try {
      input = JSON.parse(json ?? "{}");
    } catch (e) {
      throw new UsageError(`the input is not JSON: ${(e as Error).message}`);
    }
    const catchUp = flags["catch-up"];
    if (catchUp !== undefined && catchUp !== "none" && catchUp !== "one" && catchUp !== "all") throw new UsageError("--catch-up is none, one or all");
    const every = durationFlag(flags.every, "every");
    await withClient(flags, async (troupe) => {
      const entry = await troupe.schedule({
        id,
        task,
        input,
        ...(flags.queue === undefined ? {} : { queue: flags.queue }),
        ...(flags.cron === undefined ? {} : { cron: flags.cron }),
        ...(every === undefined ? {} : { every }),
        ...(flags.timezone === undefined ? {} : { timezone: flags.timezone }),
        ...(catchUp === undefined ? {} : { catchUp }),
      });
      process.stdout.write(`schedule ${entry.id}: ${entry.task} ${entry.cron !== undefined ? `on "${entry.cron}"` : `every ${entry.everyMs} ms`}\n`);
    });
    return;
  }
  throw new UsageError(sub === undefined ? "use add, ls or rm" : `use add, ls or rm, not "${sub}"`);
};

/** `troupe pause` / `troupe resume`: a task type (by name, on --queue or `default`) or, with only --queue, a queue. */
const pauseOrResume = async (flags: Flags, positionals: string[], verb: "pause" | "resume") => {
  const [task] = positionals;
  if (task === undefined && flags.queue === undefined) {
    if (verb === "resume") throw new UsageError("needs a task name or --queue");
    await withClient(flags, async (troupe) => {
      const list = await troupe.paused();
      if (list.length === 0) process.stdout.write("nothing is paused\n");
      for (const p of list) {
        process.stdout.write(`${p.task === undefined ? `queue ${p.queue}` : `${p.task} (queue ${p.queue})`}  since ${p.pausedAt}${p.reason === undefined ? "" : `  ${p.reason}`}\n`);
      }
    });
    return;
  }
  const target = { queue: flags.queue ?? "default", ...(task === undefined ? {} : { task }) };
  const what = task === undefined ? `queue ${target.queue}` : `${task} (queue ${target.queue})`;
  await withClient(flags, async (troupe) => {
    if (verb === "pause") {
      await troupe.pause(target, flags.reason === undefined ? {} : { reason: flags.reason });
      process.stdout.write(`paused ${what}: workers start none of it until \`troupe resume\`\n`);
      return;
    }
    if (!(await troupe.resume(target))) throw new CliFailure("NotPaused", `${what} was not paused`);
    process.stdout.write(`resumed ${what}\n`);
  });
};

/** `troupe logs`: lines from TROUPE_LOGS, as JSON, one per line. */
const logs = async (flags: Flags) => {
  await withClient(flags, async (troupe) => {
    const filter = {
      ...(flags.task === undefined ? {} : { task: flags.task }),
      ...(flags.worker === undefined ? {} : { worker: flags.worker }),
      follow: flags.follow === true,
    };
    const lines = troupe.logs(filter);
    // Until Ctrl-C when following: a generator waiting for its next line cannot be returned
    // from, so the loop races the signal (the client's close then ends the consumer).
    const stopped = flags.follow ? waitForSignal().then(() => ({ done: true as const, value: undefined })) : new Promise<never>(() => undefined);
    for (;;) {
      const next = lines.next();
      next.catch(() => undefined);
      const item = await Promise.race([next, stopped]);
      if (item.done === true) break;
      process.stdout.write(`${JSON.stringify(item.value)}\n`);
    }
  });
};

const submit = async (flags: Flags, positionals: string[]) => {
  const [name, json] = positionals;
  if (name === undefined) throw new UsageError("needs a task name");
  let input: unknown;
  try {
    input = JSON.parse(json ?? "{}");
  } catch (e) {
    throw new UsageError(`the input is not JSON: ${(e as Error).message}`);
  }
  // With --module the real definition validates the input here; otherwise the worker does.
  const known = flags.module === undefined ? undefined : (await loadTasks(flags.module)).find((t) => t.name === name);
  if (flags.module !== undefined && known === undefined) throw new UsageError(`${flags.module} exports no task "${name}"`);
  if (known !== undefined && flags.queue !== undefined && flags.queue !== known.queue) {
    throw new UsageError(`--queue "${flags.queue}" contradicts ${flags.module}, whose task "${name}" runs on queue "${known.queue}"`);
  }
  const task = known ?? untypedTask(name, flags.queue);
  const timeout = timeoutFlag(flags);
  await withClient(flags, async (troupe) => {
    const priority = flags.priority === undefined ? undefined : int(flags.priority, "priority", 3);
    const run = await troupe.submit(task, input, {
      ...(priority === undefined ? {} : { priority }),
      ...(flags.key === undefined ? {} : { key: flags.key }),
    });
    await warnUnserved(troupe, "submit", [task]);
    if (!flags.wait) {
      process.stdout.write(`${run.id}\n`);
      return;
    }
    const record = await run.settledRecord(timeout === undefined ? {} : { timeout });
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    if (record.status !== "COMPLETED") process.exitCode = 1;
  });
};

const get = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  if (id === undefined) throw new UsageError("needs a task id");
  await withClient(flags, async (troupe) => {
    const record = await troupe.get(id);
    if (record === undefined) throw new TaskNotFound({ id, message: `no task ${id}` });
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
  });
};

/** `--since`: an ISO time, or a duration back from now (`1h`, "30 minutes"). */
const sinceFlag = (value: string | undefined): number | undefined => {
  if (value === undefined) return undefined;
  const ago = parseDuration(value);
  if (ago !== undefined) return Date.now() - ago;
  const at = Date.parse(value);
  if (Number.isNaN(at)) throw new UsageError(`--since takes a time (ISO) or a duration back from now (1h), got "${value}"`);
  return at;
};

const statusFlag = (value: string | undefined): TaskStatus | undefined => {
  if (value === undefined) return undefined;
  const status = value.toUpperCase();
  if (!(TaskStatuses as ReadonlyArray<string>).includes(status)) throw new UsageError(`--status must be one of ${TaskStatuses.join(", ")}, got "${value}"`);
  return status as TaskStatus;
};

const ls = async (flags: Flags) => {
  await withClient(flags, async (troupe) => {
    const since = sinceFlag(flags.since);
    const page = await troupe.list({
      ...(flags.status === undefined ? {} : { status: statusFlag(flags.status) }),
      ...(flags.task === undefined ? {} : { task: flags.task }),
      ...(flags.queue === undefined ? {} : { queue: flags.queue }),
      ...(since === undefined ? {} : { since }),
      ...(flags.limit === undefined ? {} : { limit: int(flags.limit, "limit", 50) }),
      ...(flags.cursor === undefined ? {} : { cursor: flags.cursor }),
    });
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(page, null, 2)}\n`);
      return;
    }
    const rows = page.tasks.map((t) => [t.id, t.status, t.task, t.queue, String(t.attempt), t.finishedAt ?? t.startedAt ?? t.createdAt, t.error === undefined ? "" : `${t.error._tag}: ${t.error.message}`.slice(0, 60)]);
    printTable(["ID", "STATUS", "TASK", "QUEUE", "ATTEMPT", "AT", "ERROR"], rows);
    if (page.cursor !== undefined) process.stdout.write(`more: ${nextPage(flags, since, page.cursor)}\n`);
  });
};

/** The command for the next page: every filter of this one (`--since` as the time it stood for), and the cursor. */
const nextPage = (flags: Flags, since: number | undefined, cursor: string): string => {
  const args = [
    ...(flags.status === undefined ? [] : ["--status", flags.status.toUpperCase()]),
    ...(flags.task === undefined ? [] : ["--task", flags.task]),
    ...(flags.queue === undefined ? [] : ["--queue", flags.queue]),
    ...(since === undefined ? [] : ["--since", new Date(since).toISOString()]),
    ...(flags.limit === undefined ? [] : ["--limit", flags.limit]),
    "--cursor",
    cursor,
  ];
  return ["troupe", "ls", ...args.map(shellWord)].join(" ");
};

/** A word as a POSIX shell reads it back: as it is when plain, else single-quoted. */
const shellWord = (word: string): string => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`);

/** Rows under a header, each column as wide as its widest cell. */
const printTable = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  for (const row of [header, ...rows]) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
};

const retry = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  await withClient(flags, async (troupe) => {
    if (id !== undefined) {
      const run = await troupe.retry(id);
      process.stdout.write(`task ${run.id} queued again\n`);
      if (flags.wait) {
        const timeout = timeoutFlag(flags);
        const record = await run.settledRecord(timeout === undefined ? {} : { timeout });
        process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
        if (record.status !== "COMPLETED") process.exitCode = 1;
      }
      return;
    }
    if (flags.status === undefined && flags.task === undefined) throw new UsageError("needs a task id, or --status FAILED|CANCELLED and/or --task to retry many");
    const status = statusFlag(flags.status) ?? "FAILED";
    if (status !== "FAILED" && status !== "CANCELLED") throw new UsageError("--status takes FAILED or CANCELLED");
    const since = sinceFlag(flags.since);
    const limit = flags.limit === undefined ? undefined : int(flags.limit, "limit", 0);
    const result = await troupe.retry({
      status,
      ...(flags.task === undefined ? {} : { task: flags.task }),
      ...(flags.queue === undefined ? {} : { queue: flags.queue }),
      ...(since === undefined ? {} : { since }),
      ...(limit === undefined ? {} : { limit }),
    });
    process.stdout.write(`${result.retried.length} ${status} task(s) queued again${result.skipped.length > 0 ? `, ${result.skipped.length} skipped (they moved on)` : ""}\n`);
  });
};

const history = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  if (id === undefined) throw new UsageError("needs a task id");
  await withClient(flags, async (troupe) => {
    const events = await troupe.history(id);
    if (events.length === 0) throw new TaskNotFound({ id, message: `no events of task ${id} (none, or past TROUPE_EVENTS' age limit)` });
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(events, null, 2)}\n`);
      return;
    }
    const rows = events.map((e) => {
      const r = e.record as { status?: string; attempt?: number; workerId?: string; error?: { _tag: string; message: string } } | null;
      return [e.at, e.event, String(r?.attempt ?? ""), r?.workerId ?? "", r?.error === undefined ? "" : `${r.error._tag}: ${r.error.message}`.slice(0, 60)];
    });
    printTable(["AT", "EVENT", "ATTEMPT", "WORKER", "ERROR"], rows);
  });
};

const cancel = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  if (id === undefined) throw new UsageError("needs a task id");
  await withClient(flags, async (troupe) => {
    const result = await troupe.cancel(id, flags.reason);
    process.stdout.write(`${result.message}\n`);
    if (!result.cancelled) process.exitCode = 1;
  });
};

/** `troupe <verb> --help`: the verb's lines of the usage (each with its description), then the connection flags. */
const verbUsage = (verb: string): string => {
  const lines = USAGE.split("\n");
  const own: string[] = [];
  let mine = false;
  for (const line of lines) {
    const start = /^  troupe (\S+)/.exec(line);
    if (start !== null) mine = start[1] === verb;
    else if (!line.startsWith("    ")) mine = false;
    if (mine) own.push(line);
  }
  if (own.length === 0) return USAGE;
  const connection = USAGE.slice(USAGE.indexOf("Connection ("));
  return `Usage:\n${own.join("\n")}\n\n${connection}`;
};

/** The verbs whose first argument is a subcommand, named with it in errors (`troupe workflow run: ...`). */
const SUBCOMMANDS: Readonly<Record<string, ReadonlyArray<string>>> = {
  workflow: ["run", "get", "cancel"],
  schedule: ["add", "ls", "rm"],
  worker: ["stop", "shutdown"],
  auth: ["init"],
};

/** What an error line names: `troupe`, the verb, or the verb and its subcommand. */
const commandOf = (verb: string | undefined, sub: string | undefined): string =>
  verb === undefined ? "troupe" : sub !== undefined && SUBCOMMANDS[verb]?.includes(sub) ? `troupe ${verb} ${sub}` : `troupe ${verb}`;

/**
 * Every error, on stderr, as one line: `troupe <verb>: <_tag>: <message>` (a multi-line
 * message joined into one). A usage mistake (exit 2) adds a hint line; any other failure exits 1.
 */
const reportError = (command: string, e: unknown): void => {
  const err = permissionDenied(e) ?? e; // a refused permission, as one line naming the subject
  const tag = (err as { _tag?: unknown })._tag;
  const name = typeof tag === "string" ? tag : err instanceof Error ? err.name : "Error";
  const text = err instanceof Error || (typeof err === "object" && err !== null && "message" in err) ? String((err as { message: unknown }).message) : String(err);
  const message = text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .join(" ");
  const usage = err instanceof UsageError;
  process.stderr.write(`${command}: ${name}: ${message}\n${usage ? "Run `troupe --help` for usage.\n" : ""}`);
  process.exitCode = usage ? 2 : 1;
};

export const main = async (argv: string[]): Promise<void> => {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    // Not parsed: the verb is the first word, when the command line starts with one.
    const first = argv[0] !== undefined && !argv[0].startsWith("-") ? argv[0] : undefined;
    reportError(commandOf(first, argv[1]), new UsageError((e as Error).message));
    return;
  }
  const { values: flags, positionals } = parsed;
  const [verb, ...rest] = positionals;
  currentVerb = verb ?? "";
  const command = commandOf(verb, rest[0]);
  if (flags.password !== undefined) {
    process.stderr.write(`${command}: warning: --password shows in \`ps\` to every user of this machine; use TROUPE_PASS or --password-file FILE\n`);
  }
  try {
    if (flags.help || verb === undefined || verb === "help") {
      process.stdout.write(verb === undefined || verb === "help" ? USAGE : verbUsage(verb));
      return;
    }
    switch (verb) {
      case "dev":
        return await dev(flags);
      case "demo":
        return await runDemo({ tasks: int(flags.tasks, "tasks", 2_000), concurrency: int(flags.concurrency, "concurrency", 32) });
      case "worker":
        return await worker(flags, rest);
      case "workers":
        return await workers(flags);
      case "stats":
        return await withClient(flags, (troupe) => showStats(troupe, { watch: flags.watch === true, json: flags.json === true }));
      case "logs":
        return await logs(flags);
      case "scheduler":
        return await scheduler(flags);
      case "retention":
        return await retention(flags);
      case "schedule":
        return await schedule(flags, rest);
      case "pause":
      case "resume":
        return await pauseOrResume(flags, rest, verb);
      case "submit":
        return await submit(flags, rest);
      case "get":
        return await get(flags, rest);
      case "ls":
        return await ls(flags);
      case "retry":
        return await retry(flags, rest);
      case "history":
        return await history(flags, rest);
      case "cancel":
        return await cancel(flags, rest);
      case "coordinator":
        return await coordinator(flags);
      case "gateway":
        return await gateway(flags);
      case "inspect":
        return await inspect(flags);
      case "workflow":
        return await workflow(flags, rest);
      case "setup":
        process.exitCode = await runSetup(
          connection(flags),
          flags.check === true,
          (line) => process.stdout.write(`${line}\n`),
          flags.migrate === true,
          (line) => process.stderr.write(`${line}\n`),
        );
        return;
      case "auth":
        if (rest[0] !== "init" || rest[1] === undefined) throw new UsageError(rest[0] === "init" ? "needs a directory" : "use troupe auth init <dir>");
        return await runAuthInit(rest[1], flags["queue-worker"] ?? [], (line) => process.stdout.write(`${line}\n`), flags.force === true);
      case "config":
        process.stdout.write(formatConfig(configOf(flags), flags.json === true));
        return;
      default:
        throw new UsageError(`unknown command "${verb}"`);
    }
  } catch (e) {
    reportError(command, e);
  }
};

// Run when this file is the program, also through the `troupe` symlink npm installs.
const invoked = process.argv[1] !== undefined && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
if (invoked) {
  void main(process.argv.slice(2)).then(() => {
    // Exit even if a library left a handle open.
    if (process.exitCode === undefined || process.exitCode === 0) process.exit(0);
    process.exit(process.exitCode);
  });
}
