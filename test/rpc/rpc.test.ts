/**
 * JSON-RPC 2.0 on `troupe.rpc`: plain NATS requests, as `nats req troupe.rpc '{...}'` sends
 * them, answered by workers and gateways (the `troupe-rpc` micro service).
 */
import { afterEach, describe, expect, it } from "vitest";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { defineProtocol, defineTask, InvalidDefinition, NonRetryableError, Schema, type Troupe } from "../../src/index.js";
import { connectionOf, idempotentId } from "../../src/internals.js";
import { loadTasks } from "../../src/tasks-module.js";
import { killCliChildren, spawnCli, runCli, waitForOutput } from "../helpers/cli.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { recordWhere } from "../helpers/records.js";
import { gates } from "../helpers/handlers.js";

const server = useNatsServer();
const sdk = clients();
const raw: NatsConnection[] = [];
afterEach(async () => {
  killCliChildren();
  await sdk.closeAll();
  await Promise.all(raw.splice(0).map((nc) => nc.close()));
});

const add = defineTask({
  name: "math.add",
  input: Schema.Struct({ a: Schema.Number, b: Schema.Number }),
  output: Schema.Number,
  handler: async ({ a, b }) => a + b,
});
const negate = defineTask({
  name: "math.negate",
  input: Schema.Struct({ x: Schema.Number }),
  output: Schema.Number,
  handler: async ({ x }) => -x,
});
const math = defineProtocol({ name: "math", version: "1.0.0", tasks: [add, negate] });

const fail = defineTask({
  name: "demo.fail",
  input: Schema.Struct({ why: Schema.String }),
  output: Schema.Null,
  handler: async ({ why }) => {
    throw new NonRetryableError(why);
  },
});

/** Gates a test opens: a `demo.gate` task runs until its gate opens. */
const { gate, opened } = gates();
const gated = defineTask({
  name: "demo.gate",
  input: Schema.Struct({ key: Schema.String }),
  output: Schema.String,
  handler: async ({ key }) => {
    await opened(key);
    return `opened ${key}`;
  },
});

const tasks = [add, negate, fail, gated];

const natsClient = async () => {
  const nc = await connect({ servers: server().url });
  raw.push(nc);
  return nc;
};

/** A raw request on `troupe.rpc`: the reply's JSON, or `undefined` for an empty reply. */
const call = async (nc: NatsConnection, body: unknown, timeout = 60_000): Promise<any> => {
  const msg = await nc.request("troupe.rpc", typeof body === "string" ? body : JSON.stringify(body), { timeout });
  return msg.data.length === 0 ? undefined : JSON.parse(msg.string());
};

const request = (id: number | string, method: string, params?: unknown) => ({ jsonrpc: "2.0", id, method, ...(params === undefined ? {} : { params }) });

describe("JSON-RPC on troupe.rpc", () => {
  it("answers a raw NATS request with the task's output, as a durable task, and is listed as the troupe-rpc micro service", async () => {
    const troupe = await sdk.connect(server());
    const worker = await troupe.worker({ tasks });
    const nc = await natsClient();

    expect(await call(nc, '{"jsonrpc":"2.0","id":1,"method":"math.add","params":{"a":1,"b":2}}')).toEqual({ jsonrpc: "2.0", id: 1, result: 3 });
    expect(await call(nc, request("x-1", "math.negate", { x: 4 }))).toEqual({ jsonrpc: "2.0", id: "x-1", result: -4 });
    expect(math.tasks.map((t) => t.name)).toEqual(["math.add", "math.negate"]);

    // A normal task: with an idempotency key in `_meta`, its record is under the key's id.
    expect(await call(nc, request(2, "math.add", { a: 20, b: 22, _meta: { idempotencyKey: "k-1" } }))).toMatchObject({ result: 42 });
    expect(await troupe.get(idempotentId(add, "k-1"))).toMatchObject({ status: "COMPLETED", task: "math.add", input: { a: 20, b: 22 }, output: 42 });

    const info = JSON.parse((await nc.request("$SRV.INFO.troupe-rpc", undefined, { timeout: 10_000 })).string());
    expect(info).toMatchObject({
      type: "io.nats.micro.v1.info_response",
      name: "troupe-rpc",
      id: worker.id,
      metadata: { role: "worker", protocols: "math@1.0.0" },
      endpoints: [{ name: "rpc", subject: "troupe.rpc", queue_group: "troupe-rpc" }],
    });
  });

  it("answers invalid params (naming the field), unknown methods, invalid requests and parse errors with the standard codes", async () => {
    const troupe = await sdk.connect(server());
    await troupe.worker({ tasks });
    const nc = await natsClient();

    const invalid = await call(nc, request(1, "math.add", { a: 1 }));
    expect(invalid).toMatchObject({ jsonrpc: "2.0", id: 1, error: { code: -32602, message: "Invalid params at b", data: { _tag: "InvalidInput", path: ["b"], task: "math.add" } } });
    expect(invalid.error.data.message).toContain("b");
    const wrongType = await call(nc, request(2, "math.add", { a: 1, b: "two" }));
    expect(wrongType.error).toMatchObject({ code: -32602, data: { path: ["b"] } });
    const badMeta = await call(nc, request(3, "math.add", { a: 1, b: 2, _meta: { timeout: "soon" } }));
    expect(badMeta.error).toMatchObject({ code: -32602, data: { path: ["_meta", "timeout"] } });
    expect(badMeta.error.data.message).toContain("_meta.timeout");

    expect(await call(nc, request(4, "no.such.method"))).toEqual({ jsonrpc: "2.0", id: 4, error: { code: -32601, message: "Method not found", data: { method: "no.such.method" } } });
    expect((await call(nc, request(5, "rpc.other"))).error.code).toBe(-32601);
    expect((await call(nc, request(6, "not a name!"))).error.code).toBe(-32601);

    const wrongVersion = await call(nc, { jsonrpc: "1.0", id: 7, method: "math.add" });
    expect(wrongVersion).toMatchObject({ id: 7, error: { code: -32600, message: "Invalid Request" } });
    expect(await call(nc, { jsonrpc: "2.0", id: 8, method: 1 })).toMatchObject({ id: 8, error: { code: -32600 } });
    expect(await call(nc, { jsonrpc: "2.0", id: 9, method: "math.add", params: "a string" })).toMatchObject({ id: 9, error: { code: -32600 } });
    expect(await call(nc, [])).toMatchObject({ id: null, error: { code: -32600 } });

    // Bounds: a batch of more than 100 requests is refused whole (nothing of it submitted), and so is a wait longer than 10 minutes.
    const tooMany = await call(nc, Array.from({ length: 101 }, (_, i) => request(100 + i, "math.add", { a: i, b: 0, _meta: { idempotencyKey: `too-many-${i}` } })));
    expect(tooMany).toMatchObject({ jsonrpc: "2.0", id: null, error: { code: -32600, message: "Invalid Request", data: { max: 100 } } });
    expect(await troupe.get(idempotentId(add, "too-many-0"))).toBeUndefined();
    const longWait = await call(nc, request(11, "math.add", { a: 1, b: 2, _meta: { timeout: "11 minutes", idempotencyKey: "long-wait" } }));
    expect(longWait).toMatchObject({ id: 11, error: { code: -32602, data: { path: ["_meta", "timeout"], max: 600_000 } } });
    expect(await troupe.get(idempotentId(add, "long-wait"))).toBeUndefined();
    // At the bounds, both are served.
    const hundred = await call(nc, Array.from({ length: 100 }, (_, i) => request(200 + i, "math.add", { a: i, b: 1 })));
    expect(hundred).toHaveLength(100);
    expect(hundred[99]).toMatchObject({ id: 299, result: 100 });
    expect(await call(nc, request(12, "math.add", { a: 1, b: 2, _meta: { timeout: "10 minutes" } }))).toMatchObject({ id: 12, result: 3 });

    expect(await call(nc, '{"jsonrpc":"2.0","id":10,"method"')).toMatchObject({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error" } });
    expect(await call(nc, "")).toMatchObject({ id: null, error: { code: -32700 } });
  });

  it("answers a failed task with -32000 carrying its _tag and task id, and a wait past its bound with -32001 and the task id", async () => {
    const troupe = await sdk.connect(server());
    await troupe.worker({ tasks, concurrency: 2 });
    const nc = await natsClient();

    const failed = await call(nc, request(1, "demo.fail", { why: "no luck" }));
    expect(failed).toMatchObject({ id: 1, error: { code: -32000, message: "Task failed", data: { _tag: "Execution", message: "no luck", status: "FAILED", task: "demo.fail" } } });
    expect(await troupe.get(failed.error.data.taskId)).toMatchObject({ status: "FAILED", error: { _tag: "Execution" } });

    // The gate stays closed: the task cannot end within the request's bound.
    const open = gate("slow");
    const unfinished = await call(nc, request(2, "demo.gate", { key: "slow", _meta: { timeout: 300 } }));
    expect(unfinished).toMatchObject({ id: 2, error: { code: -32001, data: { task: "demo.gate", reason: "timeout", timeout: 300 } } });
    const id = unfinished.error.data.taskId as string;
    open();
    expect(await recordWhere(troupe, id, (r) => r.status === "COMPLETED")).toMatchObject({ output: "opened slow" });

    // A cancelled task is a -32000 too, its tag Cancelled.
    gate("cancelled");
    const pending = call(nc, request(3, "demo.gate", { key: "cancelled", _meta: { idempotencyKey: "to-cancel" } }));
    const cancelId = idempotentId(gated, "to-cancel");
    await recordWhere(troupe, cancelId, (r) => r.status === "RUNNING");
    await troupe.cancel(cancelId);
    expect(await pending).toMatchObject({ id: 3, error: { code: -32000, message: "Task cancelled", data: { _tag: "Cancelled", status: "CANCELLED", taskId: cancelId } } });
  });

  it("answers a batch with an array of responses, none for its notifications; an all-notification batch gets an empty reply", async () => {
    const troupe = await sdk.connect(server());
    await troupe.worker({ tasks, concurrency: 4 });
    const nc = await natsClient();

    const replies = await call(nc, [
      request(1, "math.add", { a: 1, b: 2 }),
      { jsonrpc: "2.0", method: "math.add", params: { a: 5, b: 5, _meta: { idempotencyKey: "batch-note" } } },
      { foo: "bar" },
      request(3, "nope"),
      request("four", "math.negate", { x: 1 }),
    ]);
    expect(replies).toEqual([
      { jsonrpc: "2.0", id: 1, result: 3 },
      { jsonrpc: "2.0", id: null, error: expect.objectContaining({ code: -32600 }) },
      { jsonrpc: "2.0", id: 3, error: expect.objectContaining({ code: -32601 }) },
      { jsonrpc: "2.0", id: "four", result: -1 },
    ]);
    expect(await troupe.run(add, idempotentId(add, "batch-note")).result({ timeout: "60 seconds" })).toBe(10);

    const none = await call(nc, [
      { jsonrpc: "2.0", method: "math.add", params: { a: 1, b: 1, _meta: { idempotencyKey: "all-notes-1" } } },
      { jsonrpc: "2.0", method: "math.add", params: { a: 2, b: 2, _meta: { idempotencyKey: "all-notes-2" } } },
    ]);
    expect(none).toBeUndefined();
    expect(await troupe.run(add, idempotentId(add, "all-notes-1")).result({ timeout: "60 seconds" })).toBe(2);
    expect(await troupe.run(add, idempotentId(add, "all-notes-2")).result({ timeout: "60 seconds" })).toBe(4);
  });

  it("enqueues a notification without waiting for its task, with or without a reply subject", async () => {
    const troupe = await sdk.connect(server());
    await troupe.worker({ tasks, concurrency: 2 });
    const nc = await natsClient();

    const open = gate("note");
    // The reply comes while the task still waits on its gate: nothing waited for it.
    const reply = await nc.request("troupe.rpc", JSON.stringify({ jsonrpc: "2.0", method: "demo.gate", params: { key: "note", _meta: { idempotencyKey: "note" } } }), {
      timeout: 60_000,
    });
    expect(reply.data.length).toBe(0);
    const id = idempotentId(gated, "note");
    expect((await recordWhere(troupe, id, (r) => r.status === "RUNNING")).status).toBe("RUNNING");
    open();
    expect(await troupe.run(gated, id).result({ timeout: "60 seconds" })).toBe("opened note");

    // Published with no reply subject (`nats pub troupe.rpc ...`): the task runs all the same.
    nc.publish("troupe.rpc", JSON.stringify({ jsonrpc: "2.0", method: "math.add", params: { a: 3, b: 4, _meta: { idempotencyKey: "published" } } }));
    expect(await recordWhere(troupe, idempotentId(add, "published"), (r) => r.status === "COMPLETED")).toMatchObject({ output: 7 });
  });

  it("lists every method with its params and result as JSON Schema in rpc.discover, with protocols", async () => {
    const troupe = await sdk.connect(server());
    await troupe.worker({ tasks });
    // Another client's worker, serving tasks this one does not know, without RPC of its own.
    const other = await sdk.connect(server());
    const [multiply] = (await loadTasks("test/fixtures/rpc-tasks.ts")).filter((t) => t.name === "calc.multiply");
    await other.worker({ tasks: [multiply!], rpc: false });
    const nc = await natsClient();

    const discovered = await call(nc, request(1, "rpc.discover"));
    expect(discovered).toMatchObject({ jsonrpc: "2.0", id: 1, result: { openrpc: expect.any(String), info: { title: "troupe-rpc" } } });
    const doc = discovered.result;
    const byName = new Map<string, any>(doc.methods.map((m: any) => [m.name, m]));
    expect([...byName.keys()]).toEqual(expect.arrayContaining(["math.add", "math.negate", "demo.fail", "demo.gate", "calc.multiply"]));
    const addMethod = byName.get("math.add");
    expect(addMethod).toMatchObject({
      paramStructure: "by-name",
      params: [
        { name: "a", required: true, schema: expect.objectContaining({ anyOf: expect.arrayContaining([{ type: "number" }]) }) },
        { name: "b", required: true, schema: expect.objectContaining({ anyOf: expect.arrayContaining([{ type: "number" }]) }) },
      ],
      result: { name: "result", schema: expect.objectContaining({ anyOf: expect.arrayContaining([{ type: "number" }]) }) },
      "x-troupe": { task: "math.add", queue: "default", protocol: "math", version: "1.0.0" },
    });
    expect(byName.get("demo.gate")).toMatchObject({ params: [{ name: "key", required: true, schema: { type: "string" } }], result: { schema: { type: "string" } } });
    expect(byName.get("calc.multiply")["x-troupe"]).toMatchObject({ protocol: "calc", version: "2.1.0" });
    expect(doc["x-troupe-protocols"]).toEqual(
      expect.arrayContaining([
        { name: "math", version: "1.0.0", methods: ["math.add", "math.negate"] },
        { name: "calc", version: "2.1.0", methods: ["calc.multiply"] },
      ]),
    );
    // The directory holds what the workers advertised.
    const entry = await connectionOf(troupe).methods.get("calc.multiply");
    expect(entry?.json()).toMatchObject({ method: "calc.multiply", task: "calc.multiply", queue: "default", protocol: "calc", version: "2.1.0", params: { type: "object" } });
  });

  it("answers through a gateway for a method served by another client's worker (the method directory), and a stopped gateway answers what it waited for", async () => {
    const runner = await sdk.connect(server());
    await runner.worker({ tasks, rpc: false, concurrency: 2 });
    const front = await sdk.connect(server());
    const gateway = await front.gateway();
    const nc = await natsClient();

    expect(await call(nc, request(1, "math.add", { a: 1, b: 2 }))).toEqual({ jsonrpc: "2.0", id: 1, result: 3 });
    // The gateway does not know the schema: the worker checks the params, and its InvalidInput is -32602.
    const invalid = await call(nc, request(2, "math.add", { a: 1 }));
    expect(invalid).toMatchObject({ id: 2, error: { code: -32602, message: "Invalid params at b", data: { _tag: "InvalidInput", path: ["b"], task: "math.add" } } });
    expect(await runner.get(invalid.error.data.taskId)).toMatchObject({ status: "FAILED", error: { _tag: "InvalidInput" } });
    expect((await call(nc, request(3, "never.advertised"))).error.code).toBe(-32601);

    const info = JSON.parse((await nc.request(`$SRV.PING.troupe-rpc.${gateway.id}`, undefined, { timeout: 10_000 })).string());
    expect(info).toMatchObject({ name: "troupe-rpc", id: gateway.id, metadata: { role: "gateway" } });

    // Stopping answers the call still waiting (its task goes on) and leaves nothing listening.
    const open = gate("stop");
    const pending = call(nc, request(4, "demo.gate", { key: "stop", _meta: { idempotencyKey: "stop" } }));
    const id = idempotentId(gated, "stop");
    await recordWhere(runner, id, (r) => r.status === "RUNNING");
    await gateway.stop();
    expect(await pending).toMatchObject({ id: 4, error: { code: -32001, data: { taskId: id, reason: "stopped" } } });
    await expect(nc.request("troupe.rpc", JSON.stringify(request(5, "math.add", { a: 1, b: 1 })), { timeout: 10_000 })).rejects.toThrow();
    open();
    expect(await runner.run(gated, id).result({ timeout: "60 seconds" })).toBe("opened stop");
  });

  it("refuses bad protocols and rpc options; a module exporting only a protocol gives its tasks", async () => {
    expect(() => defineProtocol({ name: "again", version: "1", tasks: [add] })).toThrow(InvalidDefinition);
    expect(() => defineProtocol({ name: "v", version: "not a version", tasks: [fail] })).toThrow(/version/);
    expect(() => defineProtocol({ name: "empty", version: "1", tasks: [] })).toThrow(/non-empty/);
    expect(() => defineProtocol({ name: "bad name!", version: "1", tasks: [fail] })).toThrow(InvalidDefinition);
    const loaded = await loadTasks("test/fixtures/rpc-tasks.ts");
    expect(loaded.map((t) => t.name).sort()).toEqual(["calc.multiply", "calc.negate"]);

    const troupe = await sdk.connect(server());
    await expect(troupe.worker({ tasks: [add], rpc: { timeot: 1 } as never })).rejects.toThrow(/rpc\.timeot/);
    await expect(troupe.worker({ tasks: [add], rpc: { timeout: "soon" as never } })).rejects.toThrow(/rpc\.timeout/);
    await expect(troupe.gateway({ timeout: -1 })).rejects.toThrow(/timeout/);
  });

  it("serves `troupe gateway` from the CLI for another process's tasks, checking params with --module", { timeout: 120_000 }, async () => {
    const help = await runCli(["--help"]);
    expect(help.stdout).toContain("troupe gateway");

    const runner: Troupe = await sdk.connect(server());
    const loaded = await loadTasks("test/fixtures/rpc-tasks.ts");
    await runner.worker({ tasks: [...loaded, add], rpc: false });
    const child = spawnCli(["gateway", "--module", "test/fixtures/rpc-tasks.ts", "--timeout", "60s"], { NATS_URL: server().url });
    const line = await waitForOutput(child, /troupe gateway: /, 60_000);
    expect(line).toContain("troupe.rpc");
    const nc = await natsClient();

    expect(await call(nc, request(1, "calc.multiply", { x: 6, y: 7 }))).toEqual({ jsonrpc: "2.0", id: 1, result: 42 });
    // Known from --module: checked in the gateway, nothing submitted.
    expect(await call(nc, request(2, "calc.negate", {}))).toMatchObject({ error: { code: -32602, data: { _tag: "InvalidInput", path: ["x"] } } });
    // Known only from the directory.
    expect(await call(nc, request(3, "math.add", { a: 2, b: 3 }))).toMatchObject({ result: 5 });

    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
