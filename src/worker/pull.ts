/**
 * The pull loop. A worker asks JetStream only for what it can start now: the messages
 * its outstanding pull requests may still bring, plus the tasks it runs, never exceed its
 * concurrency, across every consumer it reads. A message waiting in a client buffer would
 * already be spending its lease (AckWait), so there is no buffer.
 *
 * A consumer that just delivered is "active" and is asked with `no_wait` requests, which
 * end as soon as its backlog does, so no capacity sits reserved on an empty consumer.
 * One that came back empty is "idle": it listens on its work subject for new work (a
 * bell, no capacity held). When nothing is active, a waiting request (a doorbell, which
 * catches redeliveries too) is open: for all free slots when the worker reads one
 * consumer; for one slot, rotating over the idle consumers, when it reads several. While
 * others keep the worker busy, idle consumers are probed every `expires` ms for
 * redeliveries (retries, lapsed leases), which publish nothing.
 *
 * Each pull request has its own reply subscription (JetStream delivers a message under its
 * original subject, so only the subscription tells which request it answers): the worker
 * knows exactly how many messages each request may still deliver.
 */
import { type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { bellSubject, TASKS_STREAM } from "../nats/topology.js";
import { inboxOf } from "../nats/publisher.js";
import { Lease, parseAckSubject } from "../nats/lease.js";

interface PullRequest {
  readonly consumer: Source;
  remaining: number;
  readonly timer: NodeJS.Timeout;
  readonly sub: Subscription;
  /** A waiting request (a doorbell), not a `no_wait` one. */
  readonly waiting: boolean;
  /** Being withdrawn: its slots come free once the server has dropped it. */
  withdrawing: boolean;
}

/** A consumer this worker reads, and the subject its work is published on. */
export interface PullSource {
  readonly consumer: string;
  readonly subject: string;
  /** The task type it serves (`<queue>.<type>`): of a type's consumers, the first priority that has work is asked first. */
  readonly group?: string;
  /** 1 (first) to 5 (last); 3 when absent. */
  readonly priority?: number;
  /** The most one request asks for (a limited type's: its limiter may refuse the rest). */
  readonly maxBatch?: number;
  /** The consumer's `max_deliver`: a paused type's message on its last delivery is started, not handed back. */
  readonly maxDeliver?: number;
}

interface Source extends PullSource {
  active: boolean;
  /** Open requests on this consumer. */
  open: number;
  /** While idle: a plain subscription on the work subject that rings when new work is published. */
  bell: Subscription | undefined;
}

export interface PullOptions {
  /** Tasks the worker runs at once. */
  readonly concurrency: number;
  /** Slots free now, as the worker actor counts them (none while it is not ready). */
  readonly capacity: () => number;
  /** How long one pull request waits on the server for messages (ms). */
  readonly expires: number;
  /** A delivery, and the consumer it came from. */
  readonly onLease: (lease: Lease, consumer: string) => void;
  readonly log: Logger;
}

export class PullLoop {
  private readonly inbox: string;
  private readonly pulls = new Map<number, PullRequest>();
  private seq = 0;
  private reserved = 0;
  private next = 0;
  private readonly sources: Source[];
  private probe: NodeJS.Timeout | undefined;
  private scheduled = false;
  private stopping = false;

  constructor(
    private readonly nc: NatsConnection,
    sources: ReadonlyArray<PullSource>,
    private readonly options: PullOptions,
  ) {
    this.sources = sources.map((s) => ({ ...s, active: true, open: 0, bell: undefined }));
    this.inbox = inboxOf(nc);
  }

  start(): void {
    this.probe = setInterval(() => {
      for (const source of this.sources) if (!source.active && source.open === 0) this.goActive(source);
      this.schedule();
    }, this.options.expires);
    this.probe.unref();
    this.schedule();
  }

  /** Ask again for work: a slot came free. */
  wake(): void {
    this.schedule();
  }

  /** Another consumer to read (a priority of a type seen for the first time); asked at once. */
  addSource(source: PullSource): void {
    if (this.sources.some((s) => s.consumer === source.consumer)) return;
    const added: Source = { ...source, active: true, open: 0, bell: undefined };
    this.sources.push(added);
    this.makeRoom(added);
    this.schedule();
  }

  /**
   * Work rang for `source` while every free slot is held by a waiting request (a doorbell)
   * on another consumer: that request is withdrawn, so the work that rang can be asked for
   * now instead of when the doorbell expires. Its slots come free only once the server has
   * dropped it (the reply subscription drained): a message already on its way still arrives
   * and runs, and no more are asked for than there are slots.
   */
  private makeRoom(source: Source): void {
    if (this.stopping || this.options.capacity() - this.reserved > 0) return;
    for (const [seq, pull] of this.pulls) {
      if (!pull.waiting || pull.withdrawing || pull.consumer === source) continue;
      return this.withdraw(seq, pull);
    }
  }

  /** Task types (`<queue>.<type>`) whose work is not started now; `undefined` while nothing is paused. */
  private paused: ((group: string) => boolean) | undefined;

  /**
   * Which types are paused: their consumers are no longer asked, their waiting requests are
   * withdrawn, and a message of theirs that still arrives is handed back (NAK) unstarted.
   * Called again when pauses change; a type that is no longer paused is asked at once.
   */
  setPaused(paused: ((group: string) => boolean) | undefined): void {
    this.paused = paused;
    for (const [seq, pull] of this.pulls) {
      if (pull.waiting && !pull.withdrawing && this.isPaused(pull.consumer)) this.withdraw(seq, pull);
    }
    for (const source of this.sources) if (!this.isPaused(source)) this.goActive(source);
    this.schedule();
  }

  /** Withdraw a waiting request: its slots come free once the server has dropped it (its reply subscription drained). */
  private withdraw(seq: number, pull: PullRequest): void {
    pull.withdrawing = true;
    void pull.sub.drain().catch(() => undefined).then(() => this.finish(seq));
  }

  private isPaused(source: Source): boolean {
    // The common case, asked per message: nothing paused, nothing held off.
    if (this.paused === undefined && this.heldOff.size === 0) return false;
    const type = typeOf(source.group ?? source.consumer);
    if (this.paused?.(type)) return true;
    const until = this.heldOff.get(type);
    return until !== undefined && until > Date.now();
  }

  /** Types whose limiter said to wait, until when. */
  private readonly heldOff = new Map<string, number>();

  /** Ask for none of a type's work for `ms` (its limiter said to wait): fewer deliveries handed straight back. */
  holdOff(type: string, ms: number): void {
    const until = Date.now() + ms;
    if ((this.heldOff.get(type) ?? 0) >= until) return;
    this.heldOff.set(type, until);
    setTimeout(() => {
      if ((this.heldOff.get(type) ?? 0) <= Date.now()) this.heldOff.delete(type);
      this.schedule();
    }, ms).unref();
  }

  /** A limited type's slot came back: ask for it again now. */
  release(type: string): void {
    if (this.heldOff.delete(type)) this.schedule();
  }

  /** Whether this consumer is read. */
  has(consumer: string): boolean {
    return this.sources.some((s) => s.consumer === consumer);
  }

  /** Work was published for this consumer: ask it at once (a bell rung from outside). */
  ring(consumer: string): void {
    const source = this.sources.find((s) => s.consumer === consumer);
    if (source === undefined) return;
    this.goActive(source);
    this.makeRoom(source);
    this.schedule();
  }

  /**
   * Back from a disconnection: the pull requests open before it are gone with the old
   * connection (the server drops a request whose client left), so they are forgotten and
   * work is asked for at once, from every consumer, rather than after their expiry.
   */
  resume(): void {
    for (const pull of this.pulls.values()) {
      clearTimeout(pull.timer);
      pull.sub.unsubscribe();
    }
    this.pulls.clear();
    this.reserved = 0;
    for (const source of this.sources) {
      source.open = 0;
      this.goActive(source);
    }
    this.schedule();
  }

  /**
   * Stop asking for work and withdraw the open pull requests (the server drops a request
   * whose reply subject lost interest). A message already on its way is handed back (NAK).
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.probe);
    const open = [...this.pulls.values()];
    this.pulls.clear();
    this.reserved = 0;
    for (const source of this.sources) {
      source.open = 0;
      source.bell?.unsubscribe();
      source.bell = undefined;
    }
    await Promise.all(
      open.map((pull) => {
        clearTimeout(pull.timer);
        return pull.sub.drain().catch(() => undefined);
      }),
    );
  }

  private schedule(): void {
    if (this.scheduled || this.stopping) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.stopping || this.nc.isClosed()) return;
    const limit = this.options.concurrency;
    let free = this.options.capacity() - this.reserved;
    if (free <= 0) return;
    // Active consumers first, of each type only its first priority that has work; batch up
    // while a request is open.
    const active = this.heads();
    if (active.length > 0 && !(this.reserved > 0 && free < Math.max(1, Math.floor(limit / 4)))) {
      const shares = new Array<number>(active.length).fill(0);
      for (let i = 0; free > 0; i++, free--) shares[(this.next + i) % active.length]!++;
      this.next = (this.next + 1) % active.length;
      shares.forEach((batch, i) => batch > 0 && this.request(active[i]!, Math.min(batch, active[i]!.maxBatch ?? batch), true));
    }
    // A worker with nothing active rings a doorbell: with one consumer, a waiting request
    // for all free slots; with several, one slot on one idle consumer at a time, rotating,
    // so the rest of the capacity stays free for the bells.
    if (free <= 0 || active.length > 0) return;
    const idle = this.sources.filter((s) => !s.active && !this.isPaused(s));
    if (this.sources.length === 1) {
      if (idle[0] !== undefined && idle[0].open === 0) this.request(idle[0], free, false);
      return;
    }
    if (idle.length === 0 || idle.some((s) => s.open > 0)) return;
    const source = idle[this.next++ % idle.length]!;
    this.request(source, 1, false, idle.length > 1 ? Math.min(1_000, this.options.expires) : this.options.expires);
  }

  /** The active consumers to ask: per type, the one of the first priority (lowest number) among its active ones. */
  private heads(): Source[] {
    // One consumer per type (no priority seen): every active one.
    if (!this.sources.some((s) => s.priority !== undefined && s.priority !== 3)) return this.sources.filter((s) => s.active && !this.isPaused(s));
    const heads: Source[] = [];
    const byGroup = new Map<string, number>();
    for (const source of this.sources) {
      if (!source.active || this.isPaused(source)) continue;
      const group = source.group ?? source.consumer;
      const at = byGroup.get(group);
      if (at === undefined) {
        byGroup.set(group, heads.length);
        heads.push(source);
      } else if ((source.priority ?? 3) < (heads[at]!.priority ?? 3)) heads[at] = source;
    }
    return heads;
  }

  private goIdle(source: Source): void {
    if (!source.active) return;
    source.active = false;
    // Its bells: the subjects of the work stored for it, without the work (TROUPE_TASKS republishes them).
    source.bell ??= this.nc.subscribe(bellSubject(source.subject), {
      callback: () => {
        this.goActive(source);
        this.makeRoom(source);
        this.schedule();
      },
    });
  }

  private goActive(source: Source): void {
    source.active = true;
    source.bell?.unsubscribe();
    source.bell = undefined;
  }

  private request(source: Source, batch: number, noWait: boolean, expires = this.options.expires): void {
    const seq = ++this.seq;
    // The server answers 408 at `expires`; the local timer covers a request lost with a server.
    const timer = setTimeout(() => this.finish(seq), expires + 2_000);
    timer.unref();
    const reply = `${this.inbox}.${seq}`;
    const sub = this.nc.subscribe(reply, { callback: (_err, msg) => this.receive(seq, msg) });
    this.pulls.set(seq, { consumer: source, remaining: batch, timer, sub, waiting: !noWait, withdrawing: false });
    source.open++;
    this.reserved += batch;
    const body = noWait ? { batch, no_wait: true } : { batch, expires: expires * 1_000_000 };
    this.nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${TASKS_STREAM}.${source.consumer}`, JSON.stringify(body), { reply });
  }

  private finish(seq: number): void {
    const pull = this.pulls.get(seq);
    if (pull === undefined) return;
    clearTimeout(pull.timer);
    pull.sub.unsubscribe();
    this.pulls.delete(seq);
    pull.consumer.open--;
    this.reserved -= pull.remaining;
    this.schedule();
  }

  private receive(seq: number, msg: Msg): void {
    const code = msg.headers?.code ?? 0;
    if (code !== 0 && msg.data.length === 0) {
      if (code === 100) return; // idle heartbeat
      const pull = this.pulls.get(seq);
      // 404: nothing there at all; 409 with MaxAckPending: a key at its `perKey` limit. Either
      // way the consumer goes idle and gets a doorbell (and a key is rung when a slot of it comes back).
      const full = code === 409 && /MaxAckPending/i.test(msg.headers?.description ?? "");
      if ((code === 404 || full) && pull !== undefined) this.goIdle(pull.consumer);
      if (code !== 408 && code !== 404 && !full) {
        this.options.log.warn({ code, status: msg.headers?.description }, "pull request ended by the server");
      }
      this.finish(seq);
      return;
    }
    const pull = this.pulls.get(seq);
    if (pull !== undefined) {
      this.goActive(pull.consumer);
      pull.remaining--;
      this.reserved--;
      if (pull.remaining === 0) {
        clearTimeout(pull.timer);
        pull.sub.unsubscribe();
        this.pulls.delete(seq);
        pull.consumer.open--;
      }
    }
    const info = msg.reply ? parseAckSubject(msg.reply) : undefined;
    if (info === undefined) {
      this.options.log.warn({ subject: msg.subject }, "message without a JetStream reply subject ignored");
      return;
    }
    const lease = new Lease(this.nc, msg, info);
    // Arrived for work paused meanwhile: handed back unstarted, unless handing it back would
    // spend its last delivery (a NAK counts as one), so that a pause never fails a task.
    const max = pull?.consumer.maxDeliver ?? -1;
    const paused = pull !== undefined && this.isPaused(pull.consumer) && (max < 0 || info.deliveryCount < max - 1);
    if (this.stopping || paused) {
      // Arrived after stop(), or paused: handed straight back, unstarted.
      lease.nak();
      return;
    }
    this.options.onLease(lease, pull?.consumer.consumer ?? "");
  }
}

/** A source's type: its group without a key (`<queue>.<type>=<key>` → `<queue>.<type>`). */
const typeOf = (group: string): string => {
  const at = group.indexOf("=");
  return at < 0 ? group : group.slice(0, at);
};
