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
  constructor(
    private readonly kv: KV,
    readonly key: string,
    private readonly limits: TaskLimits,
    /** How long a slot is held without a renewal (the type's lease). */
    private readonly leaseMs: number,
  ) {}

  /** Take a slot and a start for `taskId`, or say when to ask again. */
  async acquire(taskId: string, now = Date.now): Promise<Admission> {
    return this.change((state) => {
      const t = now();
      const holders = live(state.holders, t);
      const { concurrency, rate } = this.limits;
      if (concurrency !== undefined && Object.keys(holders).length >= concurrency && holders[taskId] === undefined) {
        // The earliest a slot can come back unasked is a lease's end; releases come sooner.
        return { result: { ok: false, retryInMs: 250 } as Admission };
      }
      let starts = state.starts.filter((s) => rate === undefined || s > t - rate.perMs);
      if (rate !== undefined && starts.length >= rate.limit) {
        return { result: { ok: false, retryInMs: Math.max(1, starts[starts.length - rate.limit]! + rate.perMs - t) } as Admission };
      }
      if (rate !== undefined) starts = [...starts, t].slice(-rate.limit);
      const next = { holders: concurrency === undefined ? holders : { ...holders, [taskId]: t + this.leaseMs }, starts };
      return { next, result: { ok: true } as Admission };
    });
  }

  /** Give the slot of `taskId` back. */
  async release(taskId: string): Promise<void> {
    if (this.limits.concurrency === undefined) return;
    await this.change((state) => {
      if (state.holders[taskId] === undefined) return { result: undefined };
      const { [taskId]: _, ...holders } = state.holders;
      return { next: { ...state, holders }, result: undefined };
    });
  }

  /** Extend the leases of the slots these attempts hold (their worker is alive). */
  async renew(taskIds: ReadonlyArray<string>, now = Date.now): Promise<void> {
    if (this.limits.concurrency === undefined || taskIds.length === 0) return;
    await this.change((state) => {
      const holders = { ...state.holders };
      let changed = false;
      for (const id of taskIds) {
        if (holders[id] === undefined) continue;
        holders[id] = now() + this.leaseMs;
        changed = true;
      }
      return changed ? { next: { ...state, holders }, result: undefined } : { result: undefined };
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
        // Another attempt changed it first: read it again, after a short random pause so
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
