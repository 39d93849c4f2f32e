/**
 * A task type's `concurrency` and `rate` limits, across all workers: one record per type in
 * KV `troupe-limits` (key `<queue>.<type>`), changed only by compare-and-set. It holds the
 * attempts that hold a slot, each with a lease (its expiry: a worker that dies stops
 * renewing, and its slots come back once their leases pass), and the start times of the
 * last `rate.limit` starts (a start is allowed when fewer than `limit` fall in the window
 * `per` before it: at most `limit` in any window of `per`).
 *
 * A worker asks before an attempt starts; a refusal says when to ask again, and the worker
 * hands the delivery back (a delayed NAK) rather than hold a slot while it waits.
 */
import type { KV } from "@nats-io/kv";
import { Schema } from "effect";
import type { TaskLimits } from "../task.js";
import { decodeWith, encodeJson } from "../nats/codec.js";

const LimiterState = Schema.Struct({
  /** Task id → lease expiry (epoch ms). */
  holders: Schema.Record(Schema.String, Schema.Number),
  /** Epoch ms of the latest starts, oldest first, at most `rate.limit` of them. */
  starts: Schema.Array(Schema.Number),
});
type LimiterState = typeof LimiterState.Type;

const EMPTY: LimiterState = { holders: {}, starts: [] };
/** Compare-and-set tries before an ask gives up (and is asked again later). */
const TRIES = 30;

export type Admission = { readonly ok: true } | { readonly ok: false; readonly retryInMs: number };

export class Limiter {
  /** Asks and releases waiting for the next write: one compare-and-set carries all of them. */
  private asks: Array<{ readonly taskId: string; readonly resolve: (a: Admission) => void; readonly reject: (e: unknown) => void }> = [];
  private releases: Array<{ readonly taskId: string; readonly resolve: () => void; readonly reject: (e: unknown) => void }> = [];
  private writing = false;

  constructor(
    private readonly kv: KV,
    readonly key: string,
    private readonly limits: TaskLimits,
    /** How long a slot is held without a renewal (the type's lease). */
    private readonly leaseMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Take a slot and a start for `taskId`, or say when to ask again. */
  acquire(taskId: string): Promise<Admission> {
    return new Promise((resolve, reject) => {
      this.asks.push({ taskId, resolve, reject });
      this.flush();
    });
  }

  /** Give the slot of `taskId` back. */
  release(taskId: string): Promise<void> {
    if (this.limits.concurrency === undefined) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.releases.push({ taskId, resolve, reject });
      this.flush();
    });
  }

  /** Extend the leases of the slots these attempts hold (their worker is alive). */
  async renew(taskIds: ReadonlyArray<string>): Promise<void> {
    if (this.limits.concurrency === undefined || taskIds.length === 0) return;
    await this.change((state) => {
      const holders = { ...state.holders };
      let changed = false;
      for (const id of taskIds) {
        if (holders[id] === undefined) continue;
        holders[id] = this.now() + this.leaseMs;
        changed = true;
      }
      return changed ? { next: { ...state, holders }, result: undefined } : { result: undefined };
    });
  }

  /**
   * One write for everything asked since the last: releases first, then the asks in their
   * order, each admitted while there is room. The next batch waits for this one, so a
   * worker's attempts never race each other for the record.
   */
  private flush(): void {
    if (this.writing || (this.asks.length === 0 && this.releases.length === 0)) return;
    this.writing = true;
    const asks = this.asks;
    const releases = this.releases;
    this.asks = [];
    this.releases = [];
    const { concurrency, rate } = this.limits;
    this.change((state) => {
      const t = this.now();
      const holders = live(state.holders, t);
      for (const r of releases) delete holders[r.taskId];
      let starts = rate === undefined ? [] : state.starts.filter((x) => x > t - rate.perMs);
      const answers: Admission[] = [];
      for (const ask of asks) {
        if (concurrency !== undefined && holders[ask.taskId] === undefined && Object.keys(holders).length >= concurrency) {
          // A slot comes back with a release (the worker that holds it asks again then) or a lease's end.
          answers.push({ ok: false, retryInMs: 250 });
          continue;
        }
        if (rate !== undefined && starts.length >= rate.limit) {
          answers.push({ ok: false, retryInMs: Math.max(1, starts[starts.length - rate.limit]! + rate.perMs - t) });
          continue;
        }
        if (rate !== undefined) starts = [...starts, t].slice(-rate.limit);
        if (concurrency !== undefined) holders[ask.taskId] = t + this.leaseMs;
        answers.push({ ok: true });
      }
      const changed = releases.length > 0 || answers.some((a) => a.ok);
      return changed ? { next: { holders, starts }, result: answers } : { result: answers };
    }).then(
      (answers) => {
        asks.forEach((ask, i) => ask.resolve(answers[i]!));
        for (const r of releases) r.resolve();
      },
      (error: unknown) => {
        for (const ask of asks) ask.reject(error);
        for (const r of releases) r.reject(error);
      },
    ).finally(() => {
      this.writing = false;
      this.flush();
    });
  }

  /** Read, change, compare-and-set; again on a conflict. */
  private async change<R>(f: (state: LimiterState) => { next?: LimiterState; result: R }): Promise<R> {
    for (let i = 0; i < TRIES; i++) {
      const entry = await this.kv.get(this.key);
      const decoded = entry === null || entry.operation !== "PUT" ? undefined : decodeWith(LimiterState, entry.value, "limiter state");
      const state = decoded?.ok ? decoded.value : EMPTY;
      const { next, result } = f(state);
      if (next === undefined) return result;
      const revision = entry === null ? 0 : entry.revision;
      try {
        if (revision === 0) await this.kv.create(this.key, encodeJson(next));
        else await this.kv.update(this.key, encodeJson(next), revision);
        return result;
      } catch {
        // Another worker changed it first: read it again, after a short random pause so
        // that those that collided do not collide again.
        await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 ** i)));
      }
    }
    throw new Error(`limiter ${this.key}: ${TRIES} conflicting writes in a row`);
  }
}

/** The holders whose leases have not passed. */
const live = (holders: Readonly<Record<string, number>>, now: number): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const [id, until] of Object.entries(holders)) if (until > now) out[id] = until;
  return out;
};
