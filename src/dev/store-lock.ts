/**
 * The lock a local nats-server holds on its store folder: one JSON file in the store
 * (`troupe-server.json`) naming the process that started the server, the server's pid, its
 * URL and its config file. Created exclusively (`wx`), so two starts never both get it; a
 * lock whose processes are gone is taken over. A second start on a locked store learns
 * where the running server is (to reuse it) or refuses, with `StoreLocked`.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { link, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { StoreLocked } from "../errors.js";

export const LOCK_FILE = "troupe-server.json";

/** What the lock file holds. */
export interface StoreLockInfo {
  /** A fresh id of this lock: a takeover checks it moved the lock it judged stale. */
  readonly token: string;
  /** The process that started (and stops) the server. */
  readonly owner: number;
  /** The server's pid, its URL and config file, once it runs. */
  readonly pid?: number;
  readonly url?: string;
  readonly conf?: string;
  readonly startedAt: string;
}

/** Whether a process of this pid runs (one of another user's counts; a zombie, exited but not yet reaped, does not). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    // `/proc/<pid>/stat`: "pid (name) state ...", the name possibly holding spaces or parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return !existsSync("/proc/self/stat"); // without /proc (macOS), the signal's answer
  }
};

/** The server of the lock is running: its pid lives and, where `/proc` tells, runs with the lock's config file. */
const serverAlive = (info: StoreLockInfo): boolean => {
  if (info.pid === undefined || !processAlive(info.pid)) return false;
  if (info.conf === undefined || !existsSync("/proc/self/cmdline")) return true;
  try {
    return readFileSync(`/proc/${info.pid}/cmdline`, "utf8").includes(info.conf);
  } catch {
    return false;
  }
};

const readLock = async (path: string): Promise<StoreLockInfo | undefined> => {
  try {
    const info = JSON.parse(await readFile(path, "utf8")) as Partial<StoreLockInfo>;
    return typeof info.token === "string" && typeof info.owner === "number" ? (info as StoreLockInfo) : undefined;
  } catch {
    return undefined;
  }
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The lock this process holds on a store. */
export class StoreLock {
  private constructor(
    readonly path: string,
    private info: StoreLockInfo,
  ) {}

  /**
   * Take the store's lock, waiting (up to `timeoutMs`) for a server that is starting or
   * stopping there; throws `StoreLocked` (with the running server's URL and pid) when one
   * serves the store.
   */
  static async acquire(storeDir: string, timeoutMs = 15_000): Promise<StoreLock> {
    const path = join(storeDir, LOCK_FILE);
    const deadline = Date.now() + timeoutMs;
    let unreadable = 0;
    for (;;) {
      const info: StoreLockInfo = { token: randomUUID(), owner: process.pid, startedAt: new Date().toISOString() };
      try {
        await writeFile(path, JSON.stringify(info), { flag: "wx" });
        return new StoreLock(path, info);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      const held = await readLock(path);
      const ownerAlive = held !== undefined && processAlive(held.owner);
      const running = held !== undefined && serverAlive(held);
      if (held !== undefined && ownerAlive && running) {
        throw new StoreLocked({
          message: `the store ${storeDir} is in use by the nats-server (pid ${held.pid}) at ${held.url} that process ${held.owner} started`,
          storeDir,
          url: held.url ?? "",
          pid: held.pid ?? 0,
        });
      }
      // Being written (unreadable for a moment), starting (owner alive, no server yet) or stopping
      // (its server still exits, its owner gone): wait for it to settle.
      const settling = held === undefined ? ++unreadable < 50 : (ownerAlive && held.pid === undefined) || running;
      if (settling) {
        if (Date.now() > deadline) {
          throw new StoreLocked({
            message: `the store ${storeDir} is locked by process ${held?.owner ?? "?"}${running ? ` (its nats-server, pid ${held?.pid}, does not stop)` : " (its server does not come up)"}; stop it, or remove ${path} if no server runs there`,
            storeDir,
            url: held?.url ?? "",
            pid: held?.pid ?? 0,
          });
        }
        await sleep(50);
        continue;
      }
      // Stale: move it aside, and put it back if what moved is a fresh lock another start just took.
      const aside = `${path}.${info.token}`;
      try {
        await rename(path, aside);
      } catch {
        continue;
      }
      const moved = await readLock(aside);
      if (moved !== undefined && held !== undefined && moved.token !== held.token) await link(aside, path).catch(() => undefined);
      await rm(aside, { force: true });
      unreadable = 0;
    }
  }

  /** Record the running server (its pid, URL and config file). */
  async update(server: { readonly pid: number; readonly url: string; readonly conf: string }): Promise<void> {
    this.info = { ...this.info, ...server };
    const next = `${this.path}.${this.info.token}.next`;
    await writeFile(next, JSON.stringify(this.info));
    await rename(next, this.path);
  }

  /** Give the lock up (when it is still this one). */
  async release(): Promise<void> {
    const held = await readLock(this.path);
    if (held?.token === this.info.token) await rm(this.path, { force: true });
  }
}
