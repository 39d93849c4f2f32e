/**
 * The embedded server's life: it dies with the process that started it however that process
 * ends (a throw, SIGKILL, `troupe dev` closed by SIGHUP), and its store is locked: a second
 * start reuses the running server or refuses, never starting a second one on the same store.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { StoreLocked, Troupe } from "../../src/index.js";
import { processAlive } from "../../src/dev/store-lock.js";
import { killCliChildren, spawnCli, spawnScript, waitForOutput } from "../helpers/cli.js";

const CHILD = "test/fixtures/dev-child.ts";

interface Lock {
  readonly owner: number;
  readonly pid: number;
  readonly url: string;
  readonly conf: string;
}
const lockOf = async (store: string): Promise<Lock> => JSON.parse(await readFile(join(store, "troupe-server.json"), "utf8")) as Lock;

const until = async (what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not in ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const exited = (child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> =>
  new Promise((res) => {
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code, signal) => res({ code, signal, stderr }));
  });

const freePort = (): Promise<number> =>
  new Promise((res) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => res(typeof address === "object" && address !== null ? address.port : 0));
    });
  });

const dirs: string[] = [];
const tempDir = async () => {
  const dir = await mkdtemp(join(tmpdir(), "troupe-devlife-"));
  dirs.push(dir);
  return dir;
};

afterEach(async () => {
  killCliChildren();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

/** The server is gone, and so are its lock and its config folder. */
const expectGone = async (store: string, lock: Lock) => {
  await until(`nats-server ${lock.pid} exits`, () => !processAlive(lock.pid));
  await until("its lock and config folder are removed", () => !existsSync(join(store, "troupe-server.json")) && !existsSync(dirname(lock.conf)));
};

describe("the embedded server dies with its parent", () => {
  it("a program that throws after `await Troupe.dev()` leaves no nats-server running", async () => {
    const store = join(await tempDir(), "nats");
    const child = spawnScript(CHILD, [store, "throw"]);
    const done = exited(child);
    const ready = await waitForOutput(child, /^dev ready: pid \d+/);
    const pid = Number(/pid (\d+)/.exec(ready)?.[1]);
    const outcome = await done;
    expect(outcome.code).toBe(1);
    expect(outcome.stderr).toContain("my bug");
    await until(`nats-server ${pid} exits`, () => !processAlive(pid));
    await until("its lock is removed", () => !existsSync(join(store, "troupe-server.json")));
  });

  it("a SIGKILLed program leaves no nats-server running", async () => {
    const store = join(await tempDir(), "nats");
    const child = spawnScript(CHILD, [store, "wait"]);
    const done = exited(child);
    await waitForOutput(child, /^dev ready: pid \d+/);
    const lock = await lockOf(store);
    expect(processAlive(lock.pid)).toBe(true);
    child.kill("SIGKILL");
    expect((await done).signal).toBe("SIGKILL");
    await expectGone(store, lock);
  });

  it("`troupe dev` locks its store (a second one refuses, Troupe.dev() reuses its server) and stops it all on SIGHUP", async () => {
    const dir = await tempDir();
    const store = join(dir, "nats");
    const dev = spawnCli(["dev", "--store", store, "--port", String(await freePort()), "--ui-port", "0"], { NATS_URL: undefined }, { cwd: dir });
    const devDone = exited(dev);
    await waitForOutput(dev, /^troupe dev: nats-server with JetStream at nats:/);
    const lock = await lockOf(store);

    // A second `troupe dev` on the store: one line naming the running server, exit 1, no server started.
    const second = spawnCli(["dev", "--store", store, "--port", String(await freePort()), "--ui-port", "0"], { NATS_URL: undefined }, { cwd: dir });
    const refused = await exited(second);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`troupe dev: StoreLocked: the store ${store} is in use by the nats-server (pid ${lock.pid}) at ${lock.url} that process ${lock.owner} started\n`);
    expect(await lockOf(store)).toEqual(lock);

    // Troupe.dev() on the store: a client of the running server, which its close() leaves running.
    const reused = await Troupe.dev({ storeDir: store });
    expect(reused.url).toBe(lock.url);
    expect(await lockOf(store)).toEqual(lock);
    await reused.close();
    expect(processAlive(lock.pid)).toBe(true);

    // A closed terminal: SIGHUP stops dev gracefully (nats-server alone would take it as "reload").
    dev.kill("SIGHUP");
    expect((await devDone).code).toBe(0);
    await expectGone(store, lock);
    expect(existsSync(join(dir, ".troupe", "url"))).toBe(false);
  });

  it("two Troupe.dev() at once on one store share one server; a stale lock (dead processes) is taken over", async () => {
    const store = join(await tempDir(), "nats");
    const [a, b] = await Promise.all([Troupe.dev({ storeDir: store }), Troupe.dev({ storeDir: store })]);
    const lock = await lockOf(store);
    expect(a.url).toBe(lock.url);
    expect(b.url).toBe(lock.url);
    await b.close();
    await a.close();
    await expectGone(store, lock);

    // A lock left by processes that are gone: a process that has exited lends its pid.
    const gone = spawn(process.execPath, ["-e", ""]);
    await new Promise((r) => gone.on("exit", r));
    const dead = gone.pid!;
    await writeFile(join(store, "troupe-server.json"), JSON.stringify({ token: "stale", owner: dead, pid: dead, url: "nats://127.0.0.1:1", conf: "/nonexistent/server.conf", startedAt: new Date(0).toISOString() }));
    const troupe = await Troupe.dev({ storeDir: store });
    try {
      const taken = await lockOf(store);
      expect(taken.owner).toBe(process.pid);
      expect(troupe.url).toBe(taken.url);
    } finally {
      await troupe.close();
    }
    expect(existsSync(join(store, "troupe-server.json"))).toBe(false);
  });

  it("refuses with StoreLocked when the server of the store does not answer", async () => {
    const store = join(await tempDir(), "nats");
    const child = spawnScript(CHILD, [store, "wait"]);
    const done = exited(child);
    await waitForOutput(child, /^dev ready: pid \d+/);
    const lock = await lockOf(store);
    process.kill(lock.pid, "SIGSTOP");
    try {
      const error = await Troupe.dev({ storeDir: store, connectTimeout: 500 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StoreLocked);
      expect((error as StoreLocked).message).toContain(`in use by the nats-server (pid ${lock.pid}) at ${lock.url}`);
      expect((error as StoreLocked).message).toContain("does not answer");
    } finally {
      process.kill(lock.pid, "SIGCONT");
      child.kill("SIGTERM");
      await done;
    }
    await expectGone(store, lock);
  });
});
