/**
 * A new user's first hour, scripted: the README's SDK on the embedded default, run as their
 * own program in a fresh folder with the default log level. Its stdout holds only what it
 * printed; it exits by itself at once; nothing is left running (the server it started is
 * gone) and nothing is left in the temp folder.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { processAlive } from "../../src/dev/store-lock.js";

const root = resolve(import.meta.dirname, "../..");
const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const until = async (what: string, condition: () => boolean, timeoutMs = 20_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not in ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

describe("the first hour", () => {
  it("the README's program prints only its own lines, exits by itself, and leaves no server and no temp files", async () => {
    const project = await mkdtemp(join(tmpdir(), "troupe-first-hour-"));
    const temp = await mkdtemp(join(tmpdir(), "troupe-first-hour-tmp-"));
    dirs.push(project, temp);
    // The user's own environment: no log level set (the suite sets one), a temp folder of its own.
    // (tsx, which runs the program here, keeps no cache there either: that would be tsx's, not Troupe's.)
    const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: temp, TSX_DISABLE_CACHE: "1" };
    delete env.TROUPE_LOG_LEVEL;
    delete env.NATS_URL;
    const child = spawn(process.execPath, ["--import", tsx, join(root, "test/fixtures/first-hour.ts")], { cwd: project, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((res) => child.on("close", res));
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });

    const lines = stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^server \d+$/);
    expect(lines[1]).toBe("1 + 2 = 3");
    expect(lines[2]).toMatch(/^TaskRun \{ id: '[\w-]+', task: 'math\.add', queue: 'default' \}$/);
    expect(lines.slice(3)).toEqual([`100 tasks, sum ${(99 * 100) / 2}`, "cancelled: CANCELLED", "done"]);

    // The server it started (named by its store's lock while it ran) is gone, and so is the lock.
    const store = join(project, ".troupe/nats");
    const lock = await readFile(join(store, "troupe-server.json"), "utf8").catch(() => undefined);
    expect(lock).toBeUndefined();
    const server = Number(lines[0]!.split(" ")[1]);
    await until(`its nats-server (pid ${server}) gone`, () => !processAlive(server));
    expect(await readdir(temp)).toEqual([]);
  }, 120_000);
});
