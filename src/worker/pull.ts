/**
 * The pull loop. A worker asks JetStream only for what it can start now: the messages
 * its outstanding pull requests may still bring, plus the tasks it runs, never exceed its
 * concurrency, across every consumer it reads. A message waiting in a client buffer would
 * already be spending its lease (AckWait), so there is no buffer.
 *
 * A consumer that just delivered is "active" and is asked with `no_wait` requests, which
 * end as soon as its backlog does, so no capacity sits reserved on an empty consumer.
 * One that came back empty is "idle" and gets a single waiting request (a doorbell: one
 * slot when the worker reads several consumers, all free slots when it reads one); its
 * first delivery makes it active again.
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

interface Source {
  readonly name: string;
  active: boolean;
  /** Open requests on this consumer. */
  open: number;
}

export interface PullOptions {
  readonly concurrency: number;
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
  private running = 0;
  private next = 0;
  private readonly sources: Source[];
  private scheduled = false;
  private stopping = false;

  constructor(
    private readonly nc: NatsConnection,
    consumers: ReadonlyArray<string>,
    private readonly options: PullOptions,
  ) {
    this.sources = consumers.map((name) => ({ name, active: true, open: 0 }));
  }

  /** Tasks running now. */
  get active(): number {
    return this.running;
  }

  start(): void {
    this.schedule();
  }

  /** Call when a task started through `onLease` has settled its lease. */
  release(): void {
    this.running--;
    this.schedule();
  }

  /**
   * Stop asking for work and withdraw the open pull requests (the server drops a request
   * whose reply subject lost interest). A message already on its way is handed back (NAK).
   */
  async stop(): Promise<void> {
    this.stopping = true;
    const open = [...this.pulls.values()];
    this.pulls.clear();
    this.reserved = 0;
    for (const source of this.sources) source.open = 0;
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
    let free = limit - this.running - this.reserved;
    if (free <= 0) return;
    const n = this.sources.length;
    // Idle consumers first: each keeps one doorbell open.
    for (const source of this.sources) {
      if (source.active || source.open > 0 || free <= 0) continue;
      const batch = n === 1 ? free : 1;
      this.request(source, batch, true);
      free -= batch;
    }
    // Then share what is left among the active ones; batch up while a request is open.
    const active = this.sources.filter((s) => s.active);
    if (free <= 0 || active.length === 0) return;
    if (this.reserved > 0 && free < Math.max(1, Math.floor(limit / 4))) return;
    const shares = new Array<number>(active.length).fill(0);
    for (let i = 0; free > 0; i++, free--) shares[(this.next + i) % active.length]!++;
    this.next = (this.next + 1) % active.length;
    shares.forEach((batch, i) => batch > 0 && this.request(active[i]!, batch, false));
  }

  private request(source: Source, batch: number, waiting: boolean): void {
    const seq = ++this.seq;
    const expires = this.options.expires;
    // The server answers 408 at `expires`; the local timer covers a request lost with a server.
    const timer = setTimeout(() => this.finish(seq), expires + 2_000);
    timer.unref();
    const reply = `${this.inbox}.${seq}`;
    const sub = this.nc.subscribe(reply, { callback: (_err, msg) => this.receive(seq, msg) });
    this.pulls.set(seq, { consumer: source, remaining: batch, timer, sub });
    source.open++;
    this.reserved += batch;
    const body = waiting ? { batch, expires: expires * 1_000_000 } : { batch, no_wait: true };
    this.nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${TASKS_STREAM}.${source.name}`, JSON.stringify(body), { reply });
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
      if (code === 404 && pull !== undefined) pull.consumer.active = false;
      if (code !== 408 && code !== 404) {
        this.options.log.warn({ code, status: msg.headers?.description }, "pull request ended by the server");
      }
      this.finish(seq);
      return;
    }
    const pull = this.pulls.get(seq);
    if (pull !== undefined) {
      pull.consumer.active = true;
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
    this.running++;
    this.options.onLease(lease);
  }
}
