/**
 * A JetStream delivery held by a worker: the task's lease. Acks are plain publishes to
 * the reply subject (no request), so settling a task costs no round trip.
 */
import type { Msg, NatsConnection } from "@nats-io/transport-node";

export interface DeliveryInfo {
  readonly stream: string;
  readonly consumer: string;
  /** How many times this message was delivered, this time included. */
  readonly deliveryCount: number;
  readonly streamSequence: number;
}

/** `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (v1) or the v2 form with domain and account hash. */
export const parseAckSubject = (reply: string): DeliveryInfo | undefined => {
  const t = reply.split(".");
  if (t[0] !== "$JS" || t[1] !== "ACK") return undefined;
  const rest = t.length === 9 ? t.slice(2) : t.length >= 11 ? t.slice(4) : undefined;
  if (rest === undefined || rest.length < 4) return undefined;
  return {
    stream: rest[0]!,
    consumer: rest[1]!,
    deliveryCount: Number(rest[2]),
    streamSequence: Number(rest[3]),
  };
};

const ACK = new TextEncoder().encode("+ACK");
const WPI = new TextEncoder().encode("+WPI");
const TERM = new TextEncoder().encode("+TERM");

export class Lease {
  private done = false;
  constructor(
    private readonly nc: NatsConnection,
    readonly msg: Msg,
    readonly info: DeliveryInfo,
  ) {}

  get settled(): boolean {
    return this.done;
  }

  ack(): void {
    this.settle(ACK);
  }

  /** Put it back, to be redelivered after `delayMs`. */
  nak(delayMs = 0): void {
    const body = delayMs > 0 ? `-NAK ${JSON.stringify({ delay: Math.round(delayMs) * 1_000_000 })}` : "-NAK";
    this.settle(new TextEncoder().encode(body));
  }

  /**
   * Never redeliver (a malformed message). Plain `+TERM`: nats-server 2.9 does not read
   * a reason after it; the reason goes to the log and the `rejected` event instead.
   */
  term(): void {
    this.settle(TERM);
  }

  /** Extend the lease by another AckWait. */
  working(): void {
    if (!this.done && this.msg.reply) this.nc.publish(this.msg.reply, WPI);
  }

  private settle(body: Uint8Array): void {
    if (this.done || !this.msg.reply) return;
    this.done = true;
    this.nc.publish(this.msg.reply, body);
  }
}
