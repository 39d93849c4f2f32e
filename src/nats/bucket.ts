/**
 * Reading a KV bucket whole without leaving consumers behind.
 *
 * `kv.keys()` and `kv.watch()` each create an ordered consumer that outlives its use on the
 * server by five minutes (its inactivity threshold): a listing made every few hundred
 * milliseconds holds hundreds of them. So here:
 * - a one-shot listing (`bucketKeys`, `readBucket`) makes no consumer: the bucket's stream
 *   info names its keys (`subjects_filter`), and each entry is one direct read;
 * - a reader that looks again and again (a scheduler, a worker's pauses) follows the bucket
 *   with one `BucketWatch`: one ordered consumer for as long as it is open, its entries kept
 *   in memory, and its consumer deleted when it stops.
 */
import { DeliverPolicy, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg, type PushConsumer } from "@nats-io/jetstream";
import type { Schema } from "effect";
import { NatsFailure } from "../errors.js";
import { decodeWith } from "./codec.js";

const kvPrefix = (bucket: string) => `$KV.${bucket}.`;

/**
 * The keys `bucket` holds a message for (those removed by a delete marker included; a purged
 * key without a marker is not), read from its stream's info: no consumer, one request (a page
 * per 100,000 keys), bounded by the manager's request timeout.
 */
export const bucketKeys = async (jsm: JetStreamManager, bucket: string): Promise<string[]> => {
  const prefix = kvPrefix(bucket);
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}>` });
  return Object.keys(info.state.subjects ?? {}).map((subject) => subject.slice(prefix.length));
};

/** What `readBucket` reads each key's last entry from. */
interface ReadableBucket {
  get(key: string): Promise<{ readonly operation: string; readonly value: Uint8Array } | null>;
}

/** How long listing a bucket may take (`readBucket`): a listing that does not end is an error, not a hang. */
export const LISTING_TIMEOUT_MS = 10_000;

/**
 * Every live entry of `bucket` (its handle `kv`), decoded with `schema`; one that is gone or
 * does not decode is left out. No consumer: its keys from the stream's info, each entry read
 * directly. A read that fails is a `NatsFailure` (never taken for a missing entry), and so is
 * a listing that takes over `timeoutMs`.
 */
export const readBucket = async <T>(
  jsm: JetStreamManager,
  bucket: string,
  kv: ReadableBucket,
  schema: Schema.Decoder<T, never>,
  what: string,
  timeoutMs = LISTING_TIMEOUT_MS,
): Promise<Array<{ key: string; value: T }>> => {
  const listing = (async () => {
    const keys = await bucketKeys(jsm, bucket);
    const entries = await Promise.all(keys.map(async (key) => ({ key, entry: await kv.get(key) })));
    const found: Array<{ key: string; value: T }> = [];
    for (const { key, entry } of entries) {
      const decoded = entry?.operation === "PUT" ? decodeWith(schema, entry.value, what) : undefined;
      if (decoded?.ok) found.push({ key, value: decoded.value });
    }
    return found;
  })();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new NatsFailure({ message: `listing every ${what} did not end within ${timeoutMs / 1000} s (is the server overloaded, or its store shared with another server?)` })),
      timeoutMs,
    );
  });
  listing.catch(() => undefined);
  try {
    return await Promise.race([listing, expired]);
  } catch (e) {
    if (e instanceof NatsFailure) throw e;
    throw new NatsFailure({ message: `cannot list every ${what}: ${(e as Error).message}`, cause: e });
  } finally {
    clearTimeout(timer);
  }
};

/** A live entry of a followed bucket: its value and revision (the stream sequence of its write). */
export interface BucketEntry {
  readonly key: string;
  readonly value: Uint8Array;
  readonly revision: number;
}

/**
 * A bucket followed through one ordered consumer (each key's last entry, then every change),
 * its live entries kept in memory. `onChange` hears each key's entry as it comes (`undefined`
 * once deleted or purged). `stop()` ends it and deletes its consumer.
 */
export class BucketWatch {
  private readonly live = new Map<string, BucketEntry>();
  private delivered = 0;
  private stopped = false;
  private ended = false;
  private readonly loadedSignal: Promise<void>;
  private markLoaded: () => void = () => undefined;

  private constructor(
    private readonly consumer: PushConsumer,
    private readonly bucket: string,
    private readonly prefix: string,
    /** How many entries the bucket held when the consumer was made: delivered first. */
    private readonly initial: number,
    private readonly onChange: ((key: string, entry: BucketEntry | undefined) => void) | undefined,
  ) {
    this.loadedSignal = new Promise((resolve) => (this.markLoaded = resolve));
    if (initial === 0) this.markLoaded();
  }

  private messages: ConsumerMessages | undefined;

  static async open(js: JetStreamClient, bucket: string, onChange?: (key: string, entry: BucketEntry | undefined) => void): Promise<BucketWatch> {
    const prefix = kvPrefix(bucket);
    const consumer = await js.consumers.getPushConsumer(`KV_${bucket}`, { filter_subjects: `${prefix}>`, deliver_policy: DeliverPolicy.LastPerSubject });
    const watch = new BucketWatch(consumer, bucket, prefix, (await consumer.info(true)).num_pending, onChange);
    try {
      watch.messages = await consumer.consume({ callback: (m) => watch.receive(m) });
    } catch (e) {
      await consumer.delete().catch(() => undefined);
      throw e;
    }
    void watch.messages.closed().then(() => (watch.ended = true));
    return watch;
  }

  private receive(m: JsMsg): void {
    const key = m.subject.slice(this.prefix.length);
    const operation = m.headers?.get("KV-Operation") ?? "";
    const revision = m.seq;
    // Not behind a write this process made and noted (`noted`) before the consumer brought it back.
    if ((this.live.get(key)?.revision ?? 0) < revision) {
      if (operation === "DEL" || operation === "PURGE") this.live.delete(key);
      else this.live.set(key, { key, value: m.data, revision });
      this.onChange?.(key, this.live.get(key));
    }
    if (++this.delivered >= this.initial) this.markLoaded();
  }

  /** The live entries, by key, as last heard. */
  get entries(): ReadonlyMap<string, BucketEntry> {
    return this.live;
  }

  /** Whether it still follows the bucket: not stopped, and its consumer not given up (its connection closed). */
  get following(): boolean {
    return !this.stopped && !this.ended;
  }

  /** Resolves once the entries the bucket held when it was opened are in; `NatsFailure` after `timeoutMs`. */
  loaded(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new NatsFailure({ message: `the entries of bucket ${this.bucket} were not read within ${timeoutMs} ms` })), timeoutMs);
    });
    return Promise.race([this.loadedSignal, late]).finally(() => clearTimeout(timer));
  }

  /** A write this process made (its new revision), known before the consumer brings it back. */
  noted(key: string, value: Uint8Array, revision: number): void {
    if ((this.live.get(key)?.revision ?? 0) < revision) this.live.set(key, { key, value, revision });
  }

  /** Stop following, and delete the consumer rather than leave it to the server's inactivity threshold. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.messages?.stop();
    await this.consumer.delete().catch(() => undefined);
  }
}
