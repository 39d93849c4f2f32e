/**
 * One failure model: each kind a task can fail with is recorded with its tag and reaches
 * `run.result()` as the class of that name; every option is checked where it is given.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { Effect } from "effect";
import {
  Cancelled,
  defineTask,
  Execution,
  InvalidDefinition,
  InvalidInput,
  InvalidOption,
  NatsFailure,
  ResultTimeout,
  Schema,
  Serialization,
  Timeout,
  WorkerLost,
} from "../../src/index.js";
import { connectionOf, ensureTaskConsumer, Topology, untypedTask } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { untilAborted } from "../helpers/handlers.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const typed = defineTask({
  name: "tags.typed",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }) => n,
});

describe("every failure reaches run.result() with its tag", () => {
  it("InvalidInput, Serialization, Execution, Timeout and Cancelled, recorded by a worker", async () => {
    const wrongOutput = defineTask({
      name: "tags.output",
      input: Schema.Struct({}),
      output: Schema.Number,
      handler: async () => "not a number" as unknown as number,
    });
    const throws = defineTask({
      name: "tags.throws",
      input: Schema.Struct({}),
      output: Schema.Void,
      retry: { attempts: 2, delay: "10 millis" },
      handler: async () => {
        throw new Error("boom");
      },
    });
    const slow = defineTask({
      name: "tags.slow",
      input: Schema.Struct({}),
      output: Schema.Void,
      timeout: "200 millis",
      handler: (_i, ctx) => untilAborted(ctx.signal, undefined),
    });
    const waits = defineTask({
      name: "tags.waits",
      input: Schema.Struct({}),
      output: Schema.Void,
      handler: (_i, ctx) => untilAborted(ctx.signal, undefined),
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [typed, wrongOutput, throws, slow, waits], concurrency: 8 });

    // Input the submitter could not check (a task known by name only): the worker records InvalidInput.
    const unchecked = await troupe.submit(untypedTask(typed.name), { n: "one" });
    const invalid = await troupe.run(typed, unchecked.id).result().catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(InvalidInput);
    expect((invalid as InvalidInput).path).toEqual(["n"]);
    expect((invalid as InvalidInput).task).toBe(typed.name);

    expect(await (await troupe.submit(wrongOutput, {})).result().catch((e: unknown) => e)).toBeInstanceOf(Serialization);

    const failed = await troupe.submit(throws, {});
    expect(await failed.result().catch((e: unknown) => e)).toBeInstanceOf(Execution);
    // No attempt follows a FAILED record, and the record says so.
    expect(await failed.get()).toMatchObject({ status: "FAILED", attempt: 2, error: { _tag: "Execution", retryable: false } });

    expect(await (await troupe.submit(slow, {})).result().catch((e: unknown) => e)).toBeInstanceOf(Timeout);

    const cancelled = await troupe.submit(waits, {});
    await vi.waitFor(async () => expect((await cancelled.get()).status).toBe("RUNNING"));
    await cancelled.cancel("enough");
    expect(await cancelled.result().catch((e: unknown) => e)).toBeInstanceOf(Cancelled);
  });

  it("no Serialization for a record whose input and output together are over the payload limit: both go to the object store", async () => {
    let calls = 0;
    const bulky = defineTask({
      name: "tags.bulky",
      input: Schema.Struct({ text: Schema.String }),
      output: Schema.String,
      retry: { attempts: 3, delay: 10 },
      handler: async ({ text }) => {
        calls++;
        return text + text; // each part fits one message; the record with both would not
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [bulky] });
    const run = await troupe.submit(bulky, { text: "x".repeat(450_000) });
    expect(await run.result({ timeout: "20 seconds" })).toHaveLength(900_000);
    expect(await run.get()).toMatchObject({ status: "COMPLETED", attempt: 1 });
    expect(calls).toBe(1);
  });

  it("WorkerLost, when the deliveries run out on workers that never answer", async () => {
    const abandoned = defineTask({ ...typedOptions("tags.abandoned"), heartbeatTimeout: 400, maxDeliveries: 1 });
    const troupe = await connect(server());
    const nats = connectionOf(troupe);
    const run = await troupe.submit(abandoned, { n: 1 });
    // Play a worker that takes the task and dies: no ack, no heartbeat, and only one delivery allowed.
    const consumer = await ensureTaskConsumer(nats.jsm, abandoned.queue, abandoned.name, { ackWaitMs: 400, maxDeliver: 1 });
    expect(await (await nats.js.consumers.get(Topology.TASKS_STREAM, consumer)).next({ expires: 5_000 })).not.toBeNull();
    // A live worker asks for the task again once the lease lapses: the server finds its
    // deliveries spent and raises MAX_DELIVERIES, which a worker's reaper settles.
    await troupe.worker({ tasks: [abandoned] });
    const error = await run.result({ timeout: "20 seconds" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WorkerLost);
    expect(await run.get()).toMatchObject({ status: "FAILED", error: { _tag: "WorkerLost" } });
  });

  it("NatsFailure, when the task was recorded but its work could not be enqueued", async () => {
    const troupe = await connect(server());
    const jsm = connectionOf(troupe).jsm;
    const config = (await jsm.streams.info(Topology.TASKS_STREAM)).config;
    // The work stream refuses every message from now on (a final refusal, not a passing one).
    await jsm.streams.update(Topology.TASKS_STREAM, { ...config, max_msg_size: 16 });
    try {
      const error = await troupe.submit(typed, { n: 1 }, { id: "unqueueable" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(NatsFailure);
      const recorded = await troupe.run(typed, "unqueueable").result().catch((e: unknown) => e);
      expect(recorded).toBeInstanceOf(NatsFailure);
      expect(await troupe.get("unqueueable")).toMatchObject({ status: "FAILED", error: { _tag: "NatsFailure" } });
    } finally {
      await jsm.streams.update(Topology.TASKS_STREAM, config);
    }
  });
});

const typedOptions = (name: string) => ({
  name,
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Number,
  handler: async ({ n }: { n: number }) => n,
});

describe("options are checked where they are given", () => {
  it("takes durations for every duration, and names a bad option", async () => {
    const defined = (options: Record<string, unknown>) => {
      try {
        defineTask({ ...typedOptions("opts.task"), ...options });
        return "accepted";
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidDefinition);
        return (e as Error).message;
      }
    };
    expect(defined({ retry: { attempts: 3, delay: "50 millis", maxDelay: "2 seconds" } })).toBe("accepted");
    expect(defined({ timeout: "2s", heartbeatTimeout: "1m", retry: { delay: "500ms" } })).toBe("accepted");
    expect(defined({ timeout: "banana" })).toContain("timeout must be a duration");
    expect(defined({ heartbeatTimeout: "1 millis" })).toContain("heartbeatTimeout must be a duration of at least 300 ms");
    expect(defined({ retry: { delay: "soon" } })).toContain("retry.delay");
    expect(defined({ retry: { maxDelay: -1 } })).toContain("retry.maxDelay");
    expect(defined({ retry: { backoff: "sometimes" } })).toContain("retry.backoff");
    expect(defined({ retry: { jitter: 2 } })).toContain("retry.jitter");
    expect(defined({ retry: { retries: 3 } })).toContain('unknown option "retry.retries"');
    expect(defined({ timout: 100 })).toContain('unknown option "timout"');
    expect(defined({ maxDeliveries: 0 })).toContain("maxDeliveries");

    const troupe = await connect(server());
    const delay = await troupe.submit(typed, { n: 1 }, { delay: "banana" as never }).catch((e: unknown) => e);
    expect(delay).toBeInstanceOf(InvalidOption);
    expect((delay as InvalidOption).message).toContain("delay");
    expect(await troupe.submit(typed, { n: 1 }, { id: "a.b" }).catch((e: unknown) => (e as { _tag?: string })._tag)).toBe("InvalidOption");
  });

  it("retries on a duration-string delay", async () => {
    let calls = 0;
    const flaky = defineTask({
      ...typedOptions("opts.flaky"),
      retry: { attempts: 3, backoff: "fixed", delay: "50 millis", jitter: 0 },
      handler: async ({ n }) => {
        if (++calls < 3) throw new Error("not yet");
        return n;
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [flaky] });
    const run = await troupe.submit(flaky, { n: 7 });
    expect(await run.result({ timeout: "20 seconds" })).toBe(7);
    expect(await run.get()).toMatchObject({ status: "COMPLETED", attempt: 3 });
  });

  it("records the real retry time: the wait the NAK asks for, jitter included", async () => {
    const starts: number[] = [];
    const jittery = defineTask({
      ...typedOptions("opts.jittery"),
      retry: { attempts: 2, backoff: "fixed", delay: 300, jitter: 1 },
      handler: async ({ n }, ctx) => {
        starts.push(Date.now());
        if (ctx.attempt === 1) throw new Error("again");
        return n;
      },
    });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [jittery] });
    const run = await troupe.submit(jittery, { n: 1 });
    const retrying = await new Promise<{ finishedAt?: string; retryAt?: string }>((resolve) => {
      const sub = connectionOf(troupe).nc.subscribe(Topology.recordSubject("task", run.id), {
        callback: (_e, m) => {
          const record = m.json<{ status: string; finishedAt?: string; retryAt?: string }>();
          if (record.status !== "RETRYING") return;
          sub.unsubscribe();
          resolve(record);
        },
      });
    });
    await run.result({ timeout: "20 seconds" });
    const wait = Date.parse(retrying.retryAt!) - Date.parse(retrying.finishedAt!);
    expect(wait).toBeGreaterThanOrEqual(150); // 300 ms ± half of it
    expect(wait).toBeLessThanOrEqual(450);
    expect(starts[1]!).toBeGreaterThanOrEqual(Date.parse(retrying.retryAt!) - 5);
  });
});

describe("every wait can end", () => {
  it("result({ timeout }) rejects with ResultTimeout and the task goes on; close() ends the waits", async () => {
    const troupe = await connect(server());
    const run = await troupe.submit(typed, { n: 5 }); // no worker: it waits queued
    const error = await run.result({ timeout: 50 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResultTimeout);
    expect((error as ResultTimeout).id).toBe(run.id);
    expect(await run.result({ timeout: "banana" as never }).catch((e: unknown) => (e as { _tag?: string })._tag)).toBe("InvalidOption");
    const pending = run.result().catch((e: unknown) => e);
    await troupe.close();
    expect(await pending).toBeInstanceOf(NatsFailure);

    const other = await connect(server());
    await other.worker({ tasks: [typed] });
    expect(await other.run(typed, run.id).result({ timeout: "20 seconds" })).toBe(5);
  });

  it("a result asked for after the task ended comes from the recent results at once", async () => {
    const troupe = await connect(server());
    await troupe.worker({ tasks: [typed] });
    const run = await troupe.submit(typed, { n: 9 });
    // Ended, and its notify heard, before anyone asked: no wait was registered at submit.
    await vi.waitFor(async () => expect((await troupe.get(run.id))?.status).toBe("COMPLETED"));
    // Well under the 5 s after which a wait re-reads its record: the answer was kept.
    expect(await run.result({ timeout: "2 seconds" })).toBe(9);
  });

  it("a handler returning an Effect keeps its typed failure's message as Execution", async () => {
    const effectful = defineTask({ ...typedOptions("waits.effect"), handler: () => Effect.fail(new Error("refused")) });
    const troupe = await connect(server());
    await troupe.worker({ tasks: [effectful] });
    const error = await (await troupe.submit(effectful, { n: 1 })).result().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Execution);
    expect((error as Execution).message).toBe("refused");
  });
});
