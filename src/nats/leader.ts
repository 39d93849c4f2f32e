/**
 * A single leader among any number of processes, through KV `troupe-leases`: the leader
 * holds a key, created when free and renewed at most once a second by compare-and-set on
 * its revision; the bucket's 5 s age limit removes the key of a leader that died, and
 * another process creates it within a second of that. Schedulers lead on `scheduler`,
 * retention sweepers on `retention`.
 */
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";
import { encodeJson } from "./codec.js";

const RENEW_MS = 1_000;

export class LeaderLease {
  private revision: number | undefined;
  private lastTry = 0;

  constructor(
    private readonly leases: KV,
    readonly key: string,
    /** Who holds it, as the key's value says (`{ holder }`). */
    readonly holder: string,
    private readonly log: Logger,
    /** Log taking the lease at info (a leader that holds on); at debug for one taken afresh each pass. */
    private readonly announce = true,
  ) {}

  /** Whether this process leads now. */
  get leading(): boolean {
    return this.revision !== undefined;
  }

  /** Take the lease when it is free, renew it while held (at most once a second), notice when it was lost. */
  async hold(): Promise<boolean> {
    const now = Date.now();
    if (now - this.lastTry < RENEW_MS) return this.leading;
    this.lastTry = now;
    const body = encodeJson({ holder: this.holder, at: new Date(now).toISOString() });
    if (this.revision === undefined) {
      this.revision = await this.leases.create(this.key, body).catch(() => undefined);
      if (this.leading) this.log[this.announce ? "info" : "debug"]({ lease: this.key }, `${this.key} leading`);
      return this.leading;
    }
    this.revision = await this.leases.update(this.key, body, this.revision).catch(() => undefined);
    if (!this.leading) this.log.warn({ lease: this.key }, `${this.key} lost the lease; another leads`);
    return this.leading;
  }

  /** Give the lease up (only the one held: a compare-and-set on its revision), so that another takes over at once. */
  async release(): Promise<void> {
    const revision = this.revision;
    this.revision = undefined;
    this.lastTry = 0; // free to be taken again at once, by this process too
    if (revision !== undefined) await this.leases.delete(this.key, { previousSeq: revision }).catch(() => undefined);
  }
}
