/** Run the `troupe` CLI from source in a child process. */
import { spawn, type ChildProcess } from "node:child_process";
import { resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const tsx = resolve(root, "node_modules/tsx/dist/cli.mjs");
const main = resolve(root, "src/cli/main.ts");

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export const spawnCli = (args: string[], env: Record<string, string> = {}): ChildProcess =>
  spawn(process.execPath, [tsx, main, ...args], {
    cwd: root,
    env: { ...process.env, TROUPE_LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });

export const runCli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> =>
  new Promise((res) => {
    const child = spawnCli(args, env);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("exit", (code) => res({ code, stdout, stderr }));
  });

/** Resolves with the first stdout line that matches. */
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
