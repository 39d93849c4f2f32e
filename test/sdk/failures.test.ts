import { afterEach, describe, expect, it, vi } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { Effect } from "effect";
import {
  Cancelled,
  defineTask,
  Execution,
  NonRetryableError,
  Schema,
  Timeout,
} from "../../src/index.js";
import { connectionOf, Topology } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { eventCount, recordWhere } from "../helpers/records.js";
import { untilAborted } from "../helpers/handlers.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const Input = Schema.Struct({ key: Schema.String });



describe("failure semantics", () => {
  it("interrupts an attempt at its deadline and fails it with Timeout", async () => {
    let aborted = false;
    const slow = defineTask({
      name: "slow",
      input: Input,
      output: Schema.Void,
      timeout: 300,
      handler: (_input, ctx) => untilAborted(ctx.signal, undefined, () => (aborted = true)),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [slow] });
    const run = await troupe.submit(slow, { key: "a" });
    const error = await run.result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Timeout);
    expect(aborted).toBe(true);
    const record = await run.get();
    expect(record).toMatchObject({ status: "FAILED", attempt: 1, error: { _tag: "Timeout" } });
  });

  it("interrupts an Effect handler at its deadline", async () => {
    let interrupted = false;
    const never = defineTask({
      name: "never",
      input: Input,
      output: Schema.Void,
      timeout: 200,
      handler: () => Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => (interrupted = true)))),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [never] });
    const run = await troupe.submit(never, { key: "a" });
    expect(await run.result().catch((e: unknown) => e)).toBeInstanceOf(Timeout);
    await recordWhere(troupe, run.id, (r) => r.status === "FAILED");
    expect(interrupted).toBe(true);
  });

  it("retries with backoff through delayed NAKs until an attempt succeeds", async () => {
    const attempts: number[] = [];
    const flaky = defineTask({
      name: "flaky",
      input: Input,
      output: Schema.Number,
      retry: { attempts: 3, backoff: "fixed", delay: 100, jitter: 0 },
      handler: async (_input, ctx) => {
        attempts.push(ctx.attempt);
        if (ctx.attempt < 3) throw new Error(`attempt ${ctx.attempt} failed`);
        return ctx.attempt;
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [flaky] });
    const run = await troupe.submit(flaky, { key: "a" });
    expect(await run.result()).toBe(3);
    expect(attempts).toEqual([1, 2, 3]);
    // Each retry is a write of the record, kept in its history.
    expect((await troupe.history(run.id)).filter((e) => e.event === "retrying").map((e) => (e.record as { attempt: number }).attempt)).toEqual([1, 2]);
    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    const consumer = await jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", "flaky"));
    expect(consumer.num_redelivered).toBe(0); // acked: nothing waits for redelivery
  });

  it("fails for good when the attempts run out, and at once on NonRetryableError", async () => {
    let calls = 0;
    const always = defineTask({
      name: "always-throws",
      input: Input,
      output: Schema.Void,
      retry: { attempts: 2, backoff: "exponential", delay: 50, jitter: 0 },
      handler: async ({ key }) => {
        calls++;
        if (key === "fatal") throw new NonRetryableError("do not retry");
        throw new Error("transient");
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [always] });
    const run = await troupe.submit(always, { key: "x" });
    const error = await run.result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Execution);
    expect((await run.get()).attempt).toBe(2);
    expect(calls).toBe(2);
    const fatal = await troupe.submit(always, { key: "fatal" });
    expect(await fatal.result().catch((e: unknown) => (e as Error).message)).toBe("do not retry");
    expect((await fatal.get()).attempt).toBe(1);
    expect(calls).toBe(3);
  });

  it("cancels a queued task before it starts, a running one by interrupting it, and leaves a finished one", async () => {
    let started = 0;
    let sawAbort = false;
    const wait = defineTask({
      name: "wait",
      input: Input,
      output: Schema.String,
      handler: ({ key }, ctx) => {
        started++;
        if (key === "quick") return Promise.resolve(key);
        return untilAborted(ctx.signal, "aborted", () => (sawAbort = true));
      },
    });
    const troupe = await connect(server());
    const other = await connect(server());

    // Queued: cancelled by another client before any worker exists; it never starts.
    const queued = await troupe.submit(wait, { key: "queued" });
    expect(await other.cancel(queued.id, "not needed")).toMatchObject({ cancelled: true, status: "CANCELLED" });
    expect(await queued.result().catch((e: unknown) => e)).toBeInstanceOf(Cancelled);

    await troupe.worker({ tasks: [wait] });
    const running = await troupe.submit(wait, { key: "running" });
    await recordWhere(troupe, running.id, (r) => r.status === "RUNNING");
    const result = await running.cancel("stop it");
    expect(result).toMatchObject({ cancelled: true, status: "CANCELLED" });
    expect(sawAbort).toBe(true);
    expect(await running.result().catch((e: unknown) => e)).toBeInstanceOf(Cancelled);
    expect(await running.get()).toMatchObject({ status: "CANCELLED", error: { _tag: "Cancelled", message: "stop it" } });

    const quick = await troupe.submit(wait, { key: "quick" });
    expect(await quick.result()).toBe("quick");
    expect(await troupe.cancel(quick.id)).toMatchObject({ cancelled: false, status: "COMPLETED" });
    expect(started).toBe(2); // the queued one never ran
  });

  it("returns the same run for the same idempotency key and enqueues nothing new", async () => {
    let calls = 0;
    const charge = defineTask({
      name: "payments.charge",
      input: Input,
      output: Schema.String,
      handler: async ({ key }) => {
        calls++;
        return `charged ${key}`;
      },
    });
    const troupe = await connect(server());
    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    const first = await troupe.submit(charge, { key: "order-1" }, { idempotencyKey: "order-1" });
    const again = await troupe.submit(charge, { key: "order-1" }, { idempotencyKey: "order-1" });
    expect(again.id).toBe(first.id);
    expect((await jsm.streams.info(Topology.TASKS_STREAM, { subjects_filter: Topology.taskSubject("default", "payments.charge") })).state.messages).toBe(1);
    await troupe.worker({ tasks: [charge] });
    expect(await first.result()).toBe("charged order-1");
    // Long after: the KV record, not the duplicate window, keeps the key.
    const later = await troupe.submit(charge, { key: "order-1" }, { idempotencyKey: "order-1" });
    expect(later.id).toBe(first.id);
    expect(await later.result()).toBe("charged order-1");
    expect(calls).toBe(1);
  });

  it("terminates malformed messages once, records them, and keeps working", async () => {
    let calls = 0;
    const echo = defineTask({
      name: "echo",
      input: Input,
      output: Schema.String,
      handler: async ({ key }) => {
        calls++;
        return key;
      },
    });
    const troupe = await connect(server());
    const worker = await troupe.worker({ tasks: [echo], concurrency: 2 });
    const subject = (i: number) => Topology.workSubject("default", "echo", `bad-${i}`);
    const bad = [
      "not json",
      "",
      '{"hello":"world"}',
      JSON.stringify({ id: "x1", task: "something.else", queue: "default", status: "QUEUED", attempt: 0, input: {}, createdAt: "" }),
    ];
    for (const [i, body] of bad.entries()) await connectionOf(troupe).js.publish(subject(i), body);
    const good = await troupe.submit(echo, { key: "still here" });
    expect(await good.result()).toBe("still here");
    const rejected = Topology.eventSubject("worker", worker.id, "rejected");
    const jsm = await jetstreamManager(connectionOf(troupe).nc);
    await vi.waitFor(async () => expect(await eventCount(troupe, rejected)).toBe(bad.length));
    expect(calls).toBe(1);
    await vi.waitFor(async () => {
      const consumer = await jsm.consumers.info(Topology.TASKS_STREAM, Topology.consumerName("default", "echo"));
      expect(consumer.num_ack_pending + consumer.num_pending).toBe(0);
    });
  });

  it("a stop past its timeout interrupts running handlers and hands their tasks to another worker", async () => {
    let first = true;
    let interrupted = false;
    const job = defineTask({
      name: "job",
      input: Input,
      output: Schema.String,
      handler: ({ key }, ctx) => {
        if (!first) return Promise.resolve(`done ${key}`);
        first = false;
        return untilAborted(ctx.signal, "interrupted", () => (interrupted = true));
      },
    });
    const troupe = await connect(server());
    const a = await troupe.worker({ tasks: [job] });
    const run = await troupe.submit(job, { key: "k" });
    await recordWhere(troupe, run.id, (r) => r.status === "RUNNING" && r.workerId === a.id);
    await a.stop({ timeout: 100 });
    expect(interrupted).toBe(true);
    expect((await run.get()).status).toBe("RUNNING"); // nothing written over: left to redelivery
    const b = await troupe.worker({ tasks: [job] });
    expect(await run.result()).toBe("done k");
    expect(await run.get()).toMatchObject({ status: "COMPLETED", workerId: b.id, attempt: 2, lostAttempts: 1 });
  });
});

describe("handlers that are Effects", () => {
  it("records a typed failure and a defect alike as Execution, and keeps working", async () => {
    class Refused extends Error {}
    const picky = defineTask({
      name: "picky",
      input: Input,
      output: Schema.String,
      handler: ({ key }) =>
        key === "fail"
          ? Effect.fail(new Refused("refused"))
          : key === "die"
            ? Effect.sync(() => {
                throw new Error("died inside");
              })
            : Effect.succeed(key),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [picky] });
    const fail = await troupe.submit(picky, { key: "fail" });
    const die = await troupe.submit(picky, { key: "die" });
    const ok = await troupe.submit(picky, { key: "ok" });
    expect(((await fail.result().catch((e: unknown) => e)) as Execution).message).toBe("refused");
    expect(((await die.result().catch((e: unknown) => e)) as Execution).message).toBe("died inside");
    expect(await ok.result()).toBe("ok");
  });
});

describe("delayed tasks", () => {
  it("starts a delayed task no sooner than its delay, holding no worker slot meanwhile", async () => {
    const stamp = defineTask({
      name: "stamp",
      input: Input,
      output: Schema.String,
      handler: async ({ key }) => key,
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [stamp], concurrency: 1 });
    const later = await troupe.submit(stamp, { key: "later" }, { delay: 400 });
    const now = await troupe.submit(stamp, { key: "now" });
    expect(await now.result()).toBe("now");
    expect((await later.get()).status).toBe("QUEUED"); // the one slot was free for "now"
    expect(await later.result()).toBe("later");
    const record = await later.get();
    expect(Date.parse(record.startedAt!)).toBeGreaterThanOrEqual(Date.parse(record.runAt!));
    expect(record.attempt).toBe(1);
  });
});
