/** Pausing work against a real server: new starts held, running ones finish, resume releases them. */
import { afterEach, describe, expect, it } from "vitest";
import { defineTask, InvalidOption, Schema } from "../../src/index.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { runCli } from "../helpers/cli.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const echo = (name: string, queue?: string) =>
  defineTask({ name, ...(queue === undefined ? {} : { queue }), input: Schema.Struct({ n: Schema.Number }), output: Schema.Number, handler: async ({ n }) => n });

/** Polls a condition the worker reports (its stats), never a fixed sleep. */
const until = async (check: () => boolean, timeoutMs = 10_000) => {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe("pause", () => {
  it("holds new starts of a paused type while others run; resume releases them", async () => {
    const troupe = await connect(server());
    const held = echo("pause.held");
    const free = echo("pause.free");
    const worker = await troupe.worker({ tasks: [held, free], concurrency: 4 });
    await troupe.pause(held, { reason: "deploying" });
    await until(() => worker.stats.paused.includes("default.pause.held"));
    expect(await troupe.paused()).toEqual([expect.objectContaining({ queue: "default", task: "pause.held", reason: "deploying" })]);
    const waiting = await troupe.submit(held, { n: 1 });
    // The same worker keeps running other work: once this one is done, the held one has had every chance to start.
    for (let i = 0; i < 5; i++) expect(await (await troupe.submit(free, { n: i })).result({ timeout: 10_000 })).toBe(i);
    expect((await waiting.get()).status).toBe("QUEUED");
    expect((await troupe.workerStats()).find((w) => w.id === worker.id)?.paused).toEqual(["default.pause.held"]);
    expect(await troupe.resume(held)).toBe(true);
    expect(await waiting.result({ timeout: 10_000 })).toBe(1);
    expect(await troupe.resume(held)).toBe(false);
  });

  it("pauses a whole queue from the CLI, and a worker started while it is paused waits too", async () => {
    const troupe = await connect(server());
    const a = echo("pause.a", "batch");
    const other = echo("pause.other");
    const env = { NATS_URL: server().url };
    const paused = await runCli(["pause", "--queue", "batch", "--reason", "nightly"], env);
    expect(paused.code).toBe(0);
    expect(paused.stdout).toContain("paused queue batch");
    const listed = await runCli(["pause"], env);
    expect(listed.stdout).toContain("queue batch");
    const worker = await troupe.worker({ tasks: [a, other], concurrency: 2 });
    expect(worker.stats.paused).toEqual(["batch"]);
    const run = await troupe.submit(a, { n: 7 });
    expect(await (await troupe.submit(other, { n: 1 })).result({ timeout: 10_000 })).toBe(1);
    expect((await run.get()).status).toBe("QUEUED");
    const resumed = await runCli(["resume", "--queue", "batch"], env);
    expect(resumed.code).toBe(0);
    expect(await run.result({ timeout: 10_000 })).toBe(7);
    const again = await runCli(["resume", "--queue", "batch"], env);
    expect(again.code).toBe(1);
    expect(again.stdout).toBe("");
    expect(again.stderr).toBe("troupe resume: NotPaused: queue batch was not paused\n");
  });

  it("refuses a target that is not a queue or task name", async () => {
    const troupe = await connect(server());
    await expect(troupe.pause({ queue: "no.dots" })).rejects.toBeInstanceOf(InvalidOption);
    await expect(troupe.pause({ queue: "default", task: "bad name" })).rejects.toBeInstanceOf(InvalidOption);
  });
});
