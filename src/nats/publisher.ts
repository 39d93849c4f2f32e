/**
 * JetStream publishes that wait for their PubAck, pipelined: one reply subscription for
 * all of them and one timer sweep, instead of a subscription-mux entry, a timer and two
 * Error objects per request (which is what nats-core's request costs). This is the hot
 * path of every task: the KV writes (compare-and-set) and the work message.
 */
import { createInbox, headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { Data } from "effect";
import type { PermissionDenied } from "../errors.js";
import { permissionDenied } from "./permissions.js";
import { withRetryFor } from "./retry.js";

export interface PubAck {
  readonly stream: string;
  readonly seq: number;
  readonly duplicate: boolean;
}

/**
 * The server refused the write: `errCode` is JetStream's (10071: wrong last sequence),
 * `code` the status (503: no stream answers, or JetStream is not ready).
 */
export class PublishRejected extends Data.TaggedError("PublishRejected")<{
  readonly message: string;
  readonly errCode: number;
  readonly code: number;
}> {}

export class PublishTimeout extends Data.TaggedError("PublishTimeout")<{ readonly message: string }> {}

const WRONG_LAST_SEQUENCE = 10071;

/** A lost compare-and-set (or a create that found the key taken). */
export const isWrongLastSequence = (e: unknown): e is PublishRejected => e instanceof PublishRejected && e.errCode === WRONG_LAST_SEQUENCE;

/**
 * What may pass on its own: no answer in time, no stream answering yet, JetStream not
 * ready (a restart, a leader election), the connection between servers. Anything else the
 * server said (a lost compare-and-set, a full stream, a message too large) is final.
 */
export const isTransientPublishError = (e: PublishRejected | PublishTimeout): boolean =>
  e._tag === "PublishTimeout" || e.code === 503 || e.code === 0;

interface Pending {
  readonly resolve: (ack: PubAck) => void;
  readonly reject: (e: PublishRejected | PublishTimeout | PermissionDenied) => void;
  expires: number;
  readonly subject: string;
}

/**
 * After a reconnect the server may still be bringing JetStream up (a restart): a publish
 * then can vanish without an answer. For a while after a reconnect, and for the writes
 * that were waiting when the connection dropped, no answer within `SETTLING_TIMEOUT_MS`
 * counts as a timeout, so that the write is tried again (safely: message ids and
 * compare-and-set) in under a second rather than after the full timeout.
 */
const SETTLING_MS = 3_000;
const SETTLING_TIMEOUT_MS = 750;

export interface PublishExpectations {
  /** Compare-and-set: the subject's last sequence must be this (0: no message yet). */
  readonly lastSubjectSequence?: number;
  /** Deduplication id within the stream's duplicate window. */
  readonly msgId?: string;
  readonly headers?: Record<string, string>;
}

const decoder = new TextDecoder();

/** A fresh inbox under the connection's `inboxPrefix` (a role may subscribe to its own inbox only). */
export const inboxOf = (nc: NatsConnection): string => createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);

export class AckedPublisher {
  private readonly prefix: string;
  private readonly pending = new Map<number, Pending>();
  private readonly sub: Subscription;
  private readonly sweeper: NodeJS.Timeout;
  private seq = 0;
  private reconnectedAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs = 5_000,
  ) {
    this.prefix = inboxOf(nc);
    // An error here is the subscription refused (or closed): the acks it would carry time out as usual.
    this.sub = nc.subscribe(`${this.prefix}.*`, { callback: (e, msg) => (e === null ? this.receive(msg) : undefined) });
    this.sweeper = setInterval(() => this.sweep(), Math.min(250, timeoutMs));
    this.sweeper.unref();
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === "reconnect") this.reconnected();
        else if (status.type === "error") this.refused(status.error);
      }
    })().catch(() => undefined);
  }

  private reconnected(): void {
    const now = Date.now();
    this.reconnectedAt = now;
    for (const p of this.pending.values()) p.expires = Math.min(p.expires, now + SETTLING_TIMEOUT_MS);
  }

  /** A write to a subject the identity may not publish to gets no PubAck: it fails at once with `PermissionDenied`, not a timeout. */
  private refused(error: unknown): void {
    const denied = permissionDenied(error);
    if (denied === undefined || denied.operation !== "publish") return;
    for (const [id, p] of this.pending) {
      if (p.subject !== denied.subject) continue;
      this.pending.delete(id);
      p.reject(denied);
    }
  }

  publish(subject: string, payload: Uint8Array, expect: PublishExpectations = {}): Promise<PubAck> {
    // Its acks are no longer heard: a write now would wait for ever.
    if (this.isClosed) return Promise.reject(new PublishTimeout({ message: "publisher closed" }));
    const id = ++this.seq;
    let h: MsgHdrs | undefined;
    if (expect.lastSubjectSequence !== undefined || expect.msgId !== undefined || expect.headers !== undefined) {
      h = natsHeaders();
      if (expect.lastSubjectSequence !== undefined) h.set("Nats-Expected-Last-Subject-Sequence", String(expect.lastSubjectSequence));
      if (expect.msgId !== undefined) h.set("Nats-Msg-Id", expect.msgId);
      for (const [k, v] of Object.entries(expect.headers ?? {})) h.set(k, v);
    }
    return new Promise<PubAck>((resolve, reject) => {
      const now = Date.now();
      const timeout = now - this.reconnectedAt < SETTLING_MS ? SETTLING_TIMEOUT_MS : this.timeoutMs;
      this.pending.set(id, { resolve, reject, expires: now + timeout, subject });
      try {
        this.nc.publish(subject, payload, h === undefined ? { reply: `${this.prefix}.${id}` } : { reply: `${this.prefix}.${id}`, headers: h });
      } catch (e) {
        this.pending.delete(id);
        // Refused before sending (too large for the server, a bad subject) is final; a
        // closing connection is not this write's fault (and its retries stop anyway).
        const code = this.nc.isClosed() || this.nc.isDraining() ? 0 : 400;
        reject(new PublishRejected({ message: `cannot publish to ${subject}: ${(e as Error).message}`, errCode: 0, code }));
      }
    });
  }

  private receive(msg: Msg): void {
    const id = Number(msg.subject.slice(this.prefix.length + 1));
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    const code = msg.headers?.code ?? 0;
    if (code === 503) {
      p.reject(new PublishRejected({ message: `no JetStream stream answers on ${p.subject}`, errCode: 503, code: 503 }));
      return;
    }
    try {
      const ack = JSON.parse(decoder.decode(msg.data)) as {
        stream?: string;
        seq?: number;
        duplicate?: boolean;
        error?: { err_code?: number; code?: number; description?: string };
      };
      if (ack.error !== undefined) {
        const code = ack.error.code ?? 0;
        p.reject(new PublishRejected({ message: ack.error.description ?? "rejected", errCode: ack.error.err_code ?? code, code }));
      } else {
        p.resolve({ stream: ack.stream ?? "", seq: ack.seq ?? 0, duplicate: ack.duplicate === true });
      }
    } catch {
      p.reject(new PublishRejected({ message: `unreadable PubAck on ${p.subject}`, errCode: 0, code: 0 }));
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (p.expires > now) continue;
      this.pending.delete(id);
      p.reject(new PublishTimeout({ message: `no PubAck for ${p.subject} in time` }));
    }
  }

  /** Closed with its client: what was still waiting for its ack was rejected. */
  get closed(): boolean {
    return this.isClosed;
  }

  private isClosed = false;

  close(): void {
    this.isClosed = true;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
    for (const p of this.pending.values()) p.reject(new PublishTimeout({ message: "publisher closed" }));
    this.pending.clear();
  }
}

/**
 * An acknowledged write tried again through a passing unavailability (an election, a restart)
 * for the connection's `submitRetryFor`: a work message, or what a record's write implies (an
 * index entry, a step notice). Message ids keep a write that landed twice once.
 */
export const publishRetried = (
  nats: { readonly nc: NatsConnection; readonly publisher: AckedPublisher; readonly submitRetryFor: number },
  subject: string,
  payload: Uint8Array,
  expect: PublishExpectations,
): Promise<PubAck> => withRetryFor(nats.nc, () => nats.publisher.publish(subject, payload, expect), isTransientPublishError, nats.submitRetryFor);
