/** The inspector's page: plain HTML and JavaScript, no build step, no dependencies. */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Troupe inspector</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; display: grid; grid-template-columns: 360px 1fr; height: 100vh; }
  #actors { border-right: 1px solid #ddd; overflow: auto; }
  #actors h2, main h2 { font-size: 15px; margin: 12px; }
  .actor { padding: 6px 12px; cursor: pointer; display: flex; justify-content: space-between; gap: 8px; border-bottom: 1px solid #f0f0f0; overflow-wrap: anywhere; }
  .actor:hover, .actor.selected { background: #eef4ff; }
  .kind { color: #888; margin-right: 6px; }
  .status { font-weight: 600; white-space: nowrap; }
  .COMPLETED, .completed, .ready { color: #1a7f37; } .FAILED, .failed, .LOST { color: #cf222e; }
  .RUNNING, .running, .busy { color: #0969da; } .RETRYING, .retrying, .CANCELLED, .cancelled { color: #9a6700; }
  main { overflow: auto; padding: 0 12px 24px; }
  .state { border: 1px solid #ccc; border-radius: 8px; padding: 6px 8px; margin: 6px; display: inline-block; vertical-align: top; min-width: 120px; }
  .state.current { border: 2px solid #0969da; background: #eef4ff; }
  .state > .name { font-weight: 600; }
  .state .final { color: #888; font-size: 11px; }
  .t { font-size: 12px; color: #555; white-space: nowrap; }
  table { border-collapse: collapse; margin-top: 8px; }
  td { border-top: 1px solid #eee; padding: 3px 8px; font-size: 12px; vertical-align: top; }
  pre { background: #f6f8fa; padding: 8px; overflow: auto; max-height: 320px; }
</style>
</head>
<body>
<section id="actors"><h2>Actors (live)</h2><div id="list"></div></section>
<main><h2 id="title">Select an actor</h2><div id="machine"></div><div id="history"></div></main>
<script>
const actors = new Map();
let machines = {};
let selected = null;
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
};
const stateOf = (kind, record) => !record ? "?" : kind === "worker" ? record.state : record.status;
// A running task's latest ctx.progress, short.
const progressOf = (record) => record && record.progress ? JSON.stringify(record.progress.data).slice(0, 60) : "";
const renderList = () => {
  const list = document.getElementById("list");
  list.replaceChildren(...[...actors.values()].sort((a, b) => b.at - a.at).slice(0, 500).map((a) => {
    const row = el("div", { class: "actor" + (selected && selected.id === a.id ? " selected" : "") },
      el("span", {}, el("span", { class: "kind" }, a.kind), a.id),
      el("span", { class: "status " + a.state }, a.state + (a.progress ? " · " + a.progress : "")));
    row.onclick = () => select(a.kind, a.id);
    return row;
  }));
};
const drawState = (key, node, current) => {
  const box = el("div", { class: "state" + (key === current ? " current" : "") }, el("div", { class: "name" }, key));
  if (node.type === "final") box.append(el("div", { class: "final" }, "final"));
  for (const [event, transitions] of Object.entries(node.on || {})) {
    for (const t of transitions) {
      const target = (t.target || []).map((x) => x.split(".").pop()).join(", ") || "(stay)";
      const name = event.startsWith("xstate.after") ? "after " + event.split(".")[2] : event.startsWith("xstate.done") ? "done" : event;
      box.append(el("div", { class: "t" }, name + (t.guard ? " [" + t.guard + "]" : "") + " → " + target));
    }
  }
  for (const [k, child] of Object.entries(node.states || {})) box.append(drawState(k, child, current));
  return box;
};
const select = async (kind, id) => {
  selected = { kind, id };
  renderList();
  const res = await fetch("/api/actors/" + kind + "/" + id);
  const body = await res.json();
  const current = stateOf(kind, body.record);
  const progress = progressOf(body.record);
  document.getElementById("title").textContent = kind + " " + id + " — " + current + (progress ? " · progress " + progress : "");
  if (kind === "task" && (current === "FAILED" || current === "CANCELLED")) {
    const retry = el("button", { "data-action": "retry" }, "Retry");
    retry.onclick = async () => {
      if (!confirm("Run task " + id + " again?")) return;
      const answer = await (await fetch("/api/tasks/" + id + "/retry", { method: "POST", headers: { "x-troupe-action": "1" } })).json();
      if (answer.error) alert(answer.error);
      select(kind, id);
    };
    document.getElementById("title").append(" ", retry);
  }
  const m = machines[kind];
  document.getElementById("machine").replaceChildren(m ? drawState(m.id, m, current) : "");
  const rows = (body.events || []).map((e) => el("tr", {}, el("td", {}, e.event), el("td", {}, stateOf(kind, e.record) || ""),
    el("td", {}, (e.record && (e.record.finishedAt || e.record.startedAt || e.record.createdAt || e.record.heartbeatAt)) || "")));
  document.getElementById("history").replaceChildren(el("h2", {}, "History"), el("table", {}, ...rows),
    el("h2", {}, "Record"), el("pre", {}, JSON.stringify(body.record, null, 2)));
};
const seen = (e, at) => actors.set(e.kind + ":" + e.id, { kind: e.kind, id: e.id, state: stateOf(e.kind, e.record), progress: progressOf(e.record), at });
const start = async () => {
  machines = await (await fetch("/api/machines")).json();
  const recent = await (await fetch("/api/recent")).json();
  recent.forEach((e, i) => seen(e, i));
  renderList();
  // #task:<id> (or workflow:/worker:) opens that actor.
  const [kind, id] = location.hash.slice(1).split(":");
  if (kind && id) select(kind, id);
  const events = new EventSource("/events");
  events.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    seen(e, Date.now());
    renderList();
    if (selected && selected.id === e.id) select(e.kind, e.id);
  };
};
start();
</script>
</body>
</html>
`;
