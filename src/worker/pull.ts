/**
 * The pull loop. A worker asks JetStream only for what it can start now: the messages
 * its outstanding pull requests may still bring, plus the tasks it runs, never exceed its
 * concurrency, across every consumer it reads. A message waiting in a client buffer would
 * already be spending its lease (AckWait), so there is no buffer.
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
  readonly consumer: string;
  remaining: number;
  readonly timer: NodeJS.Timeout;
  readonly sub: Subscription;
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
  private scheduled = false;
  private stopping = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly consumers: ReadonlyArray<string>,
    private readonly options: PullOptions,
  ) {}

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
    // Pull in batches: wait for a quarter of the capacity to free up while a request is open.
    if (free <= 0 || (this.reserved > 0 && free < Math.max(1, Math.floor(limit / 4)))) return;
    const n = this.consumers.length;
    const shares = new Array<number>(n).fill(0);
    for (let i = 0; free > 0; i++, free--) shares[(this.next + i) % n]!++;
    this.next = (this.next + 1) % n;
    shares.forEach((batch, i) => batch > 0 && this.request(this.consumers[i]!, batch));
  }

  private request(consumer: string, batch: number): void {
    const seq = ++this.seq;
    const expires = this.options.expires;
    // The server answers 408 at `expires`; the local timer covers a request lost with a server.
    const timer = setTimeout(() => this.finish(seq), expires + 2_000);
    timer.unref();
    const reply = `${this.inbox}.${seq}`;
    const sub = this.nc.subscribe(reply, { callback: (_err, msg) => this.receive(seq, msg) });
    this.pulls.set(seq, { consumer, remaining: batch, timer, sub });
    this.reserved += batch;
    this.nc.publish(
      `$JS.API.CONSUMER.MSG.NEXT.${TASKS_STREAM}.${consumer}`,
      JSON.stringify({ batch, expires: expires * 1_000_000 }),
      { reply },
    );
  }

  private finish(seq: number): void {
    const pull = this.pulls.get(seq);
    if (pull === undefined) return;
    clearTimeout(pull.timer);
    pull.sub.unsubscribe();
    this.pulls.delete(seq);
    this.reserved -= pull.remaining;
    this.schedule();
  }

  private receive(seq: number, msg: Msg): void {
    const code = msg.headers?.code ?? 0;
    if (code !== 0 && msg.data.length === 0) {
      if (code === 100) return; // idle heartbeat
      if (code !== 408 && code !== 404) {
        this.options.log.warn({ code, status: msg.headers?.description }, "pull request ended by the server");
      }
      this.finish(seq);
      return;
    }
    const pull = this.pulls.get(seq);
    if (pull !== undefined) {
      pull.remaining--;
      this.reserved--;
      if (pull.remaining === 0) {
        clearTimeout(pull.timer);
        pull.sub.unsubscribe();
        this.pulls.delete(seq);
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
