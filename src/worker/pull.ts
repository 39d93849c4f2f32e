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
import { createInbox, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { TASKS_STREAM } from "../nats/topology.js";
import { Lease, parseAckSubject } from "../nats/lease.js";

interface PullRequest {
  readonly consumer: Source;
  remaining: number;
  readonly timer: NodeJS.Timeout;
  readonly sub: Subscription;
}

/** A consumer this worker reads, and the subject its work is published on. */
export interface PullSource {
  readonly consumer: string;
  readonly subject: string;
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
  readonly onLease: (lease: Lease) => void;
  readonly log: Logger;
}

export class PullLoop {
  private readonly inbox = createInbox();
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
    // Active consumers first; batch up while a request is open.
    const active = this.sources.filter((s) => s.active);
    if (active.length > 0 && !(this.reserved > 0 && free < Math.max(1, Math.floor(limit / 4)))) {
      const shares = new Array<number>(active.length).fill(0);
      for (let i = 0; free > 0; i++, free--) shares[(this.next + i) % active.length]!++;
      this.next = (this.next + 1) % active.length;
      shares.forEach((batch, i) => batch > 0 && this.request(active[i]!, batch, true));
    }
    // A worker with nothing active rings a doorbell: with one consumer, a waiting request
    // for all free slots; with several, one slot on one idle consumer at a time, rotating,
    // so the rest of the capacity stays free for the bells.
    if (free <= 0 || active.length > 0) return;
    const idle = this.sources.filter((s) => !s.active);
    if (this.sources.length === 1) {
      if (idle[0] !== undefined && idle[0].open === 0) this.request(idle[0], free, false);
      return;
    }
    if (idle.length === 0 || idle.some((s) => s.open > 0)) return;
    const source = idle[this.next++ % idle.length]!;
    this.request(source, 1, false, idle.length > 1 ? Math.min(1_000, this.options.expires) : this.options.expires);
  }

  private goIdle(source: Source): void {
    if (!source.active) return;
    source.active = false;
    source.bell ??= this.nc.subscribe(source.subject, {
      callback: () => {
        this.goActive(source);
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
    this.pulls.set(seq, { consumer: source, remaining: batch, timer, sub });
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
      // 404: nothing there at all; the consumer goes idle and gets a doorbell.
      if (code === 404 && pull !== undefined) this.goIdle(pull.consumer);
      if (code !== 408 && code !== 404) {
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
    if (this.stopping) {
      // Arrived after stop(): hand it straight back to another worker.
      lease.nak();
      return;
    }
    this.options.onLease(lease);
  }
}
