/**
 * One error format for every verb: `troupe <verb>[ <subcommand>]: <_tag>: <message>` on
 * stderr, one line (a usage mistake adds the hint line), nothing on stdout, exit 1 (a
 * failure) or 2 (a usage mistake). And `troupe ls`'s paging hint keeps its filters.
 *
 * The walk calls the CLI's `main` in this process (its stdout, stderr and exit code caught):
 * fifty node processes would take minutes on a loaded two-core machine. `cli.test.ts` runs
 * the program itself, through the same `main`, for the format's end to end cases.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { defineTask, NonRetryableError, Schema } from "../../src/index.js";
import type { CliResult } from "../helpers/cli.js";
import { main } from "../../src/cli/main.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const sdk = clients();
// Every command of this file on its server (run from the repository, for the fixtures).
const natsUrl = process.env.NATS_URL;
beforeAll(() => {
  process.env.NATS_URL = server().url;
});
afterAll(() => {
  if (natsUrl === undefined) delete process.env.NATS_URL;
  else process.env.NATS_URL = natsUrl;
});
afterEach(async () => {
  await sdk.closeAll();
});

interface Case {
  readonly args: ReadonlyArray<string>;
  /** What the line names: `troupe get`, `troupe workflow run`, ... */
  readonly command: string;
  readonly tag: string;
  /** A piece of the message. */
  readonly says?: string;
}

const usage = (args: ReadonlyArray<string>, command: string, says?: string): Case => ({ args, command, tag: "UsageError", ...(says === undefined ? {} : { says }) });
const failure = (args: ReadonlyArray<string>, command: string, tag: string, says?: string): Case => ({ args, command, tag, ...(says === undefined ? {} : { says }) });

/** Every verb (and subcommand) with a missing or bad argument, or an id that names nothing. */
const CASES: ReadonlyArray<Case> = [
  usage(["dev", "--port", "x"], "troupe dev", "--port"),
  usage(["demo", "--tasks", "many"], "troupe demo", "--tasks"),
  failure(["worker", "test/fixtures/no-such-tasks.ts"], "troupe worker", "InvalidDefinition", "no-such-tasks"),
  usage(["worker", "--threads", "2", "--processes", "2"], "troupe worker", "--threads or --processes"),
  usage(["worker", "stop"], "troupe worker stop", "needs a worker id"),
  failure(["worker", "stop", "no-such-worker"], "troupe worker stop", "WorkerNotFound", "no-such-worker"),
  failure(["worker", "shutdown", "no-such-worker"], "troupe worker shutdown", "WorkerNotFound", "no-such-worker"),
  usage(["workers", "--connect-timeout", "soon"], "troupe workers", "--connect-timeout"),
  usage(["stats", "--replicas", "none"], "troupe stats", "--replicas"),
  usage(["logs", "--task"], "troupe logs", "--task"),
  usage(["scheduler", "--connect-timeout", "soon"], "troupe scheduler", "--connect-timeout"),
  usage(["schedule"], "troupe schedule", "use add, ls or rm"),
  usage(["schedule", "frob"], "troupe schedule", '"frob"'),
  usage(["schedule", "add", "nightly"], "troupe schedule add", "needs an id and a task name"),
  usage(["schedule", "add", "nightly", "math.add", "{nope"], "troupe schedule add", "not JSON"),
  usage(["schedule", "ls", "--connect-timeout", "soon"], "troupe schedule ls", "--connect-timeout"),
  usage(["schedule", "rm"], "troupe schedule rm", "needs a schedule id"),
  failure(["schedule", "rm", "no-such-schedule"], "troupe schedule rm", "ScheduleNotFound", "no schedule no-such-schedule"),
  failure(["pause", "bad task name!"], "troupe pause", "InvalidOption"),
  usage(["resume"], "troupe resume", "needs a task name or --queue"),
  failure(["resume", "never.paused"], "troupe resume", "NotPaused", "never.paused (queue default) was not paused"),
  usage(["submit"], "troupe submit", "needs a task name"),
  usage(["submit", "math.add", "{nope"], "troupe submit", "not JSON"),
  usage(["get"], "troupe get", "needs a task id"),
  failure(["get", "nope"], "troupe get", "TaskNotFound", "no task nope"),
  usage(["ls", "--status", "LOST"], "troupe ls", "--status"),
  usage(["retry"], "troupe retry", "needs a task id"),
  failure(["retry", "nope"], "troupe retry", "TaskNotFound", "nope"),
  usage(["history"], "troupe history", "needs a task id"),
  failure(["history", "nope"], "troupe history", "TaskNotFound", "no events of task nope"),
  usage(["cancel"], "troupe cancel", "needs a task id"),
  failure(["cancel", "nope"], "troupe cancel", "TaskNotFound", "no task nope"),
  usage(["coordinator", "--metrics-port", "port"], "troupe coordinator", "--metrics-port"),
  failure(["gateway", "--module", "test/fixtures/no-such-tasks.ts"], "troupe gateway", "InvalidDefinition", "no-such-tasks"),
  usage(["inspect", "--ui-port", "x"], "troupe inspect", "--ui-port"),
  usage(["workflow"], "troupe workflow", "use run, get or cancel"),
  usage(["workflow", "run"], "troupe workflow run", "needs a workflow file"),
  usage(["workflow", "run", "test/fixtures/no-such-flow.yaml"], "troupe workflow run", "cannot read"),
  usage(["workflow", "get"], "troupe workflow get", "needs a run id"),
  failure(["workflow", "get", "nope"], "troupe workflow get", "WorkflowNotFound", "no workflow run nope"),
  usage(["workflow", "cancel"], "troupe workflow cancel", "needs a run id"),
  failure(["workflow", "cancel", "nope"], "troupe workflow cancel", "WorkflowNotFound", "nope"),
  usage(["setup", "--auth", "test/fixtures/no-such-role.json"], "troupe setup", "--auth"),
  usage(["auth"], "troupe auth", "troupe auth init <dir>"),
  usage(["auth", "init"], "troupe auth init", "needs a directory"),
  usage(["config", "--concurrency", "0"], "troupe config", "--concurrency"),
  usage(["frobnicate"], "troupe frobnicate", 'unknown command "frobnicate"'),
  usage(["--frobnicate"], "troupe", "--frobnicate"),
];

/** `troupe <args>` through the CLI's `main`, here: what it wrote to stdout and stderr, and its exit code. */
const runMain = async (args: ReadonlyArray<string>): Promise<CliResult> => {
  let stdout = "";
  let stderr = "";
  const writes = { out: process.stdout.write, err: process.stderr.write };
  const catching = (add: (text: string) => void) =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      add(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString());
      const done = rest.find((r) => typeof r === "function") as (() => void) | undefined;
      done?.();
      return true;
    }) as typeof process.stdout.write;
  process.exitCode = undefined;
  process.stdout.write = catching((t) => (stdout += t));
  process.stderr.write = catching((t) => (stderr += t));
  try {
    await main([...args]);
  } finally {
    process.stdout.write = writes.out;
    process.stderr.write = writes.err;
  }
  const code = process.exitCode ?? 0;
  process.exitCode = undefined;
  return { code: Number(code), stdout, stderr };
};

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

describe("troupe's errors", () => {
  it("every verb's failure: one line `troupe <verb>: <Tag>: <message>` on stderr, nothing on stdout, exit 1 (2 for a usage mistake)", async () => {
    const wrong: string[] = [];
    for (const c of CASES) {
      const r = await runMain(c.args);
      const lines = r.stderr.split("\n");
      const isUsage = c.tag === "UsageError";
      const expected = isUsage ? 3 : 2; // the line, (the hint,) and the empty string after the last newline
      const ok =
        r.stdout === "" &&
        r.code === (isUsage ? 2 : 1) &&
        lines.length === expected &&
        lines.at(-1) === "" &&
        new RegExp(`^${escape(c.command)}: ${escape(c.tag)}: \\S`).test(lines[0]!) &&
        (c.says === undefined || lines[0]!.includes(c.says)) &&
        (!isUsage || lines[1] === "Run `troupe --help` for usage.");
      if (!ok) wrong.push(`troupe ${c.args.join(" ")}: exit ${r.code}, stdout ${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}`);
    }
    expect(wrong).toEqual([]);
  }, 300_000);

  it("`troupe ls`'s paging hint keeps every filter, and running it shows the next page of the same tasks", async () => {
    const troupe = await sdk.connect(server());
    const broken = defineTask({
      name: "errors.broken",
      input: Schema.Struct({ n: Schema.Number }),
      output: Schema.Void,
      handler: async ({ n }) => {
        throw new NonRetryableError(`broken ${n}`);
      },
    });
    const other = defineTask({ name: "errors.other", input: Schema.Struct({}), output: Schema.Void, handler: async () => {
      throw new NonRetryableError("other");
    } });
    await troupe.worker({ tasks: [broken, other], concurrency: 4 });
    const runs = await Promise.all([0, 1, 2].map((n) => troupe.submit(broken, { n })));
    const others = await Promise.all([0, 1].map(() => troupe.submit(other, {})));
    for (const run of [...runs, ...others]) await expect(run.result({ timeout: 20_000 })).rejects.toMatchObject({ _tag: "Execution" });

    const first = await runMain(["ls", "--status", "failed", "--task", "errors.broken", "--since", "1h", "--limit", "2"]);
    expect(first.code, first.stderr).toBe(0);
    const hint = first.stdout.trimEnd().split("\n").at(-1)!;
    expect(hint).toMatch(/^more: troupe ls --status FAILED --task errors\.broken --since \d{4}-\d\d-\d\dT\S+Z --limit 2 --cursor \S+$/);
    const firstIds = runs.map((r) => r.id).filter((id) => first.stdout.includes(id));
    expect(firstIds).toHaveLength(2);

    const next = await runMain(hint.slice("more: troupe ".length).split(" "));
    expect(next.code, next.stderr).toBe(0);
    // The third task of the same filter, and nothing of the other type.
    expect(runs.map((r) => r.id).filter((id) => next.stdout.includes(id) && !firstIds.includes(id))).toHaveLength(1);
    for (const o of others) expect(next.stdout + first.stdout).not.toContain(o.id);
    expect(next.stdout).not.toContain("more:");
  }, 60_000);
});
