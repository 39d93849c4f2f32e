#!/usr/bin/env node
/**
 * The `troupe` command: dev, worker, submit, get, demo.
 * Connection from `NATS_URL` or `--server`, plus credentials and TLS flags.
 */
import { resolve } from "node:path";
import { realpathSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { pino } from "pino";
import { NatsServer } from "../dev/nats-server.js";
import { runDemo } from "../dev/demo.js";
import { untypedTask, type TaskDefinition } from "../task.js";
import { Troupe, type TroupeOptions } from "../sdk/troupe.js";
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { workflowFromDocument } from "../workflow.js";
import type { WorkflowRecord } from "../../machines/workflow.js";
import { ProgressBar } from "./progress.js";
import { startInspector } from "../inspect/server.js";

const USAGE = `troupe — tasks and workflows as actors on NATS JetStream

Usage:
  troupe dev [--store DIR] [--port N] [--ui-port N]
                                             an embedded nats-server -js, a coordinator and the inspector
  troupe demo [--tasks N]                    run the demo on its own embedded server
  troupe worker <module> [--concurrency N]   run the tasks a module exports (SIGTERM/SIGINT stop it gracefully)
  troupe submit <task> '<json>' [--wait] [--queue Q] [--module FILE]
                                             submit a task; --wait prints its result
  troupe get <id>                            print a task's state record (JSON)
  troupe cancel <id> [--reason TEXT]         cancel a task (a finished one is left as it is)
  troupe coordinator                         advance workflow runs (run any number of them)
  troupe inspect [--ui-port N]               the inspector: actors live, their machines and histories
  troupe workflow run <file> [--input '<json>'] [--watch]
                                             start a workflow from a JSON or YAML file
  troupe workflow get <id>                   print a workflow run's record (JSON)
  troupe workflow cancel <id>                cancel a workflow run

Connection (every verb but dev and demo):
  --server URL       NATS server(s), comma-separated (default: $NATS_URL or nats://127.0.0.1:4222)
  --user U --password P | --token T | --creds FILE
  --tls-ca FILE --tls-cert FILE --tls-key FILE
  --replicas N       stream and bucket replicas when they are created (default 1)
`;

const options = {
  server: { type: "string" },
  user: { type: "string" },
  password: { type: "string" },
  token: { type: "string" },
  creds: { type: "string" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  replicas: { type: "string" },
  concurrency: { type: "string" },
  store: { type: "string" },
  port: { type: "string" },
  tasks: { type: "string" },
  queue: { type: "string" },
  module: { type: "string" },
  wait: { type: "boolean" },
  reason: { type: "string" },
  input: { type: "string" },
  "ui-port": { type: "string" },
  watch: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>["values"];

/** A CLI mistake: printed with the usage, exit code 2. */
class UsageError extends Error {}

const int = (value: string | undefined, name: string, fallback: number): number => {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a non-negative integer, got "${value}"`);
  return n;
};

const connection = (flags: Flags): TroupeOptions => ({
  ...(flags.server === undefined ? {} : { servers: flags.server }),
  ...(flags.user === undefined ? {} : { user: flags.user, pass: flags.password ?? "" }),
  ...(flags.token === undefined ? {} : { token: flags.token }),
  ...(flags.creds === undefined ? {} : { credentials: flags.creds }),
  ...(flags["tls-ca"] ?? flags["tls-cert"] ?? flags["tls-key"]
    ? {
        tls: {
          ...(flags["tls-ca"] === undefined ? {} : { caFile: flags["tls-ca"] }),
          ...(flags["tls-cert"] === undefined ? {} : { certFile: flags["tls-cert"] }),
          ...(flags["tls-key"] === undefined ? {} : { keyFile: flags["tls-key"] }),
        },
      }
    : {}),
  replicas: int(flags.replicas, "replicas", 1),
  name: "troupe-cli",
});

/** A short-lived client for one command, closed however the command ends. */
const withClient = async (flags: Flags, use: (troupe: Troupe) => Promise<void>): Promise<void> => {
  const troupe = await Troupe.connect({ ...connection(flags), logger: pino({ level: "warn" }) });
  try {
    await use(troupe);
  } finally {
    await troupe.close();
  }
};

const isTask = (value: unknown): value is TaskDefinition =>
  typeof value === "object" && value !== null && (value as { _tag?: unknown })._tag === "TaskDefinition";

/** Every task definition a module exports, directly or in an exported array. */
export const loadTasks = async (file: string): Promise<TaskDefinition[]> => {
  const mod = (await import(pathToFileURL(resolve(file)).href)) as Record<string, unknown>;
  const found = new Map<string, TaskDefinition>();
  for (const value of Object.values(mod)) {
    for (const item of Array.isArray(value) ? value : [value]) if (isTask(item)) found.set(item.name, item);
  }
  return [...found.values()];
};

const waitForSignal = () =>
  new Promise<NodeJS.Signals>((res) => {
    process.once("SIGINT", () => res("SIGINT"));
    process.once("SIGTERM", () => res("SIGTERM"));
  });

const inspect = async (flags: Flags) => {
  const troupe = await Troupe.connect(connection(flags));
  const inspector = await startInspector(troupe, { port: int(flags["ui-port"], "ui-port", 0) });
  process.stdout.write(`troupe inspect: ${inspector.url}\n`);
  await waitForSignal();
  await inspector.close();
  await troupe.close();
};

const coordinator = async (flags: Flags) => {
  const troupe = await Troupe.connect(connection(flags));
  await troupe.coordinator();
  const signal = await waitForSignal();
  troupe.log.info({ signal }, "stopping coordinator");
  await troupe.close();
};

const workflow = async (flags: Flags, positionals: string[]) => {
  const [sub, arg] = positionals;
  if (sub === "run") {
    if (arg === undefined) throw new UsageError("troupe workflow run needs a workflow file (JSON or YAML)");
    const text = await readFile(arg, "utf8");
    let doc: unknown;
    try {
      doc = /\.ya?ml$/i.test(arg) ? parseYaml(text) : JSON.parse(text);
    } catch (e) {
      throw new UsageError(`${arg} is not valid ${/\.ya?ml$/i.test(arg) ? "YAML" : "JSON"}: ${(e as Error).message}`);
    }
    const definition = workflowFromDocument(doc);
    let input: unknown = {};
    try {
      input = JSON.parse(flags.input ?? "{}");
    } catch (e) {
      throw new UsageError(`--input is not JSON: ${(e as Error).message}`);
    }
    await withClient(flags, async (troupe) => {
      const run = await troupe.start(definition, input);
      if (!flags.watch) {
        process.stdout.write(`${run.id}\n`);
        return;
      }
      const record = await watchRun(troupe, run.id, Object.keys(definition.steps));
      process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
      if (record.status !== "COMPLETED") process.exitCode = 1;
    });
    return;
  }
  if (sub === "get" || sub === "cancel") {
    if (arg === undefined) throw new UsageError(`troupe workflow ${sub} needs a run id`);
    await withClient(flags, async (troupe) => {
      const record = sub === "get" ? await troupe.getWorkflow(arg) : await troupe.cancelWorkflow(arg, flags.reason);
      if (record === undefined) {
        process.stderr.write(`no workflow run ${arg}\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    });
    return;
  }
  throw new UsageError(`troupe workflow ${sub ?? ""}: use run, get or cancel`);
};

/** Each step's state, live, with a progress bar; resolves with the terminal record. */
const watchRun = async (troupe: Troupe, id: string, steps: string[]): Promise<WorkflowRecord> => {
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
  const sub = troupe.nc.subscribe(`troupe.events.workflow.${id}.*`, {
    callback: (_e, msg) => show(JSON.parse(new TextDecoder().decode(msg.data)) as WorkflowRecord),
  });
  try {
    const now = await troupe.getWorkflow(id);
    if (now !== undefined) show(now);
    return await run.settledRecord();
  } finally {
    sub.unsubscribe();
  }
};

const dev = async (flags: Flags) => {
  const server = await NatsServer.start({
    storeDir: flags.store ?? ".troupe/nats",
    syncAlways: true,
    ...(flags.port === undefined ? {} : { port: int(flags.port, "port", 4222) }),
  });
  // The embedded default also runs a coordinator, so workflows advance with no other process.
  const troupe = await Troupe.connect({ servers: server.url });
  await troupe.coordinator();
  const inspector = await startInspector(troupe, { port: int(flags["ui-port"], "ui-port", 0) });
  process.stdout.write(
    `troupe dev: nats-server with JetStream at ${server.url} (store ${server.storeDir})\n` +
      `  export NATS_URL=${server.url}\n` +
      `  troupe worker ./tasks.js        # in another terminal\n` +
      `  nats --server ${server.url} stream ls\n` +
      `A coordinator runs here too; the inspector is at ${inspector.url}\n` +
      `Ctrl-C stops it all.\n`,
  );
  await waitForSignal();
  await inspector.close();
  await troupe.close();
  await server.stop();
};

const worker = async (flags: Flags, positionals: string[]) => {
  const file = positionals[0];
  if (file === undefined) throw new UsageError("troupe worker needs a module that exports tasks");
  const tasks = await loadTasks(file);
  if (tasks.length === 0) throw new UsageError(`${file} exports no task definitions (defineTask)`);
  const troupe = await Troupe.connect(connection(flags));
  const w = await troupe.worker({ tasks, concurrency: int(flags.concurrency, "concurrency", 1) });
  const signal = await waitForSignal();
  troupe.log.info({ workerId: w.id, signal }, "stopping worker");
  await w.stop();
  await troupe.close();
};

const submit = async (flags: Flags, positionals: string[]) => {
  const [name, json] = positionals;
  if (name === undefined) throw new UsageError("troupe submit needs a task name");
  let input: unknown;
  try {
    input = JSON.parse(json ?? "{}");
  } catch (e) {
    throw new UsageError(`the input is not JSON: ${(e as Error).message}`);
  }
  // With --module the real definition validates the input here; otherwise the worker does.
  const known = flags.module === undefined ? undefined : (await loadTasks(flags.module)).find((t) => t.name === name);
  if (flags.module !== undefined && known === undefined) throw new UsageError(`${flags.module} exports no task "${name}"`);
  const task = known ?? untypedTask(name, flags.queue);
  await withClient(flags, async (troupe) => {
    const run = await troupe.submit(task, input);
    if (!flags.wait) {
      process.stdout.write(`${run.id}\n`);
      return;
    }
    const record = await run.settledRecord();
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
    if (record.status !== "COMPLETED") process.exitCode = 1;
  });
};

const get = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  if (id === undefined) throw new UsageError("troupe get needs a task id");
  await withClient(flags, async (troupe) => {
    const record = await troupe.get(id);
    if (record === undefined) {
      process.stderr.write(`no task ${id}\n`);
      process.exitCode = 1;
      return;
    }
    process.stdout.write(`${JSON.stringify(record, null, 2)}\n`);
  });
};

const cancel = async (flags: Flags, positionals: string[]) => {
  const id = positionals[0];
  if (id === undefined) throw new UsageError("troupe cancel needs a task id");
  await withClient(flags, async (troupe) => {
    const result = await troupe.cancel(id, flags.reason);
    process.stdout.write(`${result.message}\n`);
    if (!result.cancelled) process.exitCode = 1;
  });
};

export const main = async (argv: string[]): Promise<void> => {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  const { values: flags, positionals } = parsed;
  const [verb, ...rest] = positionals;
  try {
    if (flags.help || verb === undefined || verb === "help") {
      process.stdout.write(USAGE);
      return;
    }
    switch (verb) {
      case "dev":
        return await dev(flags);
      case "demo":
        return await runDemo({ tasks: int(flags.tasks, "tasks", 2_000), concurrency: int(flags.concurrency, "concurrency", 32) });
      case "worker":
        return await worker(flags, rest);
      case "submit":
        return await submit(flags, rest);
      case "get":
        return await get(flags, rest);
      case "cancel":
        return await cancel(flags, rest);
      case "coordinator":
        return await coordinator(flags);
      case "inspect":
        return await inspect(flags);
      case "workflow":
        return await workflow(flags, rest);
      default:
        throw new UsageError(`unknown command "${verb}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message}\n\n${USAGE}`);
      process.exitCode = 2;
      return;
    }
    const tag = (e as { _tag?: string })._tag;
    process.stderr.write(`troupe ${verb}: ${tag ? `${tag}: ` : ""}${(e as Error).message ?? String(e)}\n`);
    process.exitCode = 1;
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
