/** `console.log` of a handle prints its class and a few fields on one line, not the client's internals. */
import { inspect } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { defineWorkflow, Schema } from "../../src/index.js";
import { upper } from "../fixtures/tasks.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const shout = defineWorkflow({
  name: "inspect.shout",
  input: Schema.Struct({ text: Schema.String }),
  steps: { up: { task: upper, input: { text: "${input.text}" } } },
});

describe("printing a handle", () => {
  it("TaskRun, WorkflowRun, Troupe and Worker print one short line each", async () => {
    const troupe = await connect(server());
    const worker = await troupe.worker({ tasks: [upper] });
    const pool = await troupe.worker({ module: "test/fixtures/pool-tasks.ts", isolation: "thread", executors: 1 });
    // Before any task: both are ready and run nothing.
    expect(inspect(worker)).toBe(`Worker { id: '${worker.id}', state: 'ready', tasks: [ 'text.upper' ], running: 0 }`);
    expect(inspect(pool)).toMatch(new RegExp(`^Worker \\{ id: '${pool.id}', state: 'ready', tasks: \\[ 'pool\\.where', [^\n]*\\], running: 0, isolation: 'thread' \\}$`));
    expect(inspect(troupe)).toBe(`Troupe { url: '${troupe.url}', workers: 2 }`);
    const run = await troupe.submit(upper, { text: "a" });
    const flow = await troupe.start(shout, { text: "b" });

    expect(inspect(run)).toBe(`TaskRun { id: '${run.id}', task: 'text.upper', queue: 'default' }`);
    expect(inspect(flow)).toBe(`WorkflowRun { id: '${flow.id}', workflow: 'inspect.shout' }`);
    expect(inspect(troupe.workflowRun(undefined, flow.id))).toBe(`WorkflowRun { id: '${flow.id}' }`);
    // Inside another value, and past the inspection's depth.
    expect(inspect({ run }, { breakLength: Infinity })).toBe(`{ run: TaskRun { id: '${run.id}', task: 'text.upper', queue: 'default' } }`);
    expect(inspect({ a: run }, { depth: 0 })).toBe("{ a: [TaskRun] }");
    await run.result({ timeout: 20_000 });
    await worker.stop();
    await pool.stop();
    await troupe.close();
    expect(inspect(troupe)).toBe(`Troupe { url: '${troupe.url}', workers: 0, closed: true }`);
  });
});
