/**
 * The floor of this substrate: a bare fenced protocol on nats.js, in the bench's shape, that
 * any durable design here must at least do. Per task it stores three messages and acks:
 *
 * 1. the work message (a work-queue stream, a subject per task);
 * 2. a RUNNING claim on the task's record subject, published with
 *    `Nats-Expected-Last-Subject-Sequence: 0` (it fails if anything was written before);
 * 3. the outcome, expecting the claim's sequence; then the work message is acknowledged.
 *
 * The client hears outcomes from a core subscription on the record subjects. No schemas, no
 * actors, no retries, no index: what NATS itself allows, measured on the same server in the
 * same run as Troupe. Two ways of writing: through the same pipelined acked publisher Troupe
 * uses (`pipelined`: the difference between the two is Troupe's own work), or with nats.js's
 * own `js.publish` (`js.publish`: a script as a user would write it).
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JsMsg } from "@nats-io/jetstream";
import { connectNats } from "../src/nats/connection.js";
import { AckedPublisher } from "../src/nats/publisher.js";

const WORK = "FLOOR_WORK";
const RECORDS = "FLOOR_RECORDS";

export interface FloorOptions {
  readonly n: number;
  /** Tasks run first, unmeasured (warm). */
  readonly warm?: number;
  readonly inFlight: number;
  readonly concurrency: number;
  readonly pad: string;
  /** How the acked writes are made (default `pipelined`). */
  readonly writes?: "pipelined" | "js.publish";
}

/** An acked write expecting a subject's last sequence, or a message id. */
type Write = (subject: string, data: Uint8Array, expect: { lastSubjectSequence?: number; msgId?: string }) => Promise<{ seq: number }>;

/** Make the floor's two streams and its consumer on a fresh server. */
const layout = async (url: string) => {
  const nc = await connectNats({ servers: url });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: WORK, subjects: ["floor.work.>"], retention: RetentionPolicy.Workqueue, storage: StorageType.File });
  await jsm.streams.add({ name: RECORDS, subjects: ["floor.rec.>"], storage: StorageType.File, max_msgs_per_subject: 64, allow_direct: true });
  await jsm.consumers.add(WORK, { durable_name: "floor", ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: "floor.work.>", max_ack_pending: 20_000 });
  return { nc, js: jetstream(nc), publisher: new AckedPublisher(nc) };
};

/** One round of the floor: tasks per second, submit → outcome heard, `inFlight` submits at a time. */
export const floorThroughput = async (url: string, options: FloorOptions): Promise<number> => {
  const { nc, js, publisher } = await layout(url);
  const write: Write =
    options.writes === "js.publish"
      ? (subject, data, expect) =>
          js.publish(subject, data, {
            ...(expect.msgId === undefined ? {} : { msgID: expect.msgId }),
            ...(expect.lastSubjectSequence === undefined ? {} : { expect: { lastSubjectSequence: expect.lastSubjectSequence } }),
          })
      : (subject, data, expect) => publisher.publish(subject, data, expect);
  const encoder = new TextEncoder();
  const waiting = new Map<string, () => void>();
  const sub = nc.subscribe("floor.rec.>", {
    callback: (_e, msg) => {
      // The record's status is what the client checks; the outcome ends the wait.
      const text = new TextDecoder().decode(msg.data);
      if (!text.includes('"status":"COMPLETED"')) return;
      const id = msg.subject.slice("floor.rec.".length);
      waiting.get(id)?.();
      waiting.delete(id);
    },
  });
  let active = 0;
  const queue: JsMsg[] = [];
  const handle = async (m: JsMsg) => {
    const id = m.subject.slice("floor.work.".length);
    const task = JSON.parse(new TextDecoder().decode(m.data)) as { id: string; input: unknown };
    const claim = await write(`floor.rec.${id}`, encoder.encode(JSON.stringify({ id, status: "RUNNING", input: task.input })), { lastSubjectSequence: 0 });
    const output = (task.input as { i: number }).i;
    await write(`floor.rec.${id}`, encoder.encode(JSON.stringify({ id, status: "COMPLETED", output })), { lastSubjectSequence: claim.seq });
    m.ack();
  };
  const pump = () => {
    while (active < options.concurrency && queue.length > 0) {
      const m = queue.shift()!;
      active++;
      void handle(m)
        .catch(() => undefined) // closing: the last outcomes' acks may still be on their way
        .finally(() => {
          active--;
          pump();
        });
    }
  };
  const consumer = await js.consumers.get(WORK, "floor");
  const messages = await consumer.consume({ max_messages: options.concurrency });
  void (async () => {
    for await (const m of messages) {
      queue.push(m);
      pump();
    }
  })();
  const submitAll = async (n: number, prefix: string) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(options.inFlight, n) }, async () => {
        while (next < n) {
          const i = next++;
          const id = `${prefix}${i}`;
          const done = new Promise<void>((resolve) => waiting.set(id, resolve));
          await write(`floor.work.${id}`, encoder.encode(JSON.stringify({ id, status: "QUEUED", input: { i, pad: options.pad } })), { msgId: id });
          await done;
        }
      }),
    );
  };
  if ((options.warm ?? 0) > 0) await submitAll(options.warm!, "w");
  const started = performance.now();
  await submitAll(options.n, "t");
  const perSecond = options.n / ((performance.now() - started) / 1000);
  // The outcomes heard, their acks may still be on their way: let them land before closing.
  for (let i = 0; i < 200 && (active > 0 || queue.length > 0); i++) await new Promise((r) => setTimeout(r, 10));
  await messages.close();
  sub.unsubscribe();
  publisher.close();
  await nc.close();
  return perSecond;
};

/**
 * The floor's submit → start after its worker sat idle for `idleMs` (its pull request
 * renewed meanwhile): publish the work, and the time until the claim is acknowledged (when a
 * handler would start).
 */
export const floorIdleStart = async (url: string, idleMs: number, samples: number): Promise<number[]> => {
  const { nc, js, publisher } = await layout(url);
  const encoder = new TextEncoder();
  const claimed = new Map<string, (at: number) => void>();
  const consumer = await js.consumers.get(WORK, "floor");
  const messages = await consumer.consume({ max_messages: 8, expires: 5_000 });
  void (async () => {
    for await (const m of messages) {
      const id = m.subject.slice("floor.work.".length);
      await publisher.publish(`floor.rec.${id}`, encoder.encode(JSON.stringify({ id, status: "RUNNING" })), { lastSubjectSequence: 0 });
      claimed.get(id)?.(performance.now());
      m.ack();
    }
  })();
  const waits: number[] = [];
  for (let i = 0; i < samples; i++) {
    await new Promise((r) => setTimeout(r, idleMs));
    const id = `idle${i}`;
    const at = new Promise<number>((resolve) => claimed.set(id, resolve));
    const t0 = performance.now();
    await publisher.publish(`floor.work.${id}`, encoder.encode(JSON.stringify({ id, status: "QUEUED" })), { msgId: id });
    waits.push((await at) - t0);
  }
  await messages.close();
  publisher.close();
  await nc.close();
  return waits;
};
