/**
 * The inspector's page: plain HTML and JavaScript in one string, no build step, no
 * dependencies. It draws what the server sends (src/inspect/server.ts):
 *
 * - the selected actor's statechart (a laid-out `Diagram`) as inline SVG, its current state
 *   path lit at every level (`aria-current="true"`, class `lit`, `data-state` on each state),
 *   opened fitted to its column's width, zoomed with the wheel (or `+`, `-`), panned by
 *   dragging, **Fit** to return; **Hide** folds it away;
 * - a workflow's steps (a laid-out `Dag`) with each step's live status, task, attempt,
 *   duration and why it waits; a step opens its task;
 * - beside the chart on a wide window, the actor's history (heartbeats folded; selecting an
 *   event shows the machine and the record as they were then, "Live" returns to the
 *   present), a task's or a worker's handler logs (TROUPE_LOGS) in a tab, and its record, an
 *   error's stack as text;
 * - with no actor open, the queues: what waits, runs and failed per task type and queue, the
 *   last minute's rates and the workers serving each (as `troupe stats`);
 * - in the header, how many tasks and workflow runs were seen, and how many workers live;
 * - every actor seen (kind, name, status, age), filtered by kind, status and name or id,
 *   workflows with their steps under them;
 * - deep links: `#<kind>:<id>` opens an actor, `#<kind>:<id>@<seq>` one event of its history;
 * - cancel, retry and drain, each confirmed in a dialog, when the inspector allows actions.
 *
 * It is opened by the address with the token (`/?token=…`); the server keeps the token in a
 * cookie and the script drops it from the address bar. The server's CSP allows this one inline
 * script and style (by hash), and requests to the page's own origin only.
 *
 * Every text from the system goes in through `textContent` or attributes, never as markup.
 * The string is `String.raw`: the script's backslashes reach the browser as written (it
 * must hold no backtick and no dollar-brace).
 */
export const PAGE = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Troupe inspector</title>
<style>
  :root {
    --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --soft: #f6f8fa; --panel: #ffffff; --bg: #f3f4f6;
    --accent: #0969da; --accent-soft: #ddf4ff; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --idle: #6e7781;
  }
  * { box-sizing: border-box; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--fg); background: var(--bg);
    display: grid; grid-template-rows: auto 1fr; grid-template-columns: 380px 1fr; height: 100vh; }
  header.top { grid-column: 1 / 3; display: flex; align-items: center; gap: 12px; padding: 8px 16px; background: #24292f; color: #fff; }
  header.top h1 { font-size: 16px; margin: 0; font-weight: 600; }
  #conn { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #57606a; }
  #conn.on { background: var(--ok); }
  #counts { margin-left: auto; font-size: 12px; color: #d0d7de; }
  header.top a { color: #fff; font-size: 13px; }
  aside { border-right: 1px solid var(--line); background: var(--panel); display: flex; flex-direction: column; min-height: 0; }
  .filters { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 8px; padding: 10px 12px; border-bottom: 1px solid var(--line); }
  .filters label { font-size: 11px; color: var(--muted); display: flex; flex-direction: column; gap: 2px; }
  .filters label.wide { grid-column: 1 / 3; }
  select, input[type=search] { font: inherit; padding: 4px 6px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
  #list { overflow: auto; flex: 1; }
  #list .row { display: grid; grid-template-columns: 64px 1fr auto 44px; gap: 2px 8px; align-items: center; padding: 6px 12px;
    border-bottom: 1px solid #eef0f2; color: inherit; text-decoration: none; }
  #list .row:hover { background: var(--soft); }
  #list .row:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
  #list .row.selected { background: var(--accent-soft); }
  #list .row.child { padding-left: 28px; grid-template-columns: 48px 1fr auto 44px; }
  #list .row.context { opacity: .6; }
  #list .kind { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
  #list .name { font-weight: 500; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  #list .id { grid-column: 2 / 5; font: 11px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  #list .row.child .id { grid-column: 2 / 5; }
  #list .name .task { font-weight: 400; color: var(--muted); font-size: 12px; }
  #list .age { font-size: 12px; color: var(--muted); text-align: right; }
  #list .empty { padding: 16px 12px; color: var(--muted); }
  .badge { font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 10px; border: 1px solid currentColor; white-space: nowrap; color: var(--idle); }
  .s-RUNNING, .s-busy, .s-starting { color: var(--accent); }
  .s-COMPLETED, .s-ready { color: var(--ok); }
  .s-FAILED, .s-LOST, .s-lost { color: var(--bad); }
  .s-RETRYING, .s-draining, .s-disconnected { color: var(--warn); }
  .s-CANCELLED, .s-SKIPPED, .s-stopped, .s-QUEUED, .s-PENDING { color: var(--idle); }
  main { overflow: auto; padding: 16px 20px 32px; min-width: 0; }
  #welcome { color: var(--muted); max-width: 640px; }
  #welcome code { background: var(--soft); padding: 1px 4px; border-radius: 4px; }
  .head { display: flex; flex-wrap: wrap; align-items: center; gap: 10px; }
  #title { font-size: 18px; margin: 0; }
  #title .kind { color: var(--muted); font-weight: 400; }
  #subtitle { color: var(--muted); font-size: 12px; margin: 2px 0 10px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
  #subtitle a { color: var(--accent); }
  #actions { display: flex; gap: 6px; margin-left: auto; }
  button { font: inherit; font-size: 13px; padding: 4px 12px; border-radius: 6px; border: 1px solid var(--line); background: var(--soft); cursor: pointer; color: var(--fg); }
  button:hover { background: #eaeef2; }
  button:focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
  button.danger { color: #fff; background: var(--bad); border-color: var(--bad); }
  button.danger:hover { background: #a40e26; }
  #timebar { display: flex; align-items: center; gap: 10px; margin: 0 0 12px; font-size: 13px; }
  #timebar .when { color: var(--warn); font-weight: 500; }
  #live[aria-pressed=true] { color: #fff; background: var(--ok); border-color: var(--ok); }
  #notice:not(:empty) { margin: 0 0 12px; padding: 6px 10px; border-radius: 6px; background: #fff8c5; border: 1px solid #d4a72c; }
  #notice.error { background: #ffebe9; border-color: #ff8182; }
  .card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; margin: 0 0 14px; }
  .card > h2 { font-size: 13px; margin: 0; padding: 8px 12px; border-bottom: 1px solid var(--line); color: var(--muted); font-weight: 600; }
  .card > .body { padding: 10px 12px; overflow: auto; }
  .split { display: grid; grid-template-columns: minmax(0, 1.2fr) minmax(0, 1fr); gap: 14px; }
  svg { display: block; max-width: 100%; height: auto; }
  .card > h2 { display: flex; align-items: center; gap: 8px; }
  .card > h2 .tools { margin-left: auto; font-weight: 400; display: flex; gap: 4px; }
  .card > h2 button { font-size: 12px; padding: 1px 8px; }
  .card.collapsed > .body { display: none; }
  .card.collapsed > h2 { border-bottom: 0; }
  .card.collapsed .zoom { display: none; }
  .columns { display: grid; grid-template-columns: minmax(0, 1.3fr) minmax(360px, 1fr); gap: 14px; align-items: start; }
  .columns > .side { position: sticky; top: 0; min-width: 0; }
  #machine { padding: 0; overflow: hidden; position: relative; cursor: grab; touch-action: none; }
  #machine.dragging { cursor: grabbing; }
  #machine:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
  #machine svg.chart { max-width: none; height: auto; }
  .tabs { display: flex; gap: 2px; }
  .tabs button { border: 0; background: none; color: var(--muted); font-weight: 600; border-radius: 4px; }
  .tabs button[aria-selected=true] { color: var(--fg); background: var(--accent-soft); }
  #logs { max-height: 420px; overflow: auto; font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
  #logs .log-line { display: grid; grid-template-columns: auto auto 1fr; gap: 0 8px; padding: 3px 8px; border-bottom: 1px solid #eef0f2; }
  #logs .log-line .time { color: var(--muted); white-space: nowrap; }
  #logs .log-line .level { font-weight: 600; }
  #logs .log-line .msg { overflow-wrap: anywhere; }
  #logs .log-line .fields { grid-column: 3; color: var(--muted); overflow-wrap: anywhere; }
  #logs .lv-error .level, #logs .lv-fatal .level { color: var(--bad); } #logs .lv-warn .level { color: var(--warn); }
  #logs .empty, #logs .more { padding: 8px; color: var(--muted); font-family: system-ui, sans-serif; }
  #queues-card { max-width: 1100px; margin-top: 18px; }
  #queues { font-size: 13px; }
  #queues th { text-align: right; font-size: 11px; color: var(--muted); font-weight: 600; padding: 4px 8px; border-bottom: 1px solid var(--line); }
  #queues th:first-child, #queues td:first-child { text-align: left; }
  #queues td { text-align: right; padding: 4px 8px; border-bottom: 1px solid #eef0f2; font-variant-numeric: tabular-nums; }
  #queues tr.queue td { font-weight: 600; background: var(--soft); }
  #queues tr.type td:first-child { padding-left: 22px; color: var(--muted); }
  #queues td.bad:not([data-n="0"]) { color: var(--bad); }
  svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
  .state > rect { fill: #fff; stroke: #8c959f; stroke-width: 1.2; }
  .state.compound > rect.box { fill: #fafbfc; }
  .state.final > rect.inner { fill: none; stroke: #8c959f; }
  .state .name { font-size: 13px; font-weight: 600; fill: var(--fg); }
  .state .line { font-size: 11px; fill: var(--muted); }
  .state.lit > rect.box { fill: var(--accent-soft); stroke: var(--accent); stroke-width: 2.5; }
  .state.compound.lit > rect.box { fill: #f0f8ff; }
  .state.lit > rect.inner { stroke: var(--accent); }
  .state.lit .name { fill: #0550ae; }
  .edge polyline { fill: none; stroke: #6e7781; stroke-width: 1.2; }
  .edge .label-bg { fill: #fff; opacity: .9; }
  .edge text { font-size: 11px; fill: #424a53; }
  .edge.next polyline { stroke: #24292f; stroke-width: 1.6; }
  .edge.next text { fill: #1f2328; }
  .initial { fill: var(--fg); }
  .initial-line { stroke: var(--fg); stroke-width: 1.2; }
  .marker { fill: #6e7781; }
  .marker.lit { fill: #24292f; }
  .machine-internal { font-size: 11px; fill: var(--muted); }
  .step { cursor: pointer; }
  .step:focus { outline: none; }
  .step:focus-visible > rect.box { stroke: var(--accent); stroke-width: 3; }
  .step > rect.box { fill: #fff; stroke: #8c959f; stroke-width: 1.2; }
  .step > rect.bar { fill: var(--idle); }
  .step .name { font-size: 13px; font-weight: 600; fill: var(--fg); }
  .step .line { font-size: 11px; fill: var(--muted); }
  .step .status { font-size: 11px; font-weight: 600; }
  .step .stuck { font-size: 11px; fill: var(--warn); }
  .st-RUNNING > rect.box { stroke: var(--accent); stroke-width: 2; fill: #f5faff; } .st-RUNNING > rect.bar, .st-RUNNING .status { fill: var(--accent); }
  .st-QUEUED .status, .st-PENDING .status { fill: var(--idle); }
  .st-RETRYING > rect.box { stroke: var(--warn); stroke-width: 2; } .st-RETRYING > rect.bar, .st-RETRYING .status { fill: var(--warn); }
  .st-COMPLETED > rect.bar, .st-COMPLETED .status { fill: var(--ok); } .st-COMPLETED > rect.box { fill: #f3fbf5; }
  .st-FAILED > rect.box { stroke: var(--bad); stroke-width: 2; fill: #fff6f6; } .st-FAILED > rect.bar, .st-FAILED .status { fill: var(--bad); }
  .st-SKIPPED > rect.box, .st-CANCELLED > rect.box { stroke-dasharray: 5 3; fill: var(--soft); } .st-SKIPPED .status, .st-CANCELLED .status { fill: var(--idle); }
  .st-SKIPPED > rect.bar, .st-CANCELLED > rect.bar { fill: #afb8c1; }
  .dep polyline { fill: none; stroke: #8c959f; stroke-width: 1.5; }
  .dep.done polyline { stroke: var(--ok); }
  ul.stuck-list { margin: 8px 0 0; padding-left: 18px; color: var(--warn); font-size: 12px; }
  table { border-collapse: collapse; width: 100%; }
  #history th { text-align: left; font-size: 11px; color: var(--muted); font-weight: 600; padding: 4px 8px; border-bottom: 1px solid var(--line); position: sticky; top: 0; background: var(--panel); }
  #history td { padding: 4px 8px; font-size: 12px; border-bottom: 1px solid #eef0f2; vertical-align: top; }
  #history td.time { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; color: var(--muted); }
  #history td.state { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; }
  #history td.event { white-space: nowrap; }
  #history td.detail { color: var(--muted); overflow-wrap: anywhere; }
  #history tbody tr { cursor: pointer; }
  #history tbody tr.omitted { cursor: default; color: var(--muted); font-style: italic; }
  #history tbody tr:hover { background: var(--soft); }
  #history tbody tr:focus-visible { outline: 2px solid var(--accent); outline-offset: -2px; }
  #history tbody tr.selected { background: #fff8c5; }
  #history tbody tr.now td.event::after { content: " \2190 now"; color: var(--ok); font-size: 11px; }
  .history-body { max-height: 420px; padding: 0 !important; }
  pre#record { margin: 0; font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 420px; overflow: auto; }
  .error-box { margin: 0 0 8px; padding: 6px 8px; background: #ffebe9; border-radius: 6px; color: #82071e; font-size: 12px; overflow-wrap: anywhere; }
  .error-box pre.stack { margin: 6px 0 0; font: 11px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 240px; overflow: auto; color: #6e1020; }
  dialog { border: 1px solid var(--line); border-radius: 10px; padding: 18px 20px; max-width: 440px; box-shadow: 0 8px 24px rgba(140,149,159,.3); }
  dialog::backdrop { background: rgba(31,35,40,.35); }
  dialog h3 { margin: 0 0 8px; font-size: 16px; }
  dialog p { margin: 0 0 16px; color: var(--muted); overflow-wrap: anywhere; }
  dialog .buttons { display: flex; justify-content: flex-end; gap: 8px; }
  [hidden] { display: none !important; }
  @media (max-width: 900px) { body { grid-template-columns: 1fr; grid-template-rows: auto 40vh 1fr; } header.top { grid-column: 1; } .split { grid-template-columns: 1fr; } }
  @media (max-width: 1300px) { .columns { grid-template-columns: 1fr; } .columns > .side { position: static; } }
</style>
</head>
<body>
<header class="top">
  <h1>Troupe inspector</h1>
  <span id="conn" role="status">connecting…</span>
  <a href="#" id="home-link">Queues</a>
  <span id="counts"></span>
</header>
<aside aria-label="Actors">
  <div class="filters">
    <label for="filter-kind">Kind
      <select id="filter-kind">
        <option value="">all kinds</option><option value="task">tasks</option><option value="workflow">workflows</option><option value="worker">workers</option>
      </select>
    </label>
    <label for="filter-status">Status
      <select id="filter-status">
        <option value="">any status</option>
        <optgroup label="tasks and workflows">
          <option>PENDING</option><option>QUEUED</option><option>RUNNING</option><option>RETRYING</option>
          <option>COMPLETED</option><option>FAILED</option><option>CANCELLED</option><option>LOST</option>
        </optgroup>
        <optgroup label="workers">
          <option>starting</option><option>ready</option><option>busy</option><option>disconnected</option>
          <option>draining</option><option>stopped</option><option>lost</option>
        </optgroup>
      </select>
    </label>
    <label for="filter-text" class="wide">Name or id
      <input id="filter-text" type="search" placeholder="e.g. resize or a task id" autocomplete="off">
    </label>
  </div>
  <nav id="list" aria-label="Actors, newest first"></nav>
</aside>
<main>
  <div id="welcome">
    <h2>Select an actor</h2>
    <p>Tasks, workflow runs and workers appear on the left as they change. Open one by link:
      <code>#task:&lt;id&gt;</code>, <code>#workflow:&lt;id&gt;</code>, <code>#worker:&lt;id&gt;</code>;
      one event of its history: <code>#task:&lt;id&gt;@&lt;seq&gt;</code>.</p>
    <section class="card" id="queues-card"><h2>Queues <span class="tools" id="queues-at"></span></h2><div class="body">
      <table id="queues" aria-label="Queues"><thead><tr><th scope="col">Queue / task</th><th scope="col">Waiting</th><th scope="col">Running</th><th scope="col">Failed</th>
        <th scope="col">Completed</th><th scope="col">Done/min</th><th scope="col">Failed/min</th><th scope="col">Workers</th></tr></thead><tbody></tbody></table>
      <p class="line" id="queues-note">Failed and completed: within the index's retention; running: delivered, not yet settled; rates: over the last minute.</p>
    </div></section>
  </div>
  <div id="actor" hidden>
    <div class="head">
      <h2 id="title"></h2>
      <span id="status" class="badge"></span>
      <div id="actions"></div>
    </div>
    <div id="subtitle"></div>
    <div id="notice" role="status" aria-live="polite"></div>
    <div id="timebar">
      <button id="live" type="button" aria-pressed="true">Live</button>
      <span id="when"></span>
    </div>
    <section class="card" id="graph-card" hidden><h2>Steps</h2><div class="body" id="graph"></div></section>
    <div class="columns">
      <section class="card" id="chart-card"><h2><span id="machine-title">Statechart</span><span class="tools">
        <button class="zoom" id="zoom-out" type="button" aria-label="Zoom out" aria-controls="machine">−</button>
        <button class="zoom" id="zoom-in" type="button" aria-label="Zoom in" aria-controls="machine">+</button>
        <button class="zoom" id="fit" type="button" aria-controls="machine" title="Fit the whole chart to the width">Fit</button>
        <button id="chart-toggle" type="button" aria-expanded="true" aria-controls="machine">Hide</button></span></h2>
        <div class="body" id="machine" tabindex="0" aria-label="Statechart: wheel or + and - zoom, drag or arrows pan, 0 fits"></div></section>
      <div class="side">
        <section class="card"><h2><span class="tabs" role="tablist">
          <button type="button" role="tab" id="tab-history" aria-controls="history-panel" aria-selected="true">History</button>
          <button type="button" role="tab" id="tab-logs" aria-controls="logs-panel" aria-selected="false">Logs</button></span></h2>
          <div class="body history-body" id="history-panel" role="tabpanel" aria-labelledby="tab-history">
            <table id="history"><thead><tr><th scope="col">Time</th><th scope="col">Event</th><th scope="col">State</th><th scope="col">Detail</th></tr></thead><tbody></tbody></table>
          </div>
          <div class="body" id="logs-panel" role="tabpanel" aria-labelledby="tab-logs" hidden><div id="logs" aria-live="polite"></div></div>
        </section>
        <section class="card"><h2 id="record-title">Record</h2><div class="body"><div id="record-error"></div><pre id="record"></pre></div></section>
      </div>
    </div>
  </div>
</main>
<dialog id="confirm" aria-labelledby="confirm-title" aria-describedby="confirm-text">
  <form method="dialog">
    <h3 id="confirm-title"></h3>
    <p id="confirm-text"></p>
    <div class="buttons">
      <button value="no" type="submit" autofocus>Keep it</button>
      <button value="yes" type="submit" class="danger" data-confirm></button>
    </div>
  </form>
</dialog>
<script>
"use strict";
// The token came in the address (the server keeps it in a cookie): out of the address bar and the history.
if (location.search !== "") history.replaceState(null, "", location.pathname + location.hash);
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);

// ---- DOM building: text only ever goes in as text nodes or attribute values ----
const put = (node, attrs, children) => {
  for (const k of Object.keys(attrs || {})) {
    const v = attrs[k];
    if (v === undefined || v === null || v === false) continue;
    if (typeof v === "function") node.addEventListener(k.replace(/^on/, ""), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
};
const h = (tag, attrs, ...children) => put(document.createElement(tag), attrs, children);
const s = (tag, attrs, ...children) => put(document.createElementNS(SVG_NS, tag), attrs, children);
/** Replaces a node's children (nested lists flattened, null and undefined left out). */
const fill = (node, ...children) => { node.replaceChildren(); return put(node, {}, children); };

// ---- What the page knows ----
const app = {
  config: { actions: false },
  machines: {},
  actors: new Map(),   // "kind:id" -> { kind, id, name, status, state, created, at, seq, record, parent }
  stepOf: new Map(),   // task id -> { run, step }, from workflow records
  view: null,          // { kind, id, seq, body, graph, event, error, logs }
  tab: "history",      // the side's tab: "history" or "logs"
  token: 0,
};
const KINDS = ["task", "workflow", "worker"];
const ID = /^[A-Za-z0-9_-]+$/;

const topOf = (state) => (typeof state === "string" && state ? state.split(".")[0] : "");
const statusOf = (kind, record, state) => {
  if (kind === "task" && topOf(state) === "LOST") return "LOST";
  if (record && kind === "worker" && record.state) return String(record.state);
  if (record && kind !== "worker" && record.status) return String(record.status);
  return topOf(state) || "?";
};
const nameOf = (kind, record) => {
  if (!record) return "";
  if (kind === "task") return record.task || "";
  if (kind === "workflow") return record.workflow || "";
  return record.hostname ? record.hostname + (record.pid ? ":" + record.pid : "") : "";
};
/** The workflow run and step a task belongs to, from its record. */
const parentOf = (kind, record) => {
  if (kind !== "task" || !record) return undefined;
  const w = record.workflow;
  if (w && typeof w === "object" && (w.run || w.id)) return { run: String(w.run || w.id), step: String(w.step || "") };
  if (typeof record.notify === "string" && record.notify.indexOf("troupe.steps.") === 0) {
    const parts = record.notify.split(".");
    if (parts[2]) return { run: parts[2], step: parts[3] || "" };
  }
  return undefined;
};
const stepInfo = (a) => (a.kind === "task" ? a.parent || app.stepOf.get(a.id) : undefined);
/** The state path an event or a detail answer stands for: the live actor's, else the record's status. */
const pathOf = (kind, e) => (e && typeof e.state === "string" && e.state ? e.state : statusOf(kind, e && e.record, undefined));

const seen = (e) => {
  if (!e || !KINDS.includes(e.kind) || typeof e.id !== "string" || !ID.test(e.id)) return;
  const key = e.kind + ":" + e.id;
  let a = app.actors.get(key);
  if (!a) {
    a = { kind: e.kind, id: e.id, seq: -1, name: "", firstAt: e.at };
    app.actors.set(key, a);
  }
  if (typeof e.seq === "number") {
    if (e.seq < a.seq) return;
    a.seq = e.seq;
  }
  a.at = e.at || new Date().toISOString();
  // An attempt's loss is that attempt's event: the task's record and state are the winner's.
  if (e.kind === "task" && e.event === "lost") return;
  a.event = e.event;
  if (e.record) a.record = e.record;
  if (e.event !== "heartbeat" || !a.state) a.state = e.state;
  a.status = statusOf(e.kind, a.record, e.state);
  a.name = nameOf(e.kind, a.record) || a.name;
  const r = a.record || {};
  a.created = r.createdAt || r.startedAt || a.firstAt || a.at;
  const p = e.kind === "task" && e.workflow && e.workflow.run ? { run: String(e.workflow.run), step: String(e.workflow.step || "") } : parentOf(e.kind, e.record);
  if (p) a.parent = p;
  if (e.kind === "workflow" && r.steps && typeof r.steps === "object") {
    for (const step of Object.keys(r.steps)) {
      const st = r.steps[step];
      if (st && typeof st.taskId === "string") app.stepOf.set(st.taskId, { run: e.id, step });
    }
  }
};

// ---- Formatting ----
const pad = (n, w) => String(n).padStart(w || 2, "0");
const fmtTime = (iso) => {
  const d = new Date(iso);
  if (!iso || isNaN(d.getTime())) return "—";
  const now = new Date();
  const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  return d.toDateString() === now.toDateString() ? time : d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
};
const fmtDuration = (ms) => {
  if (typeof ms !== "number" || !isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  const m = Math.floor(ms / 60000);
  if (m < 60) return m + " min " + Math.round((ms % 60000) / 1000) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
};
const fmtAge = (iso) => {
  const t = Date.parse(iso);
  if (isNaN(t)) return "";
  const sec = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (sec < 60) return sec + "s";
  if (sec < 3600) return Math.floor(sec / 60) + "m";
  if (sec < 86400) return Math.floor(sec / 3600) + "h";
  return Math.floor(sec / 86400) + "d";
};
const short = (value, n) => {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text === undefined ? "" : text.length > n ? text.slice(0, n - 1) + "…" : text;
};

// ---- The list ----
const filters = () => ({ kind: $("#filter-kind").value, status: $("#filter-status").value, text: $("#filter-text").value.trim().toLowerCase() });
const byRecent = (a, b) => (Date.parse(b.at) || 0) - (Date.parse(a.at) || 0) || b.seq - a.seq;
const byCreated = (a, b) => (Date.parse(a.created) || 0) - (Date.parse(b.created) || 0);

const listRow = (a, child, contextOnly) => {
  const v = app.view;
  const selected = v !== null && v.kind === a.kind && v.id === a.id;
  const step = stepInfo(a);
  const label = child && step && step.step ? step.step : a.name || a.id;
  return h("a", {
    class: "row" + (child ? " child" : "") + (selected ? " selected" : "") + (contextOnly ? " context" : ""),
    href: "#" + a.kind + ":" + a.id, "data-kind": a.kind, "data-id": a.id, "data-status": a.status,
    "aria-current": selected ? "page" : undefined,
    title: a.kind + " " + a.id + (a.name ? " (" + a.name + ")" : ""),
  },
    h("span", { class: "kind" }, child ? "step" : a.kind),
    h("span", { class: "name" }, label, child && a.name && a.name !== label ? h("span", { class: "task" }, " · " + a.name) : null),
    h("span", { class: "badge s-" + a.status }, a.status),
    h("span", { class: "age", "data-created": a.created || "", title: "created " + fmtTime(a.created) }, fmtAge(a.created)),
    h("span", { class: "id" }, a.id));
};

const renderList = () => {
  const f = filters();
  const matches = (a) => (!f.kind || a.kind === f.kind) && (!f.status || a.status === f.status) &&
    (!f.text || a.id.toLowerCase().includes(f.text) || (a.name || "").toLowerCase().includes(f.text) ||
      ((stepInfo(a) || {}).step || "").toLowerCase().includes(f.text));
  const kids = new Map();
  const top = [];
  for (const a of app.actors.values()) {
    const p = stepInfo(a);
    if (p && app.actors.has("workflow:" + p.run)) {
      if (!kids.has(p.run)) kids.set(p.run, []);
      kids.get(p.run).push(a);
    } else top.push(a);
  }
  top.sort(byRecent);
  const rows = [];
  for (const a of top) {
    if (rows.length >= 500) break;
    const mine = a.kind === "workflow" ? (kids.get(a.id) || []).filter(matches).sort(byCreated) : [];
    const self = matches(a);
    if (!self && mine.length === 0) continue;
    rows.push(listRow(a, false, !self));
    for (const k of mine) rows.push(listRow(k, true, false));
  }
  const list = $("#list");
  const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("#list .row") : null;
  const focusKey = focused ? focused.getAttribute("href") : null;
  list.replaceChildren(...(rows.length ? rows : [h("div", { class: "empty" }, app.actors.size ? "Nothing matches the filters." : "No actors yet: they appear as they change.")]));
  if (focusKey) {
    for (const r of list.querySelectorAll(".row")) if (r.getAttribute("href") === focusKey) r.focus();
  }
  const count = (k) => { const n = [...app.actors.values()].filter((a) => a.kind === k).length; return n + " " + k + (n === 1 ? "" : "s"); };
  // Workers: the live ones (a stopped or lost worker stays in the list, not in the count).
  const live = [...app.actors.values()].filter((a) => a.kind === "worker" && a.status !== "stopped" && a.status !== "lost").length;
  $("#counts").textContent = count("task") + " · " + count("workflow") + " · " + live + " live worker" + (live === 1 ? "" : "s");
};
let listTimer = 0;
const scheduleList = () => {
  if (listTimer) return;
  listTimer = setTimeout(() => { listTimer = 0; renderList(); }, 200);
};

// ---- The statechart ----
const litSet = (path) => {
  const lit = new Set();
  const paths = Array.isArray(path) ? path : [path];
  for (const p of paths) {
    if (typeof p !== "string" || !p) continue;
    const parts = p.split(".");
    for (let i = 1; i <= parts.length; i++) lit.add(parts.slice(0, i).join("."));
  }
  return lit;
};
const arrowDefs = (id) => s("defs", {},
  s("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" },
    s("path", { d: "M0,0 L10,5 L0,10 z", class: "marker" })),
  s("marker", { id: id + "-lit", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" },
    s("path", { d: "M0,0 L10,5 L0,10 z", class: "marker lit" })));
const pointsOf = (pts) => pts.map((p) => p.x + "," + p.y).join(" ");
const MARGIN = 18;

const drawMachine = (diagram, path, kind) => {
  if (!diagram || !Array.isArray(diagram.nodes)) return h("p", { class: "line" }, "No diagram of the " + kind + " machine.");
  const lit = litSet(path);
  const svg = s("svg", {
    width: diagram.width + 2 * MARGIN, height: diagram.height + 2 * MARGIN + (diagram.internal ? 16 : 0),
    viewBox: "0 0 " + (diagram.width + 2 * MARGIN) + " " + (diagram.height + 2 * MARGIN + (diagram.internal ? 16 : 0)),
    role: "group", "aria-label": "The " + kind + " machine" + (lit.size ? ", in " + path : ""), class: "chart",
    "data-width": diagram.width + 2 * MARGIN, "data-height": diagram.height + 2 * MARGIN + (diagram.internal ? 16 : 0),
  }, arrowDefs("arrow-" + kind));
  const root = s("g", { transform: "translate(" + MARGIN + "," + MARGIN + ")" });
  svg.append(root);
  const compound = new Set(diagram.nodes.map((n) => n.parent).filter(Boolean));
  const depth = (n) => n.path.split(".").length;
  const nodes = [...diagram.nodes].sort((a, b) => depth(a) - depth(b));
  for (const n of nodes) {
    const on = lit.has(n.path);
    const isCompound = compound.has(n.path);
    const lines = [];
    if (n.entry && n.entry.length) lines.push("entry / " + n.entry.join(", "));
    if (n.exit && n.exit.length) lines.push("exit / " + n.exit.join(", "));
    if (n.tags && n.tags.length) lines.push("tags: " + n.tags.join(", "));
    for (const i of n.internal || []) lines.push(i);
    const g = s("g", {
      "data-state": n.path, class: "state" + (on ? " lit" : "") + (isCompound ? " compound" : "") + (n.final ? " final" : ""),
      "aria-current": on ? "true" : undefined, role: "group", "aria-label": "state " + n.path + (n.final ? " (final)" : ""),
    }, s("title", {}, n.path + (n.final ? " (final)" : "") + (on ? " — current" : "")),
      s("rect", { class: "box", x: n.x, y: n.y, width: n.width, height: n.height, rx: 10, ry: 10 }));
    if (n.final) g.append(s("rect", { class: "inner", x: n.x + 4, y: n.y + 4, width: Math.max(0, n.width - 8), height: Math.max(0, n.height - 8), rx: 7, ry: 7 }));
    // The name (13px) and detail lines (11px, 14px apart): at the top of a compound state, centred in a leaf.
    const block = 18 + 14 * lines.length;
    const top = isCompound ? n.y + 8 : n.y + (n.height - block) / 2;
    const cx = isCompound ? n.x + 12 : n.x + n.width / 2;
    const anchor = isCompound ? "start" : "middle";
    g.append(s("text", { class: "name", x: cx, y: top + 14, "text-anchor": anchor }, n.name));
    lines.forEach((line, i) => g.append(s("text", { class: "line", x: cx, y: top + 18 + 14 * (i + 1) - 3, "text-anchor": anchor }, line)));
    root.append(g);
    if (n.initial) {
      const y = n.y + Math.min(20, n.height / 2);
      root.append(s("g", { class: "initial-mark", "aria-hidden": "true" },
        s("circle", { class: "initial", cx: n.x - 13, cy: y, r: 4.5 }),
        s("line", { class: "initial-line", x1: n.x - 9, y1: y, x2: n.x - 1, y2: y, "marker-end": "url(#arrow-" + kind + ")" })));
    }
  }
  for (const e of diagram.edges || []) {
    // The transitions the current state can take next.
    const next = lit.has(e.source);
    const g = s("g", { class: "edge" + (next ? " next" : ""), role: "img", "aria-label": "from " + e.source + " to " + e.target + ": " + e.label, "data-edge": e.id, "data-event": e.event, "data-source": e.source, "data-target": e.target },
      s("title", {}, e.source + " → " + e.target + ": " + e.label));
    let pts = Array.isArray(e.points) ? e.points : [];
    if (pts.length < 2 && e.source === e.target) {
      const n = diagram.nodes.find((x) => x.path === e.source);
      if (n) pts = [{ x: n.x + n.width - 24, y: n.y }, { x: n.x + n.width - 24, y: n.y - 14 }, { x: n.x + n.width + 14, y: n.y - 14 }, { x: n.x + n.width + 14, y: n.y + 16 }, { x: n.x + n.width, y: n.y + 16 }];
    }
    if (pts.length >= 2) g.append(s("polyline", { points: pointsOf(pts), "marker-end": "url(#arrow-" + kind + (next ? "-lit" : "") + ")" }));
    if (e.label && e.labelWidth) {
      g.append(s("rect", { class: "label-bg", x: e.labelX, y: e.labelY, width: e.labelWidth, height: e.labelHeight, rx: 3 }),
        s("text", { x: e.labelX + 3, y: e.labelY + e.labelHeight - 4 }, e.caption || e.label));
    }
    root.append(g);
  }
  if (diagram.internal && diagram.internal.length) {
    root.append(s("text", { class: "machine-internal", x: 0, y: diagram.height + 12 }, "in every state: " + diagram.internal.join(" · ")));
  }
  return svg;
};

// ---- The workflow graph ----
const stepStatus = (st) => st.status + (st.attempt && (st.status === "RETRYING" || st.attempt > 1) ? " · attempt " + st.attempt : "");
const stepDuration = (st) => fmtDuration(typeof st.durationMs === "number" ? st.durationMs
  : st.startedAt && (st.finishedAt || st.status === "RUNNING") ? (Date.parse(st.finishedAt || new Date().toISOString()) - Date.parse(st.startedAt)) : undefined);
const stepLine = (st) => stepStatus(st) + (stepDuration(st) ? " · " + stepDuration(st) : "");
const drawGraph = (graph, past) => {
  const dag = graph && graph.dag;
  if (!dag || !Array.isArray(dag.nodes)) return h("p", {}, "No graph of this workflow.");
  const steps = new Map((graph.steps || []).map((st) => [st.step, st]));
  const statusOfStep = (name) => {
    const st = steps.get(name) || { status: "PENDING" };
    const then = past && past.steps && past.steps[name];
    return then ? Object.assign({}, st, { status: then.status, attempt: undefined, durationMs: undefined, startedAt: undefined, stuck: undefined }) : st;
  };
  const svg = s("svg", {
    width: dag.width + 2 * MARGIN, height: dag.height + 2 * MARGIN, viewBox: "0 0 " + (dag.width + 2 * MARGIN) + " " + (dag.height + 2 * MARGIN),
    role: "group", "aria-label": "Steps of workflow " + (graph.workflow || graph.id), class: "dag",
  }, arrowDefs("arrow-dag"));
  const root = s("g", { transform: "translate(" + MARGIN + "," + MARGIN + ")" });
  svg.append(root);
  for (const e of dag.edges || []) {
    const done = statusOfStep(e.from).status === "COMPLETED";
    if (Array.isArray(e.points) && e.points.length >= 2)
      root.append(s("g", { class: "dep" + (done ? " done" : ""), "data-from": e.from, "data-to": e.to },
        s("polyline", { points: pointsOf(e.points), "marker-end": "url(#arrow-dag)" })));
  }
  const stuck = [];
  for (const n of dag.nodes) {
    const st = statusOfStep(n.step);
    const taskId = st.taskId || (steps.get(n.step) || {}).taskId;
    const open = () => { if (taskId) location.hash = "task:" + taskId; };
    const chars = Math.max(8, Math.floor((n.width - 20) / 6.6));
    const took = stepDuration(st);
    const g = s("g", {
      class: "step st-" + st.status, "data-step": n.step, "data-status": st.status, "data-task-id": taskId,
      tabindex: taskId ? "0" : undefined, role: taskId ? "link" : "img",
      "aria-label": "step " + n.step + ", task " + (st.task || "?") + ": " + stepLine(st) + (st.stuck ? "; " + st.stuck : ""),
      onclick: open, onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(); } },
    }, s("title", {}, n.step + (st.task ? " — task " + st.task : "") + (taskId ? " (" + taskId + ")" : "") + (st.stuck ? "\n" + st.stuck : "")),
      s("rect", { class: "box", x: n.x, y: n.y, width: n.width, height: n.height, rx: 8, ry: 8 }),
      s("rect", { class: "bar", x: n.x, y: n.y + 6, width: 4, height: Math.max(0, n.height - 12), rx: 2 }),
      s("text", { class: "name", x: n.x + 12, y: n.y + 19 }, short(n.step, Math.floor((n.width - 20) / 8))),
      s("text", { class: "line", x: n.x + 12, y: n.y + 35 }, short(st.task || "", took ? chars - took.length - 1 : chars)),
      took ? s("text", { class: "line duration", x: n.x + n.width - 8, y: n.y + 35, "text-anchor": "end" }, took) : null,
      s("text", { class: "status", x: n.x + 12, y: n.y + 51 }, short(stepStatus(st), chars)));
    if (st.stuck) {
      g.append(s("text", { class: "stuck", x: n.x + n.width - 8, y: n.y + 19, "text-anchor": "end" }, "⚠"));
      stuck.push(n.step + ": " + st.stuck);
    }
    root.append(g);
  }
  const wrap = h("div", {}, svg);
  if (stuck.length) wrap.append(h("ul", { class: "stuck-list", "aria-label": "Why steps wait" }, stuck.map((t) => h("li", {}, t))));
  return wrap;
};

// ---- History ----
const detailOf = (kind, e) => {
  const r = e.record || {};
  const bits = [];
  if (kind === "task") {
    if (r.attempt) bits.push("attempt " + r.attempt);
    if (r.workerId && (e.event === "started" || e.event === "lost")) bits.push("on " + r.workerId);
    if (e.event === "progress" && r.progress) bits.push(short(r.progress.data, 60));
    if (r.error && (e.event === "failed" || e.event === "retrying" || e.event === "cancelled")) bits.push(r.error._tag + ": " + short(r.error.message, 80));
    if (e.event === "completed" && r.output !== undefined) bits.push("→ " + short(r.output, 60));
  } else if (kind === "workflow") {
    const steps = r.steps || {};
    const names = Object.keys(steps);
    const done = names.filter((n) => steps[n] && steps[n].status === "COMPLETED").length;
    if (names.length) bits.push(done + "/" + names.length + " steps completed");
    if (r.error) bits.push(short(r.error.message, 80));
  } else {
    if (typeof r.running === "number") bits.push(r.running + "/" + (r.concurrency || "?") + " running");
    if (typeof r.processed === "number") bits.push(r.processed + " processed");
  }
  return bits.join(" · ");
};
/** Events in rows: runs of heartbeats fold into one. */
const foldHistory = (events) => {
  const rows = [];
  for (const e of events) {
    const last = rows[rows.length - 1];
    if (e.event === "heartbeat" && last && last.last.event === "heartbeat") {
      last.last = e;
      last.count++;
      last.seqs.push(e.seq);
    } else rows.push({ first: e, last: e, count: 1, seqs: [e.seq] });
  }
  return rows;
};
const renderHistory = () => {
  const v = app.view;
  const events = (v.body && v.body.events) || [];
  const rows = foldHistory(events);
  const tbody = $("#history tbody");
  const selectedSeq = v.seq;
  const trs = rows.map((row, i) => {
    const e = row.last;
    const selected = selectedSeq !== undefined && row.seqs.includes(selectedSeq);
    const isNow = i === rows.length - 1;
    const go = () => { location.hash = v.kind + ":" + v.id + "@" + e.seq; };
    return h("tr", {
      "data-seq": e.seq, "data-event": e.event, tabindex: "0",
      class: (selected ? "selected" : "") + (isNow ? " now" : ""), "aria-current": selected ? "time" : undefined,
      onclick: go, onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); go(); } },
    },
      h("td", { class: "time", title: (row.count > 1 ? row.first.at + " – " : "") + (e.at || "") },
        row.count > 1 ? fmtTime(row.first.at) + " – " + fmtTime(e.at).slice(-12) : fmtTime(e.at)),
      h("td", { class: "event" }, row.count > 1 ? e.event + " ×" + row.count : e.event),
      h("td", { class: "state" }, pathOf(v.kind, e)),
      h("td", { class: "detail" }, detailOf(v.kind, e)));
  });
  const omitted = v.body && v.body.omitted ? [h("tr", { class: "omitted" }, h("td", { colspan: 4 }, v.body.omitted + " earlier events not shown"))] : [];
  tbody.replaceChildren(...omitted, ...(trs.length ? trs : [h("tr", {}, h("td", { colspan: 4 }, "No events kept for this actor."))]));
};

// ---- The selected actor ----
const ACTIONS = {
  task: [
    { action: "cancel", label: "Cancel", when: (st) => st === "QUEUED" || st === "RUNNING" || st === "RETRYING",
      url: (id) => "/api/tasks/" + id + "/cancel", ask: (id) => ["Cancel task " + id + "?", "A running handler is interrupted; the task ends CANCELLED.", "Cancel task"] },
    { action: "retry", label: "Retry", when: (st) => st === "FAILED" || st === "CANCELLED",
      url: (id) => "/api/tasks/" + id + "/retry", ask: (id) => ["Run task " + id + " again?", "Same id, its history kept; it is queued again.", "Retry task"] },
  ],
  workflow: [
    { action: "cancel", label: "Cancel", when: (st) => st === "PENDING" || st === "RUNNING",
      url: (id) => "/api/workflows/" + id + "/cancel", ask: (id) => ["Cancel workflow " + id + "?", "Its running steps are cancelled and no further step starts.", "Cancel workflow"] },
  ],
  worker: [
    { action: "drain", label: "Drain", when: (st) => st !== "stopped" && st !== "lost" && st !== "draining",
      url: (id) => "/api/workers/" + id + "/drain", ask: (id) => ["Drain worker " + id + "?", "It takes no new work; running tasks finish, then it stops.", "Drain worker"] },
  ],
};
const ask = (title, text, verb) => new Promise((resolve) => {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  dialog.querySelector("[data-confirm]").textContent = verb;
  dialog.returnValue = "";
  dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  dialog.showModal();
});
const notice = (text, error) => {
  const n = $("#notice");
  n.textContent = text;
  n.className = error ? "error" : "";
};
const act = async (spec, v) => {
  const [title, text, verb] = spec.ask(v.id);
  if (!(await ask(title, text, verb))) return;
  try {
    const res = await fetch(spec.url(v.id), { method: "POST", headers: { "X-Troupe-Action": "1" } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok || body.error) notice(verb + ": " + (body.error || res.status + " " + res.statusText), true);
    else notice(verb + ": done.");
  } catch (err) {
    notice(verb + ": " + err, true);
  }
  scheduleRefresh(0);
};

const renderView = () => {
  const v = app.view;
  $("#welcome").hidden = v !== null;
  $("#actor").hidden = v === null;
  if (v === null) { loadQueues(); return; }
  const body = v.body;
  const known = app.actors.get(v.kind + ":" + v.id);
  const record = body ? body.record : known && known.record;
  const status = body ? statusOf(v.kind, body.record, body.state) : known ? known.status : "?";
  const name = nameOf(v.kind, record);
  $("#title").replaceChildren(h("span", { class: "kind" }, v.kind + " "), name || v.id);
  const badge = $("#status");
  badge.textContent = status;
  badge.className = "badge s-" + status;
  const step = v.kind === "task" ? parentOf("task", record) || (known && known.parent) || app.stepOf.get(v.id) : undefined;
  fill($("#subtitle"), v.id,
    step ? [" · step " + (step.step || "?") + " of workflow ", h("a", { href: "#workflow:" + step.run }, step.run)] : null,
    record && record.queue ? " · queue " + record.queue : null,
    record && record.workerId && v.kind === "task" ? [" · worker ", h("a", { href: "#worker:" + record.workerId }, record.workerId)] : null);
  const actions = $("#actions");
  actions.replaceChildren(...(app.config.actions ? (ACTIONS[v.kind] || []).filter((a) => a.when(status)).map((a) =>
    h("button", { type: "button", "data-action": a.action, class: a.action === "retry" ? "" : "danger", onclick: () => act(a, v) }, a.label)) : []));

  if (v.error) {
    notice(v.error, true);
  }
  const past = v.seq !== undefined ? v.event : undefined;
  const live = $("#live");
  live.setAttribute("aria-pressed", past ? "false" : "true");
  live.textContent = past ? "Back to live" : "Live";
  $("#when").replaceChildren(past ? h("span", { class: "when" }, "As of event #" + past.seq + " (" + past.event + ") at " + fmtTime(past.at)) :
    v.seq !== undefined ? h("span", { class: "when" }, "Event #" + v.seq + " is no longer kept") : "Showing the present; select a history row to see the machine as it was then.");

  const isWorkflow = v.kind === "workflow";
  $("#graph-card").hidden = !isWorkflow;
  if (isWorkflow) $("#graph").replaceChildren(v.graph ? drawGraph(v.graph, past && past.record) : h("p", {}, "Loading the graph…"));
  const path = past ? pathOf(v.kind, past) : body ? (body.state || statusOf(v.kind, body.record, undefined)) : known && (known.state || known.status);
  $("#machine-title").textContent = "Statechart — " + (path || "?") + (past ? " (then)" : "");
  const machine = $("#machine");
  machine.replaceChildren(drawMachine(app.machines[v.kind], path, v.kind));
  // Another actor opens fitted; the same one keeps the user's zoom and pan as it changes.
  const key = v.kind + ":" + v.id;
  if (view.key !== key || view.fitted) { view.key = key; fitView(machine); } else applyView(machine);
  if (body) renderHistory();
  renderTabs();
  const shown = past ? past.record : record;
  $("#record-title").textContent = past ? "Record at event #" + past.seq : "Record (now)";
  const err = shown && typeof shown.error === "object" ? shown.error : undefined;
  // A stack is text with its line breaks, not a JSON string.
  $("#record-error").replaceChildren(err ? h("div", { class: "error-box" }, h("div", { class: "error-title" }, (err._tag || "Error") + ": " + (err.message || "")),
    typeof err.stack === "string" && err.stack ? h("pre", { class: "stack", "aria-label": "Stack" }, err.stack) : null) : "");
  const plain = err && typeof err.stack === "string" ? Object.assign({}, shown, { error: Object.assign({}, err, { stack: "(shown above)" }) }) : shown;
  $("#record").textContent = shown === undefined ? "" : JSON.stringify(plain, null, 2);
};

// ---- Tabs: history, logs ----
const LEVELS = { 10: "trace", 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal" };
const hasLogs = (kind) => kind === "task" || kind === "worker";
const renderTabs = () => {
  const v = app.view;
  if (!v) return;
  if (!hasLogs(v.kind) && app.tab === "logs") app.tab = "history";
  $("#tab-logs").hidden = !hasLogs(v.kind);
  for (const [tab, panel] of [["history", "#history-panel"], ["logs", "#logs-panel"]]) {
    $("#tab-" + tab).setAttribute("aria-selected", String(app.tab === tab));
    $(panel).hidden = app.tab !== tab;
  }
  if (app.tab === "logs") renderLogs();
};
const logRow = (entry) => {
  const line = entry.line || {};
  const level = LEVELS[line.level] || String(line.level || "");
  const skip = new Set(["level", "time", "msg", "pid", "hostname", "taskId", "workerId", "task", "attempt", "queue"]);
  const fields = Object.keys(line).filter((k) => !skip.has(k));
  const rest = fields.length ? JSON.stringify(Object.fromEntries(fields.map((k) => [k, line[k]]))) : "";
  return h("div", { class: "log-line lv-" + level, "data-seq": entry.seq, "data-level": level },
    h("span", { class: "time", title: entry.at }, fmtTime(typeof line.time === "number" ? new Date(line.time).toISOString() : entry.at)),
    h("span", { class: "level" }, level),
    h("span", { class: "msg" }, typeof line.msg === "string" ? line.msg : ""),
    rest || taskOf(line) ? h("span", { class: "fields" }, taskOf(line) + rest) : null);
};
/** On a worker's tab, the task a line is of. */
const taskOf = (line) => (app.view && app.view.kind === "worker" && typeof line.taskId === "string" ? "task " + line.taskId + " " : "");
const renderLogs = () => {
  const v = app.view;
  const box = $("#logs");
  if (!v.logs) { box.replaceChildren(h("div", { class: "empty" }, v.logsError || "Loading the logs…")); return; }
  const rows = v.logs.lines.map(logRow);
  box.replaceChildren(...(rows.length ? rows : [h("div", { class: "empty" }, "No log lines kept for this " + v.kind + ". A handler logs with ctx.log.")]),
    ...(v.logs.more ? [h("div", { class: "more" }, "The first " + rows.length + " lines; troupe logs --" + v.kind + " " + v.id + " prints them all.")] : []));
};
const loadLogs = async () => {
  const v = app.view;
  if (!v || !hasLogs(v.kind) || app.tab !== "logs") return;
  try {
    const logs = await getJson("/api/logs?" + v.kind + "=" + encodeURIComponent(v.id));
    if (app.view === v) { v.logs = logs; v.logsError = undefined; }
  } catch (err) {
    if (app.view === v) v.logsError = "Cannot read the logs: " + err.message;
  }
  if (app.view === v && app.tab === "logs") renderLogs();
};

// ---- The queues (no actor open) ----
const renderQueues = (stats) => {
  const tbody = $("#queues tbody");
  const types = (stats && stats.types) || [];
  const byQueue = new Map();
  for (const t of types) { if (!byQueue.has(t.queue)) byQueue.set(t.queue, []); byQueue.get(t.queue).push(t); }
  const cols = ["waiting", "running", "failed", "completed"];
  const rate = (n) => (typeof n !== "number" ? "–" : n >= 10 || Number.isInteger(n) ? String(Math.round(n)) : n.toFixed(1));
  const cells = (c) => [...cols.map((k) => h("td", { "data-col": k, "data-n": c[k], class: k === "failed" ? "bad" : "" }, String(c[k]))),
    h("td", { "data-col": "done-rate" }, rate(c.perMinute && c.perMinute.completed)), h("td", { "data-col": "failed-rate" }, rate(c.perMinute && c.perMinute.failed)),
    h("td", { "data-col": "workers" }, String(c.workers))];
  const rows = [];
  for (const [queue, list] of byQueue) {
    const sum = { workers: 0, perMinute: { completed: 0, failed: 0 } };
    for (const k of cols) sum[k] = list.reduce((n, t) => n + t[k], 0);
    for (const t of list) { sum.perMinute.completed += (t.perMinute || {}).completed || 0; sum.perMinute.failed += (t.perMinute || {}).failed || 0; }
    // A queue's workers: those serving any of its types is not a sum; the most of any one type is a floor.
    sum.workers = Math.max(0, ...list.map((t) => t.workers));
    rows.push(h("tr", { class: "queue", "data-queue": queue }, h("td", {}, queue), ...cells(sum)));
    for (const t of list) rows.push(h("tr", { class: "type", "data-queue": queue, "data-task": t.task }, h("td", {}, t.task), ...cells(t)));
  }
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8 }, "No task has waited, run or ended yet."))]));
  $("#queues-at").textContent = stats && stats.at ? "at " + fmtTime(stats.at) + " · " + (stats.liveWorkers || 0) + " live worker" + (stats.liveWorkers === 1 ? "" : "s") : "";
};
let queuesTimer = 0;
const loadQueues = async () => {
  clearTimeout(queuesTimer);
  if (app.view !== null) return;
  try {
    const stats = await getJson("/api/queues");
    if (app.view === null) { renderQueues(stats); $("#queues-card").setAttribute("data-loaded", "true"); }
  } catch (err) {
    $("#queues-at").textContent = "cannot read the queues: " + err.message;
  }
  if (app.view === null) queuesTimer = setTimeout(loadQueues, 5000);
};


// ---- The chart's view: fitted to its box's width, zoomed and panned by the user ----
// scale: screen pixels per diagram pixel; x, y: the diagram point at the box's top-left corner.
const view = { key: "", scale: 1, x: 0, y: 0, fitted: true };
const chartSvg = (box) => box.querySelector("svg.chart");
const applyView = (box) => {
  const svg = chartSvg(box);
  if (!svg) return;
  const w = box.clientWidth, hgt = box.clientHeight;
  svg.setAttribute("width", w);
  svg.setAttribute("height", hgt);
  svg.setAttribute("viewBox", view.x + " " + view.y + " " + w / view.scale + " " + hgt / view.scale);
  box.setAttribute("data-scale", view.scale.toFixed(3));
};
/** The whole chart in the box's width (never larger than drawn); the box as tall as the chart is then. */
const fitView = (box) => {
  const svg = chartSvg(box);
  if (!svg || box.clientWidth === 0) return;
  const w = Number(svg.getAttribute("data-width")), hgt = Number(svg.getAttribute("data-height"));
  view.scale = Math.min(1, box.clientWidth / w);
  view.x = 0; view.y = 0; view.fitted = true;
  box.style.height = Math.ceil(hgt * view.scale) + "px";
  applyView(box);
};
/** Zooms by factor keeping the diagram point under (px, py), box coordinates, in place. */
const zoomAt = (box, factor, px, py) => {
  const next = Math.min(4, Math.max(0.1, view.scale * factor));
  const dx = view.x + px / view.scale, dy = view.y + py / view.scale;
  view.scale = next; view.x = dx - px / next; view.y = dy - py / next; view.fitted = false;
  applyView(box);
};
const panBy = (box, sx, sy) => {
  view.x -= sx / view.scale; view.y -= sy / view.scale; view.fitted = false;
  applyView(box);
};
const chartControls = (box) => {
  box.addEventListener("wheel", (ev) => {
    if (!chartSvg(box)) return;
    ev.preventDefault();
    const r = box.getBoundingClientRect();
    const delta = ev.deltaMode === 1 ? ev.deltaY * 16 : ev.deltaY;
    zoomAt(box, Math.exp(-delta * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  let drag = null;
  box.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0 || !chartSvg(box)) return;
    drag = { x: ev.clientX, y: ev.clientY };
    box.setPointerCapture(ev.pointerId);
    box.classList.add("dragging");
  });
  box.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    panBy(box, ev.clientX - drag.x, ev.clientY - drag.y);
    drag = { x: ev.clientX, y: ev.clientY };
  });
  const end = () => { drag = null; box.classList.remove("dragging"); };
  box.addEventListener("pointerup", end);
  box.addEventListener("pointercancel", end);
  box.addEventListener("keydown", (ev) => {
    const mid = () => [box.clientWidth / 2, box.clientHeight / 2];
    const keys = { "+": () => zoomAt(box, 1.25, ...mid()), "=": () => zoomAt(box, 1.25, ...mid()), "-": () => zoomAt(box, 0.8, ...mid()), "0": () => fitView(box),
      ArrowLeft: () => panBy(box, 60, 0), ArrowRight: () => panBy(box, -60, 0), ArrowUp: () => panBy(box, 0, 60), ArrowDown: () => panBy(box, 0, -60) };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
  $("#zoom-in").addEventListener("click", () => zoomAt(box, 1.25, box.clientWidth / 2, box.clientHeight / 2));
  $("#zoom-out").addEventListener("click", () => zoomAt(box, 0.8, box.clientWidth / 2, box.clientHeight / 2));
  $("#fit").addEventListener("click", () => fitView(box));
  const toggle = $("#chart-toggle");
  const show = (open) => {
    $("#chart-card").classList.toggle("collapsed", !open);
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Hide" : "Show";
    try { localStorage.setItem("troupe.chart", open ? "shown" : "hidden"); } catch {}
    if (open) fitView(box);
  };
  toggle.addEventListener("click", () => show(toggle.getAttribute("aria-expanded") !== "true"));
  let hidden = false;
  try { hidden = localStorage.getItem("troupe.chart") === "hidden"; } catch {}
  if (hidden) show(false);
  window.addEventListener("resize", () => { if (view.fitted) fitView(box); else applyView(box); });
};
const getJson = async (url) => {
  const res = await fetch(url);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.status + " " + res.statusText);
  return body;
};
/** The selected actor's detail (and graph), then the event its seq names. */
const load = async () => {
  const v = app.view;
  const token = ++app.token;
  let body = null, graph = v.graph, error = undefined;
  try {
    body = await getJson("/api/actors/" + v.kind + "/" + v.id);
  } catch (err) {
    error = "Cannot show " + v.kind + " " + v.id + ": " + err.message;
  }
  if (v.kind === "workflow") graph = await getJson("/api/workflows/" + v.id + "/graph").catch(() => graph || null);
  if (token !== app.token || app.view !== v) return;
  if (v.error && !error) notice("");
  v.body = body || v.body;
  v.graph = graph;
  v.error = error;
  if (body && body.record) seen({ kind: v.kind, id: v.id, record: body.record, state: body.state, seq: lastSeq(body), at: lastAt(body), event: "" });
  await resolveEvent();
};
const lastOf = (body) => (body && body.events && body.events.length ? body.events[body.events.length - 1] : undefined);
const lastSeq = (body) => { const e = lastOf(body); return e && typeof e.seq === "number" ? e.seq : undefined; };
const lastAt = (body) => { const e = lastOf(body); return e && e.at; };
const resolveEvent = async () => {
  const v = app.view;
  if (v.seq === undefined) { v.event = undefined; return; }
  const found = ((v.body && v.body.events) || []).find((e) => e.seq === v.seq);
  if (found) { v.event = found; return; }
  try {
    const answer = await getJson("/api/actors/" + v.kind + "/" + v.id + "/at/" + v.seq);
    if (app.view === v) v.event = answer.event;
  } catch {
    if (app.view === v) v.event = undefined;
  }
};

let refreshTimer = 0, refreshing = false, again = false;
const scheduleRefresh = (delay) => {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = 0;
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      if (app.view) { await load(); renderView(); await loadLogs(); }
    } finally {
      refreshing = false;
      if (again) { again = false; scheduleRefresh(100); }
    }
  }, delay === undefined ? 150 : delay);
};

const parseHash = () => {
  let raw = location.hash.slice(1);
  try { raw = decodeURIComponent(raw); } catch { return null; }
  const m = /^(task|workflow|worker):([A-Za-z0-9_-]+)(?:@(\d+))?$/.exec(raw);
  return m ? { kind: m[1], id: m[2], seq: m[3] === undefined ? undefined : Number(m[3]) } : null;
};
const route = async () => {
  const want = parseHash();
  if (want === null) {
    app.view = null;
    renderView();
    renderList();
    return;
  }
  const v = app.view;
  if (v && v.kind === want.kind && v.id === want.id) {
    v.seq = want.seq;
    await resolveEvent();
  } else {
    app.view = { kind: want.kind, id: want.id, seq: want.seq, body: null, graph: null };
    notice("");
    renderView();
    await load();
  }
  renderView();
  renderList();
  loadLogs();
};

const isMine = (e) => {
  const v = app.view;
  if (!v) return false;
  if (e.kind === v.kind && e.id === v.id) return true;
  if (v.kind === "workflow" && e.kind === "task") {
    const p = (e.workflow && e.workflow.run ? e.workflow : undefined) || parentOf("task", e.record) || app.stepOf.get(e.id);
    return p !== undefined && p.run === v.id;
  }
  return false;
};

const setConnected = (on) => {
  const c = $("#conn");
  c.textContent = on ? "live" : "reconnecting…";
  c.className = on ? "on" : "";
};

const start = async () => {
  for (const id of ["#filter-kind", "#filter-status"]) $(id).addEventListener("change", renderList);
  $("#filter-text").addEventListener("input", renderList);
  chartControls($("#machine"));
  for (const tab of ["history", "logs"]) $("#tab-" + tab).addEventListener("click", () => { app.tab = tab; renderTabs(); loadLogs(); });
  $("#live").addEventListener("click", () => { if (app.view) location.hash = app.view.kind + ":" + app.view.id; });
  window.addEventListener("hashchange", () => { route(); });
  setInterval(() => {
    for (const el of document.querySelectorAll("#list .age")) el.textContent = fmtAge(el.getAttribute("data-created"));
  }, 5000);
  // The stream first, so nothing between the recent history and the live events is missed.
  const events = new EventSource("/events");
  const early = [];
  let ready = false;
  let lost = false;
  events.onopen = () => {
    setConnected(true);
    // Back after a break: what happened meanwhile comes from the recent history.
    if (lost && ready) getJson("/api/recent?limit=1000").then((recent) => { for (const e of recent) seen(e); scheduleList(); scheduleRefresh(0); }, () => undefined);
    lost = false;
  };
  events.onerror = () => { lost = true; setConnected(false); };
  events.onmessage = (msg) => {
    let e;
    try { e = JSON.parse(msg.data); } catch { return; }
    if (!ready) { early.push(e); return; }
    seen(e);
    scheduleList();
    // A worker's heartbeats only add to a folded row: its page is read again every 5 s at most for them.
    if (isMine(e)) scheduleRefresh(e.event === "heartbeat" ? 5000 : undefined);
  };
  const [config, machines, recent] = await Promise.all([
    getJson("/api/config").catch(() => ({ actions: false })),
    getJson("/api/machines").catch(() => ({})),
    getJson("/api/recent?limit=1000").catch(() => []),
  ]);
  app.config = config;
  app.machines = machines;
  for (const e of recent) seen(e);
  for (const e of early.splice(0)) seen(e);
  ready = true;
  renderList();
  await route();
  document.body.setAttribute("data-ready", "true");
};
start();
</script>
</body>
</html>
`;
