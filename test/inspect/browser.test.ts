/**
 * The inspector's page in a real browser (headless Chromium through playwright-core) on a
 * running system: a nats-server, a worker, a coordinator and the inspector with actions,
 * as `troupe inspect` starts it. Screenshots go to test-artifacts/; two of them are the
 * README's (docs/images/).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Page } from "playwright-core";
import { pino } from "pino";
import { defineTask, defineWorkflow, Schema, Troupe } from "../../src/index.js";
import { connectionOf, startInspector, type Inspector } from "../../src/internals.js";
import { clients, useNatsServer } from "../helpers/nats.js";
import { recordWhere } from "../helpers/records.js";
import { openPage, screenshot, useBrowser } from "../helpers/browser.js";

const server = useNatsServer();
const browser = useBrowser();
const { closeAll } = clients();

/** Handlers of `inspect.hold` wait here until the test releases them (or the attempt is cancelled). */
const gates = new Map<string, () => void>();
const hold = defineTask({
  name: "inspect.hold",
  input: Schema.Struct({ key: Schema.String }),
  output: Schema.String,
  handler: ({ key }, { signal }) =>
    new Promise<string>((resolve) => {
      gates.set(key, () => resolve("released"));
      signal.addEventListener("abort", () => resolve("aborted"));
    }),
});
const echo = defineTask({ name: "inspect.echo", input: Schema.Struct({ s: Schema.String }), output: Schema.String, handler: async ({ s }) => s });
const boom = defineTask({
  name: "inspect.boom",
  input: Schema.Struct({ s: Schema.String }),
  output: Schema.String,
  handler: async ({ s }) => {
    throw new Error(`cannot parse ${s}`);
  },
});
/** Writes a log line through `ctx.log` (TROUPE_LOGS), then returns. */
const chatty = defineTask({
  name: "inspect.chatty",
  input: Schema.Struct({ s: Schema.String }),
  output: Schema.String,
  handler: async ({ s }, { log }) => {
    log.info({ detail: s }, `handler says ${s}`);
    return s;
  },
});
/** No worker serves it: its work waits on its queue. */
const nobody = defineTask({ name: "inspect.nobody", queue: "overview", input: Schema.Struct({ s: Schema.String }), output: Schema.String, handler: async ({ s }) => s });
/** `parse` fails, so `store` is skipped; `notify` runs beside it; no worker serves `archive`'s task, so it waits. */
const pipeline = defineWorkflow({
  name: "inspect.pipeline",
  input: Schema.Struct({ s: Schema.String }),
  failurePolicy: "continue",
  steps: {
    fetch: { task: echo, input: { s: "${input.s}" } },
    parse: { task: boom, after: ["fetch"], input: { s: "${fetch}" } },
    store: { task: echo, after: ["parse"], input: { s: "${parse}" } },
    notify: { task: echo, after: ["fetch"], input: { s: "${fetch}" } },
    archive: { task: "inspect.unserved", after: ["fetch"], input: { s: "${fetch}" } },
  },
});

let troupe: Troupe;
let inspector: Inspector;
beforeAll(async () => {
  // Handlers log at the worker's level: info here (the worker's own lines go nowhere).
  troupe = await Troupe.connect({ servers: server().url, logger: pino({ level: "info" }, pino.destination("/dev/null")) });
  await troupe.worker({ tasks: [hold, echo, boom, chatty], concurrency: 4 });
  await troupe.coordinator();
  const t = troupe;
  // What `troupe inspect` gives the page: the SDK's calls.
  inspector = await startInspector(connectionOf(t), {
    actions: {
      retry: (id) => t.retry(id),
      cancel: (id) => t.cancel(id),
      cancelWorkflow: (id) => t.cancelWorkflow(id),
      drain: (id) => t.controlWorker(id, "drain"),
    },
  });
}, 90_000);
afterAll(async () => {
  for (const release of gates.values()) release();
  await inspector?.close();
  await troupe?.close();
  await closeAll();
}, 60_000);

const lit = (state: string) => `#machine [data-state="${state}"][aria-current="true"]`;

/** Opens the inspector at `hash` and waits for it to have loaded. */
const open = async (hash = "") => {
  const tab = await openPage(browser(), { width: 1600, height: 960 });
  // The address troupe inspect prints, with its token (kept in a cookie for the page's own requests).
  await tab.page.goto(`${inspector.link}${hash}`);
  await tab.page.locator("body[data-ready=true]").waitFor();
  return tab;
};

/** A held task, RUNNING on the worker, its handler waiting. */
const running = async (key: string) => {
  const run = await troupe.submit(hold, { key });
  await recordWhere(troupe, run.id, (r) => r.status === "RUNNING");
  await expect.poll(() => gates.has(key), { timeout: 30_000 }).toBe(true);
  return run;
};

const hashOf = (page: Page) => new URL(page.url()).hash;

const litStates = (page: Page) =>
  page.locator('#machine [aria-current="true"]').evaluateAll((els) => els.map((e) => e.getAttribute("data-state")));

describe("inspector in a browser", () => {
  it("lights a running task's RUNNING.executing at every level; a history row travels back; live returns", async () => {
    const run = await running("lights");
    const { page, errors, close } = await open(`#task:${run.id}`);
    try {
      await page.locator(lit("RUNNING.executing")).waitFor();
      await page.locator(lit("RUNNING")).waitFor();
      expect((await litStates(page)).sort()).toEqual(["RUNNING", "RUNNING.executing"]);
      await expect.poll(() => page.locator(`#machine [data-state="RUNNING.executing"]`).getAttribute("class")).toContain("lit");
      // Arrows with labels, the final states double-bordered.
      expect(await page.locator("#machine .edge polyline").count()).toBeGreaterThan(10);
      expect(await page.locator("#machine .edge text", { hasText: "EXECUTED [succeeded]" }).count()).toBe(1);
      expect(await page.locator('#machine [data-state="LOST"].final rect.inner').count()).toBe(1);
      await expect.poll(() => page.locator("#title").textContent()).toContain("inspect.hold");

      // History: a header row, one row per event, each at the time it was stored.
      expect(await page.locator("#history thead th").allTextContents()).toEqual(["Time", "Event", "State", "Detail"]);
      const history = await troupe.history(run.id);
      const started = history.find((e) => e.event === "started")!;
      const queued = history.find((e) => e.event === "queued")!;
      await page.locator(`#history tr[data-seq="${started.seq}"]`).waitFor();
      const times = await page.locator("#history tbody tr td.time").allTextContents();
      expect(times.length).toBe(2);
      for (const t of times) expect(t).toMatch(/^\d\d:\d\d:\d\d\.\d{3}$/);
      expect(await page.locator(`#history tr[data-seq="${started.seq}"] td.state`).textContent()).toBe("RUNNING.executing");
      await screenshot(page, "inspector-task-running");

      // Time travel: the queued event lights QUEUED and shows the record as it was then.
      await page.locator(`#history tr[data-seq="${queued.seq}"]`).click();
      await page.locator(lit("QUEUED")).waitFor();
      expect(await litStates(page)).toEqual(["QUEUED"]);
      await expect.poll(() => page.locator(`#history tr[data-seq="${queued.seq}"]`).getAttribute("class")).toContain("selected");
      expect(JSON.parse((await page.locator("#record").textContent()) ?? "{}").status).toBe("QUEUED");
      expect(hashOf(page)).toBe(`#task:${run.id}@${queued.seq}`);
      await screenshot(page, "inspector-task-time-travel");

      await page.locator("#live").click();
      await page.locator(lit("RUNNING.executing")).waitFor();
      expect(JSON.parse((await page.locator("#record").textContent()) ?? "{}").status).toBe("RUNNING");

      // Live: the handler returns and the page, fed by the event stream, lights COMPLETED.
      gates.get("lights")!();
      expect(await run.result()).toBe("released");
      await page.locator(lit("COMPLETED")).waitFor();
      await expect.poll(() => page.locator("#history tbody tr").count()).toBe(3);
      expect(await page.locator('#history tbody tr[data-event="completed"] td.event').textContent()).toContain("completed");
      expect(errors()).toEqual([]);
    } finally {
      await close();
    }
  }, 120_000);

  it("cancels a running task from the page, after its confirmation dialog", async () => {
    const run = await running("cancel");
    const { page, errors, close } = await open(`#task:${run.id}`);
    try {
      await page.locator(lit("RUNNING.executing")).waitFor();
      await page.locator('#actions [data-action="cancel"]').click();
      const dialog = page.locator("dialog#confirm");
      await dialog.waitFor();
      expect(await dialog.textContent()).toContain(run.id);
      // Nothing happens before the confirmation.
      expect((await troupe.get(run.id))?.status).toBe("RUNNING");
      await screenshot(page, "inspector-cancel-dialog");
      await dialog.locator("[data-confirm]").click();
      await expect.poll(async () => (await troupe.get(run.id))?.status, { timeout: 30_000 }).toBe("CANCELLED");
      await page.locator(lit("CANCELLED")).waitFor();
      await expect.poll(() => page.locator("#status").textContent()).toBe("CANCELLED");
      expect(await page.locator('#actions [data-action="retry"]').count()).toBe(1);
      expect(errors()).toEqual([]);
    } finally {
      await close();
    }
  }, 120_000);

  it("draws a workflow's steps with their live status; a step opens its task; the list groups steps under their run", async () => {
    const wf = await troupe.start(pipeline, { s: "doc" });
    await expect
      .poll(async () => {
        const r = await troupe.getWorkflow(wf.id);
        return r && Object.fromEntries(Object.entries(r.steps).map(([k, v]) => [k, v.status]));
      }, { timeout: 60_000 })
      .toEqual({ fetch: "COMPLETED", parse: "FAILED", store: "SKIPPED", notify: "COMPLETED", archive: "RUNNING" });

    const { page, errors, close } = await open(`#workflow:${wf.id}`);
    try {
      const step = (name: string, status: string) => page.locator(`#graph [data-step="${name}"][data-status="${status}"]`);
      await step("fetch", "COMPLETED").waitFor();
      await step("parse", "FAILED").waitFor();
      await step("store", "SKIPPED").waitFor();
      await step("notify", "COMPLETED").waitFor();
      // Its task waits in the queue: no worker serves it, and the graph says so.
      await step("archive", "QUEUED").waitFor();
      expect(await page.locator("#graph").textContent()).toContain('no worker serves task "inspect.unserved" on queue "default"');
      expect(await step("fetch", "COMPLETED").textContent()).toContain("inspect.echo");
      expect(await step("fetch", "COMPLETED").textContent()).toMatch(/\d+(\.\d+)? (ms|s)/);
      expect(await page.locator("#graph .dep").count()).toBe(4);
      await page.locator(lit("RUNNING")).waitFor();

      // The list: the run, its steps right under it, indented.
      const ids = await page.locator("#list .row").evaluateAll((rows) => rows.map((r) => [r.getAttribute("data-id"), r.classList.contains("child")] as const));
      const at = ids.findIndex(([id]) => id === wf.id);
      expect(at).toBeGreaterThanOrEqual(0);
      const under = ids.slice(at + 1, at + 5);
      expect(under.every(([, child]) => child)).toBe(true);
      expect(under.map(([id]) => id).sort()).toEqual(["archive", "fetch", "notify", "parse"].map((s) => `${wf.id}-${s}`));
      await screenshot(page, "inspector-workflow", "docs/images/inspector-workflow.png");

      // A step opens its task.
      await step("parse", "FAILED").click();
      await page.locator(lit("FAILED")).waitFor();
      expect(hashOf(page)).toBe(`#task:${wf.id}-parse`);
      expect(await page.locator("#subtitle").textContent()).toContain(`step parse of workflow ${wf.id}`);
      expect(await page.locator("#record-error").textContent()).toContain("cannot parse doc");
      // The error's stack is text in a <pre>, its lines broken, not an escaped JSON string.
      const stack = (await page.locator("#record-error pre.stack").textContent()) ?? "";
      expect(stack).toContain("Error: cannot parse doc\n    at ");
      expect(stack).not.toContain("\\n");
      expect(await page.evaluate(`getComputedStyle(document.querySelector("#record-error pre.stack")).whiteSpace`)).toBe("pre-wrap");
      expect(await page.locator("#record").textContent()).toContain('"stack": "(shown above)"');
      await screenshot(page, "inspector-step-failed");
      expect(errors()).toEqual([]);
    } finally {
      await close();
    }
  }, 120_000);

  it("opens any actor or history event by link, and filters the list by kind, status and text", async () => {
    const done = await troupe.submit(echo, { s: "linked" });
    await done.result();
    const history = await troupe.history(done.id);
    const queued = history.find((e) => e.event === "queued")!;

    const { page, errors, close } = await open(`#task:${done.id}@${queued.seq}`);
    try {
      await page.locator(lit("QUEUED")).waitFor();
      await expect.poll(() => page.locator(`#history tr[data-seq="${queued.seq}"]`).getAttribute("class")).toContain("selected");
      expect(await page.locator("#live").getAttribute("aria-pressed")).toBe("false");
      await page.locator(`#list .row.selected[data-kind="task"][data-id="${done.id}"]`).waitFor();

      // A link followed in the page (hashchange) opens that actor at the present.
      await page.evaluate(`location.hash = "#task:${done.id}"`);
      await page.locator(lit("COMPLETED")).waitFor();
      expect(await page.locator("#live").getAttribute("aria-pressed")).toBe("true");

      // A worker: its machine lit, its heartbeats folded into rows of their own count.
      const [worker] = await troupe.workers();
      await page.evaluate(`location.hash = "#worker:${worker!.id}"`);
      await page.locator(`#machine [data-state="${worker!.state}"][aria-current="true"]`).waitFor();
      const detail = (await (await fetch(`${inspector.url}/api/actors/worker/${worker!.id}`, { headers: { authorization: `Bearer ${inspector.token}` } })).json()) as { events: Array<{ event: string }> };
      const folded = detail.events.filter((e, i) => !(e.event === "heartbeat" && detail.events[i - 1]?.event === "heartbeat")).length;
      await expect.poll(() => page.locator("#history tbody tr[data-seq]").count()).toBeGreaterThanOrEqual(folded);
      const rows = await page.locator("#history tbody tr[data-seq]").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-event")));
      expect(rows.some((e, i) => e === "heartbeat" && rows[i - 1] === "heartbeat")).toBe(false);
      if (detail.events.length > folded) expect(await page.locator("#history tbody td.event", { hasText: "heartbeat ×" }).count()).toBeGreaterThan(0);
      await screenshot(page, "inspector-worker");

      // The list stays live: a task submitted now appears, then completes.
      const later = await troupe.submit(echo, { s: "later" });
      await later.result();
      await page.locator(`#list .row[data-kind="task"][data-id="${later.id}"][data-status="COMPLETED"]`).waitFor();

      // Filters: rows carry kind, name, status and age.
      const row = page.locator(`#list .row[data-kind="task"][data-id="${done.id}"]`);
      expect(await row.textContent()).toContain("inspect.echo");
      expect(await row.getAttribute("data-status")).toBe("COMPLETED");
      // The filters are labelled; rows are links, opened from the keyboard too.
      await page.getByLabel("Kind").selectOption("workflow");
      await expect.poll(() => page.locator("#list .row").evaluateAll((rows) => [...new Set(rows.map((r) => r.getAttribute("data-kind")))])).toEqual(["workflow"]);
      await page.selectOption("#filter-kind", "");
      await page.getByLabel("Status").selectOption("FAILED");
      await expect
        .poll(() => page.locator("#list .row:not(.context)").evaluateAll((rows) => [...new Set(rows.map((r) => r.getAttribute("data-status")))]))
        .toEqual(["FAILED"]);
      await page.selectOption("#filter-status", "");
      await page.fill("#filter-text", done.id);
      await expect.poll(() => page.locator("#list .row").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-id")))).toEqual([done.id]);
      await page.getByLabel("Name or id").fill("inspect.boom");
      await expect.poll(() => page.locator("#list .row:not(.context)").evaluateAll((rows) => rows.map((r) => r.textContent ?? ""))).toEqual([
        expect.stringContaining("inspect.boom"),
      ]);
      await page.locator("#list .row:not(.context)").focus();
      await page.keyboard.press("Enter");
      await page.locator(lit("FAILED")).waitFor();
      expect(hashOf(page)).toMatch(/^#task:.+-parse$/);
      expect(errors()).toEqual([]);
    } finally {
      await close();
    }
  }, 120_000);
  it("opens a task's statechart fitted to its column with every label whole and readable; wheel zooms, a drag pans, Fit returns; the history beside it; the chart folds away", async () => {
    const run = await running("chart");
    const { page, errors, close } = await open(`#task:${run.id}`);
    try {
      await page.locator(lit("RUNNING.executing")).waitFor();
      const box = page.locator("#machine");
      /** Every state name and arrow caption, and whether its box is whole inside the chart's box and the window. */
      const labels = () =>
        page.evaluate(`(() => {
          const frame = document.querySelector("#machine").getBoundingClientRect();
          return [...document.querySelectorAll("#machine .state text.name, #machine .edge text")].map((t) => {
            const r = t.getBoundingClientRect();
            const whole = r.left >= frame.left - 0.5 && r.right <= frame.right + 0.5 && r.top >= frame.top - 0.5 && r.bottom <= frame.bottom + 0.5;
            return { text: t.textContent, whole, inWindow: r.left >= 0 && r.right <= window.innerWidth };
          });
        })()`) as Promise<Array<{ text: string; whole: boolean; inWindow: boolean }>>;
      const opened = await labels();
      expect(opened.length).toBeGreaterThan(30);
      expect(opened.filter((l) => !l.whole || !l.inWindow)).toEqual([]);
      // Readable: drawn at 80% of its size or more (an 11px caption at least 8.8px).
      const scale = Number(await box.getAttribute("data-scale"));
      expect(scale).toBeGreaterThanOrEqual(0.8);
      expect(opened.map((l) => l.text)).toContain("START");
      expect(opened.find((l) => l.text === "EXECUTED [succeeded]")).toBeDefined();

      // The history is beside the chart, in the window without scrolling.
      const chart = (await page.locator("#chart-card").boundingBox())!;
      const history = (await page.locator("#history-panel").boundingBox())!;
      expect(history.x).toBeGreaterThanOrEqual(chart.x + chart.width);
      expect(history.y).toBeLessThan(960);
      await screenshot(page, "inspector-task", "docs/images/inspector-task.png");

      // The wheel zooms in around the pointer; a drag pans; Fit returns to the whole chart.
      const frame = (await box.boundingBox())!;
      await page.mouse.move(frame.x + frame.width / 2, frame.y + 200);
      await page.mouse.wheel(0, -400);
      await expect.poll(async () => Number(await box.getAttribute("data-scale"))).toBeGreaterThan(scale * 1.5);
      const viewBox = async () => ((await page.locator("#machine svg.chart").getAttribute("viewBox")) ?? "").split(" ").map(Number);
      const before = await viewBox();
      await page.mouse.down();
      await page.mouse.move(frame.x + frame.width / 2 - 150, frame.y + 120, { steps: 5 });
      await page.mouse.up();
      const after = await viewBox();
      expect(after[0]!).toBeGreaterThan(before[0]!);
      expect(after[1]!).toBeGreaterThan(before[1]!);
      expect((await labels()).some((l) => !l.whole)).toBe(true);
      // A live change keeps the user's view.
      await page.locator("#zoom-in").click();
      const zoomed = Number(await box.getAttribute("data-scale"));
      await page.locator("#fit").click();
      expect(Number(await box.getAttribute("data-scale"))).toBeCloseTo(scale, 3);
      expect(zoomed).toBeGreaterThan(scale);
      expect((await labels()).filter((l) => !l.whole)).toEqual([]);

      // The chart folds away, and comes back fitted.
      await page.locator("#chart-toggle").click();
      await expect.poll(() => box.isVisible()).toBe(false);
      expect(await page.locator("#chart-toggle").getAttribute("aria-expanded")).toBe("false");
      await page.locator("#chart-toggle").click();
      await expect.poll(() => box.isVisible()).toBe(true);
      expect((await labels()).filter((l) => !l.whole)).toEqual([]);
      expect(errors()).toEqual([]);
    } finally {
      gates.get("chart")?.();
      await close();
    }
  }, 120_000);

  it("lists a handler's log lines in its task's Logs tab and its worker's", async () => {
    const run = await troupe.submit(chatty, { s: "hello-logs" });
    expect(await run.result()).toBe("hello-logs");
    const { workerId } = (await troupe.get(run.id))!;
    // The line is stored once TROUPE_LOGS has it.
    const logs = async () => ((await (await fetch(`${inspector.url}/api/logs?task=${run.id}`, { headers: { authorization: `Bearer ${inspector.token}` } })).json()) as { lines: unknown[] }).lines.length;
    await expect.poll(logs, { timeout: 30_000 }).toBe(1);
    const { page, errors, close } = await open(`#task:${run.id}`);
    try {
      await page.locator(lit("COMPLETED")).waitFor();
      await page.locator("#tab-logs").click();
      const line = page.locator("#logs .log-line", { hasText: "handler says hello-logs" });
      await line.waitFor();
      expect(await line.locator(".level").textContent()).toBe("info");
      expect(await line.textContent()).toContain('"detail":"hello-logs"');
      expect(await page.locator("#history-panel").isVisible()).toBe(false);
      expect(await page.locator("#logs").textContent()).not.toContain("null");
      await screenshot(page, "inspector-task-logs");

      // The worker's tab has it too, named by its task.
      await page.evaluate(`location.hash = "#worker:${workerId}"`);
      await page.locator(`#logs .log-line`, { hasText: "handler says hello-logs" }).waitFor();
      expect(await page.locator(`#logs .log-line`, { hasText: "handler says hello-logs" }).textContent()).toContain(`task ${run.id}`);

      expect(errors()).toEqual([]);
    } finally {
      await close();
    }
    // Bad input: one clear error.
    const bad = await fetch(`${inspector.url}/api/logs?task=a.b`, { headers: { authorization: `Bearer ${inspector.token}` } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toContain("one task");
  }, 120_000);

  it("shows per queue what waits, runs and failed, and the rates, as troupe stats counts them; the header counts live workers only", async () => {
    // Work no worker serves waits on its own queue; one task runs; failures come from inspect.boom.
    for (const s of ["a", "b", "c"]) await troupe.submit(nobody, { s });
    const held = await running("overview");
    // A failure ended before the counts are compared (so they cannot move under the test).
    await expect((await troupe.submit(boom, { s: "x" })).result()).rejects.toThrow("cannot parse x");

    // A second worker, stopped: the header does not count it.
    const extra = await troupe.worker({ tasks: [echo], concurrency: 1 });
    await extra.stop();
    await expect.poll(async () => (await troupe.workers()).some((w) => w.id === extra.id)).toBe(false);

    const { page, errors, close } = await open("");
    try {
      await page.locator("#queues-card[data-loaded=true]").waitFor();
      const cell = (queue: string, task: string, col: string) => page.locator(`#queues tr.type[data-queue="${queue}"][data-task="${task}"] td[data-col="${col}"]`).textContent();
      expect(await cell("overview", "inspect.nobody", "waiting")).toBe("3");
      expect(await page.locator(`#queues tr.queue[data-queue="overview"] td[data-col="waiting"]`).textContent()).toBe("3");
      // The page's numbers are troupe stats' (read again every 5 s: an index entry may land between two reads).
      const agrees = async (task: string, col: "running" | "failed") => {
        const shown = await cell("default", task, col);
        const counted = (await troupe.stats({ rates: false })).types.find((t) => t.task === task)!;
        return shown === String(counted[col]) && counted[col] > 0;
      };
      await expect.poll(() => agrees("inspect.hold", "running"), { timeout: 20_000 }).toBe(true);
      await expect.poll(() => agrees("inspect.boom", "failed"), { timeout: 20_000 }).toBe(true);
      expect(await cell("default", "inspect.boom", "failed-rate")).toMatch(/^\d+(\.\d)?$/);
      expect(await cell("default", "inspect.hold", "workers")).toBe("1");

      // The header: the live workers, not the stopped one the list still shows.
      const live = (await troupe.workers()).length;
      await page.locator(`#list .row[data-kind="worker"][data-id="${extra.id}"][data-status="stopped"]`).waitFor();
      expect(await page.locator("#counts").textContent()).toContain(`${live} live worker${live === 1 ? "" : "s"}`);
      await screenshot(page, "inspector-queues", "docs/images/inspector-queues.png");
      expect(errors()).toEqual([]);
    } finally {
      gates.get("overview")?.();
      await held.result();
      await close();
    }
  }, 120_000);
});
