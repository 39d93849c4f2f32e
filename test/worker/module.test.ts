/**
 * A pool's module as a TypeScript project names it: the README's `module: "./tasks.js"` with
 * only `tasks.ts` on disk. Troupe runs here as a user installs it, compiled to JavaScript (its
 * sources transpiled to a temporary folder), and the user's program runs under tsx: the
 * executors load the module the way the program does. Without a TypeScript loader, and for a
 * module that is not there, `troupe.worker(...)` rejects with an error saying what to pass.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import ts from "typescript";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { InvalidDefinition } from "../../src/index.js";
import { clients, useNatsServer } from "../helpers/nats.js";

const server = useNatsServer();
const { connect, closeAll } = clients();
afterEach(closeAll);

const root = join(import.meta.dirname, "..", "..");
const require = createRequire(import.meta.url);
/** tsx's command, as a user runs `npx tsx main.ts`. */
const tsxCli = join(dirname(require.resolve("tsx/package.json")), "dist", "cli.mjs");

/** Every `.ts` file under `dir`. */
const sources = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));

let built = "";
let project = "";
beforeAll(() => {
  built = mkdtempSync(join(tmpdir(), "troupe-built-"));
  for (const file of [...sources(join(root, "src")), ...sources(join(root, "machines"))]) {
    const out = join(built, relative(root, file)).replace(/\.ts$/, ".js");
    mkdirSync(dirname(out), { recursive: true });
    const js = ts.transpileModule(readFileSync(file, "utf8"), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
      fileName: file,
    }).outputText;
    writeFileSync(out, js);
  }
  symlinkSync(realpathSync(join(root, "node_modules")), join(built, "node_modules"));
  writeFileSync(join(built, "package.json"), JSON.stringify({ type: "module" }));
  project = join(built, "project");
  mkdirSync(project);
  writeFileSync(
    join(project, "tasks.ts"),
    `import { defineTask, Schema } from "../src/index.js";
export const where = defineTask({
  name: "typed.where",
  input: Schema.Struct({ n: Schema.Number }),
  output: Schema.Struct({ n: Schema.Number, pid: Schema.Number }),
  handler: ({ n }: { n: number }) => ({ n: n + 1, pid: process.pid }),
});
`,
  );
  // The README's example: the module named as it is imported, "./tasks.js".
  const main = (importTasks: boolean) => `import { Troupe } from "../src/index.js";
${importTasks ? `import { where } from "./tasks.js";` : ""}
const troupe = await Troupe.connect({ servers: process.env.NATS_URL });
for (const isolation of ["process", "thread"]) {
  try {
    const worker = await troupe.worker({ module: "./tasks.js", isolation, executors: 1 });
    ${importTasks ? `const run = await troupe.submit(where, { n: 1 });
    console.log(JSON.stringify({ isolation, result: await run.result({ timeout: 20_000 }) }));` : ""}
    await worker.stop();
  } catch (e) {
    console.log(JSON.stringify({ isolation, error: { _tag: e._tag, message: e.message } }));
  }
}
await troupe.close();
console.log(JSON.stringify({ survived: process.pid }));
`;
  writeFileSync(join(project, "main.ts"), main(true));
  writeFileSync(join(project, "main.mjs"), main(false));
}, 60_000);
afterAll(() => {
  if (built !== "") rmSync(built, { recursive: true, force: true });
});

/** Run `args` with node in the project folder; its stdout's JSON lines, once it exited (killed past 90 s). */
const runProgram = (args: string[]) =>
  new Promise<{ code: number | null; lines: Array<Record<string, unknown>>; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, args, {
      cwd: project,
      env: { ...process.env, NATS_URL: server().url, TROUPE_LOG_LEVEL: "error", TSX_DISABLE_CACHE: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      const lines = stdout
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      resolve({ code, lines, stderr });
    });
  });

describe("a pool's module in a TypeScript project", () => {
  it('under tsx, module "./tasks.js" loads tasks.ts in the executors, processes and threads alike', async () => {
    const { code, lines, stderr } = await runProgram([tsxCli, "main.ts"]);
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
    const byIsolation = new Map(lines.map((l) => [l.isolation, l]));
    expect(byIsolation.get("process")).toMatchObject({ result: { n: 2 } });
    expect(byIsolation.get("thread")).toMatchObject({ result: { n: 2 } });
    const survived = lines.find((l) => l.survived !== undefined)?.survived;
    // A process executor is another process; a thread runs in the program's.
    expect((byIsolation.get("process")?.result as { pid: number }).pid).not.toBe(survived);
    expect((byIsolation.get("thread")?.result as { pid: number }).pid).toBe(survived);
  }, 120_000);

  it("without a TypeScript loader, troupe.worker rejects saying what to run, and the program goes on", async () => {
    const { code, lines } = await runProgram(["main.mjs"]);
    expect(code).toBe(0);
    for (const isolation of ["process", "thread"]) {
      const line = lines.find((l) => l.isolation === isolation) as { error?: { _tag: string; message: string } } | undefined;
      expect(line?.error?._tag).toBe("InvalidDefinition");
      expect(line?.error?.message).toContain("tasks.ts is beside it, but this process runs without a TypeScript loader");
      expect(line?.error?.message).toContain("npx tsx main.ts");
    }
    expect(lines.some((l) => l.survived !== undefined)).toBe(true);
  }, 120_000);

  it("a module that is not there: troupe.worker rejects with an InvalidDefinition naming the path, nothing crashes", async () => {
    const troupe = await connect(server());
    for (const isolation of ["process", "thread"] as const) {
      const error = await troupe.worker({ module: "test/fixtures/no-such-tasks.js", isolation, executors: 1 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidDefinition);
      expect((error as InvalidDefinition).message).toContain(`module ${join(root, "test/fixtures/no-such-tasks.js")} does not exist`);
    }
    // The client still works after both rejections.
    expect(await troupe.workers()).toEqual([]);
  });
});
