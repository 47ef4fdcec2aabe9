/* Renders GraphData with the graph scripts (graph_*.js) in the fake DOM of fakedom.js and prints a JSON
 * summary of what came out, for tests/test_report.py.
 *
 *   node render_check.js fixture GRAPH.js RUN_GRAPH.js FIXTURE.json
 *       GRAPH.js: the graph scripts concatenated in load order (static_text("graph") of nbdurable.widgets);
 *       the run view and the RunGraph widget (with a fake anywidget model) on a GraphData fixture:
 *       select, expand, live re-render, the timeline, cleanup.
 *   node render_check.js report REPORT.html [#NODE]
 *       runs the report's own inline script in a fake page (opened at #NODE, default #s1) and summarizes what
 *       it drew.
 */
"use strict";
const fs = require("fs");
const vm = require("vm");
const { Document } = require("./fakedom.js");

function load(doc, code, extra) {
  const context = vm.createContext(Object.assign({ document: doc, console }, extra || {}));
  vm.runInContext(code, context, { filename: "graph.js" });
  return context;
}

function summary(doc) {
  const graph = doc.querySelector("div.nbd-graph");
  const details = doc.querySelector("div.nbd-details");
  return {
    styles: doc.querySelectorAll("style").length,  /* the scripts add none: graph.css is the host's */
    graph: graph && { runId: graph.getAttribute("data-run-id"), runStatus: graph.getAttribute("data-run-status"),
                      header: doc.querySelector("div.nbd-graph div.nbd-header").textContent },
    nodes: doc.querySelectorAll("svg g.nbd-node").map((g) => ({
      id: g.getAttribute("data-node-id"), status: g.getAttribute("data-status"), cls: g.getAttribute("class"),
      text: g.querySelectorAll("text").map((t) => t.textContent).join(" | "),
    })),
    edges: doc.querySelectorAll("path.nbd-edge").map((p) => [p.getAttribute("data-source"), p.getAttribute("data-target")]),
    edgeTitles: doc.querySelectorAll("g.nbd-edge-group title").map((t) => t.textContent),
    runLinks: doc.querySelectorAll("a.nbd-run-link").map((a) => [a.getAttribute("data-run-id"), a.getAttribute("href")]),
    children: doc.querySelectorAll(".nbd-child").map((c) => ({ ordinal: c.getAttribute("data-ordinal"), status: c.getAttribute("data-status"), text: c.textContent })),
    expandText: doc.querySelectorAll(".nbd-expand").map((e) => e.textContent),
    details: details && { nodeId: details.getAttribute("data-node-id"), text: details.textContent,
                          attempts: details.querySelectorAll("tr.nbd-attempt").length,
                          variables: details.querySelectorAll("tr.nbd-var").map((r) => r.getAttribute("data-var")),
                          traceback: (details.querySelector("pre.nbd-traceback") || { textContent: null }).textContent,
                          source: (details.querySelector("pre.nbd-source") || { textContent: null }).textContent },
    bars: doc.querySelectorAll("div.nbd-gantt .nbd-bar").map((b) => ({ id: b.getAttribute("data-node-id"), status: b.getAttribute("data-status"), style: b.getAttribute("style") })),
    childBars: doc.querySelectorAll("div.nbd-gantt .nbd-child-bar").length,
    ticks: doc.querySelectorAll(".nbd-gantt-tick").map((t) => t.textContent),
    ganttHidden: (doc.querySelector(".nbd-gantt-box") || { hasAttribute: () => null }).hasAttribute("hidden"),
  };
}

function nodeEl(doc, id) {
  return doc.querySelector('g.nbd-node[data-node-id="' + id + '"]');
}

function fixture(corePath, widgetPath, dataPath) {
  const out = {};
  const data = JSON.parse(fs.readFileSync(dataPath, "utf8"));
  const doc = new Document();
  const el = doc.createElement("div");
  doc.body.appendChild(el);
  const widgetCode = fs.readFileSync(widgetPath, "utf8").replace("export default", "__widget =");
  const ctx = load(doc, fs.readFileSync(corePath, "utf8") + "\nvar __widget;\n" + widgetCode + "\n;this.__widget = __widget;");
  /* a fake anywidget model */
  const listeners = {};
  const saved = [];
  const state = { graph: data, selected: "" };
  const model = {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; },
    save_changes: () => saved.push(state.selected),
    on: (ev, fn) => { (listeners[ev] = listeners[ev] || []).push(fn); },
    off: (ev, fn) => { listeners[ev] = (listeners[ev] || []).filter((f) => f !== fn); },
  };
  const fire = (ev) => { for (const fn of listeners[ev] || []) fn(); };
  const cleanup = ctx.__widget.render({ model, el });
  out.initial = summary(doc);

  nodeEl(doc, "s4").querySelector("text").click();          /* a click lands on the node's text */
  out.afterSelect = summary(doc);
  out.saved = saved.slice();

  doc.querySelector('g.nbd-node[data-node-id="s3"] .nbd-expand').click();
  out.afterExpand = summary(doc);

  /* a child step in the expanded node: its own details; then back to its cell, and a child row there */
  doc.querySelector('g.nbd-child[data-ordinal="101"] text').click();
  out.afterChildClick = { selected: state.selected, details: summary(doc).details,
                          childCls: doc.querySelector('g.nbd-child[data-ordinal="101"]').getAttribute("class") };
  nodeEl(doc, "s3").querySelector("text").click();
  out.cellDetails = summary(doc).details;
  doc.querySelector('tr.nbd-detail-child[data-ordinal="103"] td').click();
  out.afterChildRowClick = { selected: state.selected, details: summary(doc).details };
  nodeEl(doc, "s4").querySelector("text").click();

  /* a live update: a whole new GraphData, s3 finished; selection and expansion stay */
  const next = JSON.parse(JSON.stringify(data));
  const s3 = next.nodes.find((n) => n.id === "s3");
  s3.status = "completed"; s3.ended_at = s3.started_at + 2; s3.duration_s = 2;
  state.graph = next;
  fire("change:graph");
  out.afterUpdate = summary(doc);

  /* Python selects a node */
  state.selected = "s0";
  fire("change:selected");
  out.afterModelSelect = summary(doc);

  /* the Timeline tab */
  doc.querySelector('button.nbd-tab[data-tab="gantt"]').click();
  out.afterTab = summary(doc);
  doc.querySelector('div.nbd-gantt-row[data-node-id="s1"] .nbd-bar').click();
  out.afterBarClick = { selected: state.selected, details: summary(doc).details.nodeId };

  /* re-render with identical data: nothing rebuilt (the same SVG element stays) */
  const svgBefore = doc.querySelector("svg.nbd-graph-svg");
  fire("change:graph");
  out.sameSvgAfterNoop = doc.querySelector("svg.nbd-graph-svg") === svgBefore;

  /* a second view in the same document: still no style element */
  const el2 = doc.createElement("div");
  doc.body.appendChild(el2);
  ctx.nbdMountRunView(el2, { layout: "stacked" }).update({ version: 1, run: { run_id: "x", status: "running", live: true }, nodes: [], edges: [] });
  out.stylesAfterSecondView = summary(doc).styles;
  out.emptyText = el2.textContent;

  cleanup();
  out.afterCleanup = { listeners: Object.values(listeners).reduce((n, l) => n + l.length, 0), children: el.childNodes.length };

  /* helpers */
  out.formats = [ctx.nbdFormatDuration(0.25), ctx.nbdFormatDuration(12.34), ctx.nbdFormatDuration(125), ctx.nbdFormatDuration(7260),
                 ctx.nbdFormatBytes(512), ctx.nbdFormatBytes(123456789), ctx.nbdStripAnsi("\x1b[0;31mred\x1b[0m \x1b]8;;x\x07link\x1b]8;;\x07")];

  /* a big graph renders, and quickly */
  const big = { version: 1, run: { run_id: "big", status: "completed" }, edges: [], nodes: [] };
  for (let i = 0; i < 200; i++) {
    big.nodes.push({ id: "s" + i, ordinal: i, label: "cell " + i, source: "x" + i + " = x" + (i - 1), status: "completed",
                     started_at: 1e9 + i, ended_at: 1e9 + i + 0.5, duration_s: 0.5, variables: [], reads: [], attempts: [],
                     children: { total: 0 }, child_steps: [], error: null });
    if (i) big.edges.push({ source: "s" + (i - 1), target: "s" + i, variables: ["x" + (i - 1)] });
    if (i > 3 && i % 5 === 0) big.edges.push({ source: "s0", target: "s" + i, variables: ["x0"] });
  }
  const el3 = doc.createElement("div");
  doc.body.appendChild(el3);
  const t = Date.now();
  ctx.nbdRenderGraph(el3, big, {});
  ctx.nbdRenderGantt(el3, big, {});
  out.big = { ms: Date.now() - t, nodes: el3.querySelectorAll("g.nbd-node").length, edges: el3.querySelectorAll("path.nbd-edge").length,
              bars: el3.querySelectorAll(".nbd-bar").length, svgHeight: Number(el3.querySelector("svg").getAttribute("height")) };
  return out;
}

function report(htmlPath, hash) {
  const html = fs.readFileSync(htmlPath, "utf8");
  const scripts = [];
  const re = /<script\b([^>]*)>([\s\S]*?)<\/script>/gi;
  let m;
  while ((m = re.exec(html))) scripts.push({ attrs: m[1], text: m[2] });
  const doc = new Document();
  const app = doc.createElement("div");
  app.setAttribute("id", "nbd-app");
  doc.body.appendChild(app);
  for (const s of scripts) {
    const idm = /id="([^"]+)"/.exec(s.attrs);
    if (/application\/json/.test(s.attrs)) {
      const el = doc.createElement("script");
      el.setAttribute("id", idm[1]);
      el.textContent = s.text;
      doc.body.appendChild(el);
    }
  }
  const code = scripts.filter((s) => !/type=/.test(s.attrs)).map((s) => s.text);
  const replaced = [];
  const ctx = vm.createContext({ document: doc, console, location: { hash: hash || "#s1" },
                                 history: { replaceState: (a, b, url) => replaced.push(url) } });
  for (const c of code) vm.runInContext(c, ctx, { filename: "report-inline.js" });
  const out = { scripts: scripts.length, inline: code.length, initial: summary(doc) };
  const first = doc.querySelector("g.nbd-node");
  if (first) {
    first.click();
    out.afterClick = summary(doc);
  }
  out.hashes = replaced;
  return out;
}

const [mode, ...args] = process.argv.slice(2);
const result = mode === "report" ? report(args[0], args[1]) : fixture(args[0], args[1], args[2]);
process.stdout.write(JSON.stringify(result));
