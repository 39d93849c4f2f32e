/**
 * Schedules: tasks created on a cron expression or every interval, stored in KV
 * `troupe-schedules`, fired by schedulers. Any number of schedulers run (`troupe
 * scheduler`, each coordinator, `troupe dev`); one leads at a time: the holder of the
 * `scheduler` lease in KV `troupe-leases` (`LeaderLease`).
 *
 * A tick creates one task with the id `<schedule>-<tick time in ms>`, through the task
 * store's unique enqueue: a tick fired twice (two leaders for a moment, a leader that died
 * between firing and recording the tick) is still one task. After firing, the leader
 * records the schedule's `lastTick` (compare-and-set on the schedule's entry).
 *
 * The leader looks four times a second, so it never lists the bucket (a listing is a consumer
 * the server keeps for minutes): from its first lead on it follows `troupe-schedules` with one
 * watch (`BucketWatch`, one consumer), and reads the schedules from memory.
 */
import { Cron } from "croner";
import type { Logger } from "pino";
import { nuid } from "@nats-io/transport-node";
import { ScheduleEntry } from "../../machines/records.js";
import { decodeWith, encodeJson } from "../nats/codec.js";
import { BucketWatch, type BucketEntry } from "../nats/bucket.js";
import type { NatsHandle } from "../nats/connection.js";
import { LeaderLease } from "../nats/leader.js";
import { SCHEDULES_BUCKET } from "../nats/topology.js";
import type { TaskStore } from "../store/task-store.js";

/** How often a scheduler looks: the leader for due ticks, the others for a free lease. */
const TICK_MS = 250;
export const LEASE_KEY = "scheduler";
/** Ticks fired at most per schedule per pass (a long outage with `catchUp: "all"`). */
const MAX_CATCH_UP = 1_000;
/** A tick later than this is missed: `catchUp` decides whether it still runs. */
export const MISSED_AFTER_MS = 5_000;
/** How long a leader waits for the schedules when it opens its watch: the pass fails after it (tried again next pass). */
const SCHEDULES_READ_MS = 10_000;

/** The ticks of `entry` in (`after`, `now`], oldest first, at most `max`. */
export const dueTicks = (entry: ScheduleEntry, after: number, now: number, max = MAX_CATCH_UP): number[] => {
  const ticks: number[] = [];
  if (entry.everyMs !== undefined) {
    const every = entry.everyMs;
    let tick = Math.floor(after / every) * every + every;
    // Only the last `max` of a long gap.
    const last = Math.floor(now / every) * every;
    if ((last - tick) / every >= max) tick = last - (max - 1) * every;
    for (; tick <= now; tick += every) ticks.push(tick);
    return ticks;
  }
  if (entry.cron === undefined) return ticks;
  const cron = new Cron(entry.cron, { paused: true, ...(entry.timezone === undefined ? {} : { timezone: entry.timezone }) });
  let next = cron.nextRun(new Date(after));
  while (next !== null && next.getTime() <= now) {
    ticks.push(next.getTime());
    if (ticks.length > max) ticks.shift();
    next = cron.nextRun(next);
  }
  return ticks;
};

/** The ticks to fire now, after `catchUp`: all of them, the latest, or only those on time. */
export const ticksToFire = (entry: ScheduleEntry, now: number): number[] => {
  const after = entry.lastTick ?? Date.parse(entry.createdAt);
  const due = dueTicks(entry, after, now);
  if (entry.catchUp === "all") return due;
  const onTime = due.filter((t) => now - t <= MISSED_AFTER_MS);
  if (entry.catchUp === "none") return onTime;
  // "one": the missed ticks collapse into their latest, which runs once.
  const missed = due.length - onTime.length;
  return missed > 0 ? [due[missed - 1]!, ...onTime] : onTime;
};

/** The next tick after `from`, for listings. */
export const nextTick = (entry: ScheduleEntry, from: number): number | undefined => {
  if (entry.everyMs !== undefined) return Math.floor(from / entry.everyMs) * entry.everyMs + entry.everyMs;
  if (entry.cron === undefined) return undefined;
  const cron = new Cron(entry.cron, { paused: true, ...(entry.timezone === undefined ? {} : { timezone: entry.timezone }) });
  return cron.nextRun(new Date(from))?.getTime();
};

/** The task id a tick creates. */
export const tickTaskId = (schedule: string, tick: number) => `${schedule}-${tick}`;

export class Scheduler {
  readonly id = `s-${nuid.next()}`;
  private readonly log: Logger;
  private readonly lease: LeaderLease;
  private timer: NodeJS.Timeout | undefined;
  /** The pass running now, if any: passes never overlap. */
  private running: Promise<void> | undefined;
  private stopped = false;
  /** The schedules, followed from the first pass that leads until `stop()`. */
  private watch: BucketWatch | undefined;

  private constructor(
    private readonly nats: NatsHandle,
    private readonly store: TaskStore,
    log: Logger,
  ) {
    this.log = log.child({ scheduler: this.id });
    this.lease = new LeaderLease(nats.leases, LEASE_KEY, this.id, this.log);
  }

  static start(nats: NatsHandle, store: TaskStore, log: Logger): Scheduler {
    const scheduler = new Scheduler(nats, store, log);
    scheduler.timer = setInterval(() => scheduler.pass(), TICK_MS);
    scheduler.timer.unref();
    scheduler.pass();
    return scheduler;
  }

  /** Whether this scheduler leads now. */
  get leading(): boolean {
    return this.lease.leading;
  }

  private pass(): void {
    if (this.running !== undefined || this.stopped || this.nats.nc.isClosed()) return;
    this.running = (async () => {
      if (await this.lease.hold()) await this.fireDue();
    })()
      .catch((err: unknown) => this.log.warn({ err }, "scheduler pass failed; trying again"))
      .finally(() => (this.running = undefined));
  }

  /** The watch on the schedules, opened (or opened again, once its consumer gave up) and read in full. */
  private async schedules(): Promise<BucketWatch | undefined> {
    if (this.watch?.following !== true) {
      await this.watch?.stop();
      this.watch = await BucketWatch.open(this.nats.js, SCHEDULES_BUCKET);
      // Stopped meanwhile: `stop()` did not see this watch.
      if (this.stopped) {
        await this.watch.stop();
        return undefined;
      }
    }
    await this.watch.loaded(SCHEDULES_READ_MS);
    return this.watch;
  }

  private async fireDue(): Promise<void> {
    const watch = await this.schedules();
    if (watch === undefined) return;
    const now = Date.now();
    for (const entry of [...watch.entries.values()]) {
      // A long pass keeps its lease (renewed at most once a second) and stops once it is lost.
      if (!(await this.lease.hold()) || this.stopped) return;
      try {
        await this.fire(watch, entry, now);
      } catch (err) {
        this.log.warn({ err, schedule: entry.key }, "schedule not fired this pass; tried again on the next");
      }
    }
  }

  /** Fire the due ticks of one schedule and record its last tick. */
  private async fire(watch: BucketWatch, stored: BucketEntry, now: number): Promise<void> {
    const key = stored.key;
    const decoded = decodeWith(ScheduleEntry, stored.value, "schedule");
    if (!decoded.ok) {
      this.log.warn({ schedule: key, reason: decoded.error.message }, "unreadable schedule skipped");
      return;
    }
    const entry = decoded.value;
    const ticks = ticksToFire(entry, now);
    const due = dueTicks(entry, entry.lastTick ?? Date.parse(entry.createdAt), now);
    if (due.length === 0) return;
    for (const tick of ticks) {
      const { created } = await this.store.enqueue({ id: tickTaskId(entry.id, tick), task: entry.task, queue: entry.queue, input: entry.input, unique: true });
      this.log.debug({ schedule: entry.id, tick: new Date(tick).toISOString(), created }, "schedule tick");
    }
    const skipped = due.length - ticks.length;
    if (skipped > 0) this.log.info({ schedule: entry.id, skipped, catchUp: entry.catchUp }, "missed ticks not run");
    // The last tick considered, fired or skipped; a schedule changed meanwhile is read again next pass.
    const next = encodeJson({ ...entry, lastTick: due[due.length - 1] });
    const revision = await this.nats.schedules.update(key, next, stored.revision).catch(() => undefined);
    // Known at once: the next pass (before the watch brings the write back) does not fire these ticks again.
    if (revision !== undefined) watch.noted(key, next, revision);
  }

  /** Stop; a leader gives its lease up, so another takes over at once rather than after its age limit. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.running;
    await this.watch?.stop();
    if (!this.nats.nc.isClosed()) await this.lease.release();
  }
}
