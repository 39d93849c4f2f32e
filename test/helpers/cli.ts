/** Run the `troupe` CLI from source in a child process. */
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const root = resolve(import.meta.dirname, "../..");
const main = resolve(root, "src/cli/main.ts");
/** tsx's loader by its file URL: `--import tsx` would be resolved from the child's working directory. */
const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Variables for the child, over this process's; `undefined` removes one (e.g. `NATS_URL`). */
export type CliEnv = Record<string, string | undefined>;

export interface CliOptions {
  /** The child's working directory (default: the repository root). */
  readonly cwd?: string;
}

/** Every CLI child still running, for `killCliChildren`. */
const running = new Set<ChildProcess>();

export const spawnCli = (args: string[], env: CliEnv = {}, options: CliOptions = {}): ChildProcess => {
  const merged: Record<string, string | undefined> = { ...process.env, TROUPE_LOG_LEVEL: "warn", ...env };
  for (const [key, value] of Object.entries(merged)) if (value === undefined) delete merged[key];
  // One process (`node --import tsx`), not tsx's CLI, which runs the program in a child:
  // a SIGKILL or SIGSTOP must reach the worker itself.
  const child = spawn(process.execPath, ["--import", tsx, main, ...args], {
    cwd: options.cwd ?? root,
    env: merged,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.on("exit", () => running.delete(child));
  return child;
};

/** A TypeScript program (a fixture) in a child process, `node --import tsx <file> ...args`. */
export const spawnScript = (file: string, args: string[], options: CliOptions = {}): ChildProcess => {
  const child = spawn(process.execPath, ["--import", tsx, resolve(root, file), ...args], {
    cwd: options.cwd ?? root,
    env: { ...process.env, TROUPE_LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.on("exit", () => running.delete(child));
  return child;
};

/** SIGKILL every CLI child still running (those of `runCli` too), e.g. in afterEach. */
export const killCliChildren = (): void => {
  for (const child of running) child.kill("SIGKILL");
  running.clear();
};

export const runCli = (args: string[], env: CliEnv = {}, options: CliOptions = {}): Promise<CliResult> =>
  new Promise((res) => {
    const child = spawnCli(args, env, options);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    // "close", not "exit": the output is all read by then.
    child.on("close", (code) => res({ code, stdout, stderr }));
  });

/** Resolves with the first line of stdout or stderr that matches. */
export const waitForOutput = (child: ChildProcess, pattern: RegExp, timeoutMs = 30_000): Promise<string> =>
  new Promise((res, rej) => {
    let seen = "";
    const timer = setTimeout(() => rej(new Error(`no ${pattern} in output: ${seen}`)), timeoutMs);
    const onData = (d: Buffer) => {
      seen += d.toString();
      const m = seen.split("\n").find((line) => pattern.test(line));
      if (m !== undefined) {
        clearTimeout(timer);
        res(m);
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
  });

export interface WorkerProcess {
  readonly child: ChildProcess;
  readonly id: string;
  /** Every JSON log line so far (from its stderr). */
  readonly lines: Array<Record<string, unknown>>;
  /** Resolves with the first log line that matches. */
  readonly waitForLog: (predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number) => Promise<Record<string, unknown>>;
  readonly exited: Promise<number | null>;
}

/** A `troupe worker <module>` child process, resolved once it has started; `args` are more flags. */
export const startWorkerProcess = async (url: string, module: string, concurrency: number | null = 4, args: string[] = []): Promise<WorkerProcess> => {
  const child = spawnCli(["worker", module, ...(concurrency === null ? [] : ["--concurrency", String(concurrency)]), ...args], {
    NATS_URL: url,
    TROUPE_LOG_LEVEL: "info",
  });
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<{ predicate: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let buffer = "";
  let stderr = "";
  // Its log lines are on stderr (JSON, one a line), among whatever else it writes there.
  child.stderr?.on("data", (d: Buffer) => {
    stderr = `${stderr}${d.toString()}`.slice(-4_000);
    buffer += d.toString();
    const parts = buffer.split("\n");
    buffer = parts.pop() ?? "";
    for (const part of parts) {
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(part) as Record<string, unknown>;
      } catch {
        continue;
      }
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.predicate(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  const waitForLog = (predicate: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((res, rej) => {
      const seen = lines.find(predicate);
      if (seen !== undefined) return res(seen);
      const timer = setTimeout(() => rej(new Error(`log line not seen in time; stderr: ${stderr}`)), timeoutMs);
      waiters.push({
        predicate,
        resolve: (l) => {
          clearTimeout(timer);
          res(l);
        },
      });
    });
  const started = await Promise.race([
    waitForLog((l) => l.msg === "worker started"),
    exited.then((code) => Promise.reject(new Error(`troupe worker exited (${code}) before it started; stderr: ${stderr}`))),
  ]);
  return { child, id: String(started.workerId), lines, waitForLog, exited };
};
