/**
 * Diagrams for the inspector: a machine definition as a laid-out statechart, a workflow's
 * steps as a laid-out DAG. Both are computed with elkjs (layered, left to right) on the
 * server and sent to the page as plain JSON in absolute pixel coordinates; the page only
 * draws them. A statechart runs top to bottom (a narrow column: fitted to a page's width its
 * text stays readable); a workflow's steps left to right.
 */
import ElkBundled from "elkjs/lib/elk.bundled.js";
import type { ELK, ElkExtendedEdge, ElkLabel, ElkNode, ElkPoint } from "elkjs/lib/elk-api.js";
import type { AnyStateMachine } from "xstate";

export interface Point {
  x: number;
  y: number;
}

/**
 * A statechart laid out in pixels, origin top-left, every coordinate absolute.
 *
 * - Each state is a node with its dotted path (`"RUNNING.executing"`, no machine id);
 *   compound states are boxes that contain their children's boxes. Every box has room at
 *   its top, left-aligned, for its name (an 18px line) and under it one 14px line each for
 *   `entry / a, b`, `exit / a`, `tags: t` and each of its `internal` transitions; a compound
 *   box's children start below those lines.
 * - Each transition with a target is an edge (`event` is the event type, `"after <delay>"`
 *   for a delayed transition, `"always"` for an eventless one, `"done"` for `onDone`);
 *   a re-entering transition to the state itself has `target === source`.
 * - A transition without a target (actions only, e.g. `HEARTBEAT`, `PROGRESS`) is no edge:
 *   it is listed on its node as `internal` (`"HEARTBEAT / heartbeat, scheduleHeartbeat"`),
 *   and on the diagram itself when the machine's root takes it (the worker's `LEASED`).
 * - Sizes assume state names in a 13px font and everything else in an 11px one.
 */
export interface Diagram {
  width: number;
  height: number;
  /** Targetless transitions of the machine's root (taken in every state). */
  internal?: string[];
  nodes: DiagramNode[];
  edges: DiagramEdge[];
}

export interface DiagramNode {
  /** Dotted state path, `"RUNNING.executing"`; a top-level state is `"QUEUED"`. */
  path: string;
  /** Last segment, `"executing"`. */
  name: string;
  /** The parent's path; absent for top-level states. */
  parent?: string;
  x: number;
  y: number;
  width: number;
  height: number;
  /** The parent's initial state. */
  initial?: boolean;
  /** `type: "final"`. */
  final?: boolean;
  entry?: string[];
  exit?: string[];
  tags?: string[];
  /** Transitions without a target, as labels: `"PROGRESS / recordProgress, persistProgress"`. */
  internal?: string[];
}

export interface DiagramEdge {
  id: string;
  /** State paths; a self transition has `target === source`. */
  source: string;
  target: string;
  /** `"EXECUTED"`, `"after deadline"`, `"always"`, `"done"`. */
  event: string;
  guard?: string;
  actions?: string[];
  /** `"EXECUTED [succeeded] / complete"`. */
  label: string;
  /** What the chart writes by the arrow, `"EXECUTED [succeeded]"` (the actions are in `label`). */
  caption: string;
  /** Polyline, absolute, from the source's boundary to the target's. */
  points: Point[];
  labelX: number;
  labelY: number;
  labelWidth: number;
  labelHeight: number;
}

/** A workflow's steps laid out left to right; an edge runs from a step to one that runs after it. */
export interface Dag {
  width: number;
  height: number;
  nodes: Array<{ step: string; x: number; y: number; width: number; height: number }>;
  edges: Array<{ from: string; to: string; points: Point[] }>;
}

/** Text size estimates (no DOM on the server): average glyph widths of a sans-serif font. */
const NAME_CHAR = 8;
const SMALL_CHAR = 6.2;
const NAME_LINE = 18;
const SMALL_LINE = 14;
const PAD = 10;

const nameWidth = (text: string) => Math.ceil(text.length * NAME_CHAR);
const smallWidth = (text: string) => Math.ceil(text.length * SMALL_CHAR);

// A CommonJS module: Node's default import is the constructor itself, which also carries itself as `default`.
const Elk = ElkBundled.default;
let elk: ELK | undefined;
const engine = () => (elk ??= new Elk());

// ---------------------------------------------------------------------------------------
// Reading a machine definition

interface Guard {
  readonly type?: string;
  readonly guards?: ReadonlyArray<unknown>;
  readonly check?: { readonly name?: string };
  readonly name?: string;
}

/** A guard's readable name: `succeeded`, `allSettled && anyFailed`, `!idle`. */
const guardName = (guard: unknown): string | undefined => {
  if (guard === undefined || guard === null) return undefined;
  if (typeof guard === "string") return guard;
  const g = guard as Guard;
  if (typeof guard === "function" && Array.isArray(g.guards)) {
    const parts = g.guards.map((x) => guardName(x) ?? "?");
    const check = g.check?.name ?? "";
    if (check === "checkNot") return `!${parts.join("")}`;
    return parts.join(check === "checkOr" ? " || " : " && ");
  }
  if (typeof guard === "object" && typeof g.type === "string") return g.type;
  return typeof guard === "function" && g.name ? g.name : "guard";
};

/** An action's readable name; `undefined` for XState's own bookkeeping (the raise an `after` adds). */
const actionName = (action: unknown): string | undefined => {
  if (typeof action === "string") return action;
  if (typeof action === "object" && action !== null && typeof (action as { type?: unknown }).type === "string")
    return (action as { type: string }).type;
  if (typeof action === "function") {
    const type = (action as { type?: unknown }).type;
    if (type === "xstate.raise" || type === "xstate.cancel") return undefined;
    if (typeof type === "string") return type.replace(/^xstate\./, "");
    return (action as { name?: string }).name || "action";
  }
  return undefined;
};

const actionNames = (actions: ReadonlyArray<unknown> | undefined): string[] =>
  (actions ?? []).map(actionName).filter((a): a is string => a !== undefined);

/** What the diagram calls an event: `after deadline`, `done`, or the event type. */
const eventName = (eventType: string, node: StateNodeLike): string => {
  if (eventType === "") return "always";
  if (eventType.startsWith("xstate.after.")) {
    const delayed = (node.after ?? []).find((a) => a.eventType === eventType);
    const delay = delayed?.delay ?? eventType.slice("xstate.after.".length).split(".")[0];
    return typeof delay === "number" ? `after ${delay}ms` : `after ${String(delay)}`;
  }
  if (eventType.startsWith("xstate.done.state.")) return "done";
  if (eventType.startsWith("xstate.done.actor.")) return "done";
  if (eventType.startsWith("xstate.error.actor.")) return "error";
  return eventType;
};

/** The parts of XState's `StateNode` read here. */
interface StateNodeLike {
  readonly id: string;
  readonly key: string;
  readonly path: ReadonlyArray<string>;
  readonly type: string;
  readonly states: Record<string, StateNodeLike>;
  readonly parent?: StateNodeLike | undefined;
  readonly initial?: { readonly target: ReadonlyArray<StateNodeLike> } | undefined;
  readonly transitions: Map<string, ReadonlyArray<TransitionLike>>;
  readonly always?: ReadonlyArray<TransitionLike> | undefined;
  readonly after?: ReadonlyArray<{ readonly eventType: string; readonly delay: string | number }>;
  readonly entry: ReadonlyArray<unknown>;
  readonly exit: ReadonlyArray<unknown>;
  readonly tags: ReadonlyArray<string>;
}

interface TransitionLike {
  readonly eventType: string;
  readonly target?: ReadonlyArray<StateNodeLike> | undefined;
  readonly guard?: unknown;
  readonly actions?: ReadonlyArray<unknown>;
}

/** A transition of the definition, in the diagram's terms. */
export interface MachineTransition {
  readonly source: string;
  /** `undefined` when the transition has no target (actions only). */
  readonly target: string | undefined;
  readonly event: string;
  readonly guard: string | undefined;
  readonly actions: string[];
  readonly label: string;
}

const pathOf = (node: StateNodeLike) => node.path.join(".");

const labelOf = (event: string, guard: string | undefined, actions: ReadonlyArray<string>) =>
  event + (guard ? ` [${guard}]` : "") + (actions.length > 0 ? ` / ${actions.join(", ")}` : "");

/** Every transition of a state node (its own, not its children's): `on`, `after`, `onDone`, then `always`. */
const transitionsOf = (node: StateNodeLike): MachineTransition[] => {
  const all: TransitionLike[] = [...[...node.transitions.values()].flat(), ...(node.always ?? [])];
  return all.map((t) => {
    const event = eventName(t.eventType, node);
    const guard = guardName(t.guard);
    const actions = actionNames(t.actions);
    const targets = t.target ?? [];
    return {
      source: pathOf(node),
      target: targets.length > 0 ? pathOf(targets[0]!) : undefined,
      event,
      guard,
      actions,
      label: labelOf(event, guard, actions),
    };
  });
};

const descendants = (node: StateNodeLike): StateNodeLike[] =>
  Object.values(node.states).flatMap((c) => [c, ...descendants(c)]);

/**
 * Every transition of a machine definition, read from its state nodes (the root's too,
 * whose source is `""`). A transition with several targets (parallel regions) is listed
 * once, by its first target.
 */
export const machineTransitions = (machine: AnyStateMachine): MachineTransition[] => {
  const root = machine.root as unknown as StateNodeLike;
  return [root, ...descendants(root)].flatMap(transitionsOf);
};

// ---------------------------------------------------------------------------------------
// Layout

const ROOT = "__root";
const nodeId = (path: string) => (path === "" ? ROOT : `s:${path}`);

/** Lines a state shows under its name. */
const detailLines = (node: StateNodeLike, internal: ReadonlyArray<string>) => {
  const lines: string[] = [];
  const entry = actionNames(node.entry);
  const exit = actionNames(node.exit);
  if (entry.length > 0) lines.push(`entry / ${entry.join(", ")}`);
  if (exit.length > 0) lines.push(`exit / ${exit.join(", ")}`);
  if (node.tags.length > 0) lines.push(`tags: ${node.tags.join(", ")}`);
  lines.push(...internal);
  return lines;
};

/** An arrow's caption: its event and guard; the actions stay in its title (they made the chart twice as wide). */
const captionOf = (t: Pick<MachineTransition, "event" | "guard">) => t.event + (t.guard ? ` [${t.guard}]` : "");

const labelFor = (text: string): ElkLabel => ({ text, width: smallWidth(text) + 6, height: SMALL_LINE + 2 });

const commonAncestor = (a: string, b: string): string => {
  const as = a.split(".");
  const bs = b.split(".");
  const common: string[] = [];
  for (let i = 0; i < Math.min(as.length, bs.length) && as[i] === bs[i]; i++) common.push(as[i]!);
  return common.join(".");
};

/**
 * The ELK container of an edge: the lowest state that contains both ends; a state's own
 * parent for a self-loop; the state itself for an edge between a state and its descendant.
 */
const containerOf = (source: string, target: string): string =>
  source === target ? source.split(".").slice(0, -1).join(".") : commonAncestor(source, target);

const layeredOptions = {
  "elk.algorithm": "layered",
  // Top to bottom: the states' chain (queued, running, retrying, ended, lost) is long, and a
  // row of it fitted to a page's width would shrink its text past reading.
  "elk.direction": "DOWN",
  "elk.hierarchyHandling": "INCLUDE_CHILDREN",
  "elk.edgeRouting": "ORTHOGONAL",
  "elk.layered.spacing.nodeNodeBetweenLayers": "40",
  "elk.spacing.nodeNode": "28",
  "elk.spacing.edgeNode": "14",
  "elk.spacing.edgeEdge": "10",
  "elk.spacing.edgeLabel": "4",
  "elk.layered.spacing.edgeNodeBetweenLayers": "14",
  "elk.edgeLabels.inline": "false",
  "elk.layered.edgeLabels.sideSelection": "ALWAYS_UP",
  "elk.layered.nodePlacement.strategy": "NETWORK_SIMPLEX",
  "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
  // States in the order the machine declares them, top to bottom: a transition back (a retry) points up.
  "elk.layered.cycleBreaking.strategy": "MODEL_ORDER",
} as const;

interface Positioned {
  readonly x: number;
  readonly y: number;
}

/** Absolute offsets of every ELK node, by id. */
const absolute = (root: ElkNode): Map<string, Positioned> => {
  const out = new Map<string, Positioned>();
  const visit = (n: ElkNode, ox: number, oy: number) => {
    const x = ox + (n.x ?? 0);
    const y = oy + (n.y ?? 0);
    out.set(n.id, { x, y });
    for (const c of n.children ?? []) visit(c, x, y);
  };
  visit({ ...root, x: 0, y: 0 }, 0, 0);
  return out;
};

const polyline = (edge: ElkExtendedEdge, offset: Positioned): Point[] => {
  const points: Point[] = [];
  const push = (p: ElkPoint) => {
    const q = { x: round(p.x + offset.x), y: round(p.y + offset.y) };
    const last = points[points.length - 1];
    if (!last || last.x !== q.x || last.y !== q.y) points.push(q);
  };
  for (const s of edge.sections ?? []) {
    push(s.startPoint);
    for (const b of s.bendPoints ?? []) push(b);
    push(s.endPoint);
  }
  return points;
};

const round = (n: number) => Math.round(n * 10) / 10;

/** Every edge of an ELK graph, with the id of the node it was given in. */
const edgesIn = (n: ElkNode): Array<{ edge: ElkExtendedEdge; in: string }> => [
  ...(n.edges ?? []).map((edge) => ({ edge, in: n.id })),
  ...(n.children ?? []).flatMap(edgesIn),
];

/**
 * Lays out a machine definition as a statechart: every state a box (compound states
 * around their children), every transition with a target an arrow with its label.
 */
export const machineDiagram = async (machine: AnyStateMachine): Promise<Diagram> => {
  const root = machine.root as unknown as StateNodeLike;
  const transitions = machineTransitions(machine);
  const internalOf = new Map<string, string[]>();
  for (const t of transitions)
    if (t.target === undefined) internalOf.set(t.source, [...(internalOf.get(t.source) ?? []), t.label]);

  const meta = new Map<string, StateNodeLike>();
  const build = (node: StateNodeLike): ElkNode => {
    const path = pathOf(node);
    meta.set(path, node);
    const lines = detailLines(node, internalOf.get(path) ?? []);
    const children = Object.values(node.states);
    const textWidth = Math.max(nameWidth(node.key) + (node.type === "final" ? 16 : 0), ...lines.map(smallWidth));
    const header = NAME_LINE + lines.length * SMALL_LINE + PAD;
    if (children.length === 0)
      return { id: nodeId(path), width: Math.max(90, textWidth + 2 * PAD), height: Math.max(40, header + PAD) };
    return {
      id: nodeId(path),
      layoutOptions: {
        "elk.padding": `[top=${header + 10},left=${PAD + 4},bottom=${PAD + 4},right=${PAD + 4}]`,
        "elk.nodeSize.constraints": "MINIMUM_SIZE",
        "elk.nodeSize.minimum": `(${textWidth + 2 * PAD}, ${header + 2 * PAD})`,
      },
      children: children.map(build),
      edges: [],
    };
  };
  const graph: ElkNode = { ...build(root), id: ROOT, layoutOptions: { ...layeredOptions, "elk.padding": "[top=12,left=12,bottom=12,right=12]" } };

  const byId = new Map<string, ElkNode>();
  const index = (n: ElkNode) => {
    byId.set(n.id, n);
    for (const c of n.children ?? []) index(c);
  };
  index(graph);

  const routed = transitions.filter((t): t is MachineTransition & { target: string } => t.target !== undefined);
  const edgeMeta = new Map<string, MachineTransition & { target: string }>();
  routed.forEach((t, i) => {
    const id = `e${i}`;
    edgeMeta.set(id, t);
    const container = byId.get(nodeId(containerOf(t.source, t.target)))!;
    (container.edges ??= []).push({ id, sources: [nodeId(t.source)], targets: [nodeId(t.target)], labels: [labelFor(captionOf(t))] });
  });

  const laid = await engine().layout(graph);
  const at = absolute(laid);
  const nodes: DiagramNode[] = [];
  const visit = (n: ElkNode) => {
    for (const c of n.children ?? []) {
      const path = c.id.slice(2);
      const state = meta.get(path)!;
      const pos = at.get(c.id)!;
      const lines = { entry: actionNames(state.entry), exit: actionNames(state.exit), internal: internalOf.get(path) ?? [] };
      const parent = state.parent;
      nodes.push({
        path,
        name: state.key,
        ...(parent && parent.parent ? { parent: pathOf(parent) } : {}),
        x: round(pos.x),
        y: round(pos.y),
        width: round(c.width ?? 0),
        height: round(c.height ?? 0),
        ...(parent?.initial?.target.some((t) => t === state) ? { initial: true } : {}),
        ...(state.type === "final" ? { final: true } : {}),
        ...(lines.entry.length > 0 ? { entry: lines.entry } : {}),
        ...(lines.exit.length > 0 ? { exit: lines.exit } : {}),
        ...(state.tags.length > 0 ? { tags: [...state.tags] } : {}),
        ...(lines.internal.length > 0 ? { internal: lines.internal } : {}),
      });
      visit(c);
    }
  };
  visit(laid);

  const edges: DiagramEdge[] = edgesIn(laid).map(({ edge, in: given }) => {
    const t = edgeMeta.get(edge.id)!;
    // ELK reports an edge's coordinates relative to its container.
    const container = (edge as ElkExtendedEdge & { container?: string }).container ?? given;
    const offset = at.get(container) ?? { x: 0, y: 0 };
    const label = edge.labels?.[0];
    return {
      id: edge.id,
      source: t.source,
      target: t.target,
      event: t.event,
      ...(t.guard ? { guard: t.guard } : {}),
      ...(t.actions.length > 0 ? { actions: t.actions } : {}),
      label: t.label,
      caption: captionOf(t),
      points: polyline(edge, offset),
      labelX: round((label?.x ?? 0) + offset.x),
      labelY: round((label?.y ?? 0) + offset.y),
      labelWidth: label?.width ?? 0,
      labelHeight: label?.height ?? 0,
    };
  });
  edges.sort((a, b) => Number(a.id.slice(1)) - Number(b.id.slice(1)));

  const rootInternal = internalOf.get("") ?? [];
  return {
    width: round(laid.width ?? 0),
    height: round(laid.height ?? 0),
    ...(rootInternal.length > 0 ? { internal: rootInternal } : {}),
    nodes,
    edges,
  };
};

/** Lays out a workflow's steps left to right, each step after the steps it waits for. */
export const workflowDiagram = async (steps: ReadonlyArray<{ name: string; after: ReadonlyArray<string> }>): Promise<Dag> => {
  const names = new Set(steps.map((s) => s.name));
  const links = steps.flatMap((s) => s.after.filter((a) => names.has(a)).map((a) => ({ from: a, to: s.name })));
  const graph: ElkNode = {
    id: ROOT,
    layoutOptions: {
      "elk.algorithm": "layered",
      "elk.direction": "RIGHT",
      "elk.edgeRouting": "ORTHOGONAL",
      "elk.layered.spacing.nodeNodeBetweenLayers": "48",
      "elk.spacing.nodeNode": "24",
      "elk.padding": "[top=12,left=12,bottom=12,right=12]",
      "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
    },
    // Room for four lines: the step's name (18px), its task, its status and attempt, its
    // duration or why it is stuck (14px each); 180px wide at least, wider for a long name.
    children: steps.map((s) => ({ id: `n:${s.name}`, width: Math.max(180, nameWidth(s.name) + 2 * PAD), height: 2 * PAD + NAME_LINE + 3 * SMALL_LINE })),
    edges: links.map((l, i) => ({ id: `d${i}`, sources: [`n:${l.from}`], targets: [`n:${l.to}`] })),
  };
  const laid = await engine().layout(graph);
  return {
    width: round(laid.width ?? 0),
    height: round(laid.height ?? 0),
    nodes: (laid.children ?? []).map((c: ElkNode) => ({
      step: c.id.slice(2),
      x: round(c.x ?? 0),
      y: round(c.y ?? 0),
      width: round(c.width ?? 0),
      height: round(c.height ?? 0),
    })),
    edges: (laid.edges ?? []).map((e: ElkExtendedEdge) => {
      const link = links[Number(e.id.slice(1))]!;
      return { from: link.from, to: link.to, points: polyline(e, { x: 0, y: 0 }) };
    }),
  };
};
