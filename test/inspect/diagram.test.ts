import { describe, expect, it } from "vitest";
import type { AnyStateMachine } from "xstate";
import { taskMachine } from "../../machines/task.js";
import { workerMachine } from "../../machines/worker.js";
import { workflowMachine } from "../../machines/workflow.js";
import { machineDiagram, workflowDiagram, type Diagram } from "../../src/inspect/diagram.js";

type Box = { x: number; y: number; width: number; height: number };
type Point = { x: number; y: number };

interface ConfigNode {
  readonly id?: string;
  readonly type?: string;
  readonly states?: Record<string, ConfigNode>;
  readonly on?: Record<string, unknown>;
  readonly after?: Record<string, unknown>;
  readonly always?: unknown;
  readonly onDone?: unknown;
}

/**
 * The transitions of a machine read straight from its config (not from the StateNode graph
 * the diagram uses): `{ source, target, event }`, target `undefined` when the transition
 * has none. Targets are resolved by XState's rules: `#id.A.b` by id, `A` a sibling, `.a` a child.
 */
const configTransitions = (machine: AnyStateMachine) => {
  const config = machine.config as ConfigNode;
  const machineId = config.id ?? "(machine)";
  const out: Array<{ source: string; target: string | undefined; event: string }> = [];
  const asList = (value: unknown): unknown[] => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
  const walk = (node: ConfigNode, path: string[]) => {
    const resolve = (target: string): string => {
      if (target.startsWith(`#${machineId}.`)) return target.slice(machineId.length + 2);
      if (target.startsWith(".")) return [...path, target.slice(1)].join(".");
      return [...path.slice(0, -1), target].join(".");
    };
    const add = (event: string, value: unknown) => {
      for (const t of asList(value)) {
        const target = typeof t === "string" ? t : (t as { target?: string | string[] }).target;
        const first = Array.isArray(target) ? target[0] : target;
        out.push({ source: path.join("."), target: first === undefined ? undefined : resolve(first), event });
      }
    };
    for (const [event, value] of Object.entries(node.on ?? {})) add(event, value);
    for (const [delay, value] of Object.entries(node.after ?? {})) add(`after ${delay}`, value);
    add("always", node.always);
    add("done", node.onDone);
    for (const [key, child] of Object.entries(node.states ?? {})) walk(child, [...path, key]);
  };
  walk(config, []);
  return out;
};

/** Every state path of a machine, from its config. */
const configPaths = (machine: AnyStateMachine): string[] => {
  const out: string[] = [];
  const walk = (node: ConfigNode, path: string[]) => {
    for (const [key, child] of Object.entries(node.states ?? {})) {
      out.push([...path, key].join("."));
      walk(child, [...path, key]);
    }
  };
  walk(machine.config as ConfigNode, []);
  return out;
};

const inside = (inner: Box, outer: Box) =>
  inner.x >= outer.x - 0.5 &&
  inner.y >= outer.y - 0.5 &&
  inner.x + inner.width <= outer.x + outer.width + 0.5 &&
  inner.y + inner.height <= outer.y + outer.height + 0.5;

const overlap = (a: Box, b: Box) =>
  a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

/** How far a point is from a box's boundary (0 on it). */
const fromBoundary = (p: Point, b: Box) => {
  const dx = Math.max(b.x - p.x, 0, p.x - (b.x + b.width));
  const dy = Math.max(b.y - p.y, 0, p.y - (b.y + b.height));
  if (dx > 0 || dy > 0) return Math.hypot(dx, dy);
  return Math.min(p.x - b.x, b.x + b.width - p.x, p.y - b.y, b.y + b.height - p.y);
};

const machines = [
  ["task", taskMachine],
  ["workflow", workflowMachine],
  ["worker", workerMachine],
] as const;

describe("machineDiagram", () => {
  const diagrams = new Map<string, Diagram>();
  const diagram = async (name: string, machine: AnyStateMachine) => {
    const known = diagrams.get(name);
    if (known) return known;
    const d = await machineDiagram(machine);
    diagrams.set(name, d);
    return d;
  };

  it("lays out the three machines in well under a second each time", async () => {
    const started = performance.now();
    for (const [name, machine] of machines) diagrams.set(name, await machineDiagram(machine));
    const cold = performance.now() - started;
    const again = performance.now();
    for (const [, machine] of machines) await machineDiagram(machine);
    const warm = performance.now() - again;
    // Generous: the first run includes loading and warming up the layout engine, and the
    // test machine may be busy; unloaded, the first run takes about half a second.
    expect(cold).toBeLessThan(5_000);
    expect(warm).toBeLessThan(2_000);
  });

  describe.each(machines)("%s machine", (name, machine) => {
    it("has a node for every state, named by its dotted path", async () => {
      const d = await diagram(name, machine);
      const paths = d.nodes.map((n) => n.path);
      expect([...paths].sort()).toEqual(configPaths(machine).sort());
      for (const n of d.nodes) {
        expect(n.name).toBe(n.path.split(".").pop());
        expect(n.path.startsWith(`${machine.id}.`)).toBe(false);
        if (n.path.includes(".")) expect(n.parent).toBe(n.path.split(".").slice(0, -1).join("."));
        else expect(n.parent).toBeUndefined();
        expect(n.width).toBeGreaterThan(0);
        expect(n.height).toBeGreaterThan(0);
      }
    });

    it("puts children inside their parent, siblings apart, everything inside the diagram", async () => {
      const d = await diagram(name, machine);
      const byPath = new Map(d.nodes.map((n) => [n.path, n]));
      const whole = { x: 0, y: 0, width: d.width, height: d.height };
      for (const n of d.nodes) {
        expect(inside(n, whole), n.path).toBe(true);
        if (n.parent) expect(inside(n, byPath.get(n.parent)!), `${n.path} in ${n.parent}`).toBe(true);
      }
      for (const a of d.nodes)
        for (const b of d.nodes)
          if (a !== b && a.parent === b.parent) expect(overlap(a, b), `${a.path} / ${b.path}`).toBe(false);
    });

    it("draws every transition with a target as an edge, the others on their state", async () => {
      const d = await diagram(name, machine);
      const expected = configTransitions(machine);
      const key = (t: { source: string; target: string | undefined; event: string }) => `${t.source} --${t.event}--> ${t.target}`;
      const targeted = expected.filter((t) => t.target !== undefined).map(key).sort();
      expect(d.edges.map(key).sort()).toEqual(targeted);
      expect(new Set(d.edges.map((e) => e.id)).size).toBe(d.edges.length);
      // Targetless transitions: listed on their node, the root's on the diagram.
      const listed = new Map<string, string[]>(d.nodes.map((n) => [n.path, n.internal ?? []]));
      listed.set("", d.internal ?? []);
      const targetless = expected.filter((t) => t.target === undefined);
      expect(targetless.length).toBe([...listed.values()].reduce((sum, l) => sum + l.length, 0));
      for (const t of targetless)
        expect(listed.get(t.source)!.some((l) => l === t.event || l.startsWith(`${t.event} `)), key(t)).toBe(true);
    });

    it("starts and ends every edge on the boundary of its states, its label placed", async () => {
      const d = await diagram(name, machine);
      const byPath = new Map(d.nodes.map((n) => [n.path, n]));
      for (const e of d.edges) {
        expect(e.points.length, e.id).toBeGreaterThanOrEqual(2);
        expect(fromBoundary(e.points[0]!, byPath.get(e.source)!), `${e.id} ${e.label} start`).toBeLessThan(3);
        expect(fromBoundary(e.points.at(-1)!, byPath.get(e.target)!), `${e.id} ${e.label} end`).toBeLessThan(3);
        expect(e.labelWidth).toBeGreaterThan(0);
        expect(e.labelHeight).toBeGreaterThan(0);
        expect(inside({ x: e.labelX, y: e.labelY, width: e.labelWidth, height: e.labelHeight }, { x: 0, y: 0, width: d.width, height: d.height })).toBe(true);
      }
    });
  });

  it("names the task machine's transitions, guards, delays and states", async () => {
    const d = await diagram("task", taskMachine);
    const edge = (source: string, event: string, target: string) => d.edges.filter((e) => e.source === source && e.event === event && e.target === target);
    const [executed] = edge("RUNNING.executing", "EXECUTED", "COMPLETED");
    expect(executed).toMatchObject({ guard: "succeeded", actions: ["complete"], label: "EXECUTED [succeeded] / complete" });
    const [deadline] = edge("RUNNING.executing", "after deadline", "RUNNING.failing");
    expect(deadline).toMatchObject({ guard: "hasDeadline", actions: ["recordTimeout"], label: "after deadline [hasDeadline] / recordTimeout" });
    expect(edge("RUNNING.executing", "EXECUTED", "RUNNING.failing")[0]?.guard).toBeUndefined();
    expect(edge("RUNNING.executing", "CANCEL", "CANCELLED")).toHaveLength(1);
    expect(edge("RUNNING.claiming", "FENCED", "LOST")).toHaveLength(1);
    expect(edge("RUNNING.failing", "always", "RETRYING")[0]?.guard).toBe("canRetry");
    expect(edge("RUNNING", "START", "RUNNING")).toHaveLength(1); // re-entered: a self edge
    const node = (path: string) => d.nodes.find((n) => n.path === path)!;
    expect(node("QUEUED").initial).toBe(true);
    expect(node("RUNNING.claiming").initial).toBe(true);
    expect(node("RUNNING.executing").initial).toBeUndefined();
    expect(node("RUNNING.executing")).toMatchObject({ entry: ["execute"], exit: ["interrupt"] });
    expect(node("RUNNING.executing").internal).toEqual(["PROGRESS / recordProgress, persistProgress", "PROGRESS_SAVED / adoptRevision"]);
    expect(node("RUNNING").internal).toEqual(["HEARTBEAT / heartbeat, scheduleHeartbeat"]);
    expect(node("LOST")).toMatchObject({ final: true, tags: ["lost"] });
    expect(node("COMPLETED.saved")).toMatchObject({ final: true, tags: ["settled"] });
    expect(node("RUNNING").final).toBeUndefined();
  });

  it("names combined guards and the root's own transitions", async () => {
    const workflow = await diagram("workflow", workflowMachine);
    expect(workflow.edges.filter((e) => e.source === "RUNNING" && e.event === "always").map((e) => e.guard)).toEqual([
      "failedFast",
      "allSettled && anyFailed",
      "allSettled",
    ]);
    const worker = await diagram("worker", workerMachine);
    expect(worker.internal).toEqual(["LEASED / lease", "RELEASED / release", "BEAT / beat, scheduleBeat"]);
    expect(worker.edges.find((e) => e.source === "disconnected" && e.target === "lost")?.event).toBe("after disconnectTimeout");
  });
});

describe("workflowDiagram", () => {
  it("lays a diamond out left to right", async () => {
    const dag = await workflowDiagram([
      { name: "a", after: [] },
      { name: "b", after: ["a"] },
      { name: "c", after: ["a"] },
      { name: "d", after: ["b", "c"] },
    ]);
    const node = (step: string) => dag.nodes.find((n) => n.step === step)!;
    expect(dag.nodes.map((n) => n.step).sort()).toEqual(["a", "b", "c", "d"]);
    const [a, b, c, d] = [node("a"), node("b"), node("c"), node("d")];
    expect(a.x + a.width).toBeLessThanOrEqual(Math.min(b.x, c.x));
    expect(d.x).toBeGreaterThanOrEqual(Math.max(b.x + b.width, c.x + c.width));
    expect(overlap(b, c)).toBe(false);
    expect(dag.edges.map((e) => `${e.from}->${e.to}`).sort()).toEqual(["a->b", "a->c", "b->d", "c->d"]);
    for (const e of dag.edges) {
      expect(fromBoundary(e.points[0]!, node(e.from))).toBeLessThan(3);
      expect(fromBoundary(e.points.at(-1)!, node(e.to))).toBeLessThan(3);
    }
    for (const n of dag.nodes) expect(inside(n, { x: 0, y: 0, width: dag.width, height: dag.height })).toBe(true);
  });

  it("lays out a single step, and ignores dependencies on unknown steps", async () => {
    const dag = await workflowDiagram([{ name: "only", after: ["missing"] }]);
    expect(dag.nodes).toHaveLength(1);
    expect(dag.edges).toEqual([]);
    expect(dag.width).toBeGreaterThan(dag.nodes[0]!.width);
  });
});
