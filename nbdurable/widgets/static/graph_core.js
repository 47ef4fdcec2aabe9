/* nbdurable graph_core.js: draws a run's GraphData (see ARCHITECTURE.md) as an SVG DAG, a details panel
 * and a timeline. No build step, no dependencies, no import/export: only function declarations, so that
 * Python can concatenate this file in front of a widget's ES module (run_graph.js, history.js) or inline
 * it into the self-contained HTML report (nbdurable/report.py).
 *
 * Public: nbdRenderGraph, nbdRenderDetails, nbdRenderGantt, nbdInjectStyles, nbdMountRunView, and the
 * helpers nbdStatusColor, nbdFormatDuration, nbdFormatBytes, nbdFormatTime, nbdStripAnsi, nbdDescribeWait.
 * Private helpers start with _nbd.
 *
 * Every piece of data reaches the DOM through createTextNode / setAttribute, never innerHTML: sources,
 * labels and errors may hold <, &, quotes and a closing script tag. Renderers keep their state on the container
 * (container.__nbdGraph, .__nbdDetails, .__nbdGantt), so calling them again with a new GraphData (a live
 * update) keeps the selected node, the expanded nodes and the scroll position, and skips the rebuild when
 * nothing changed.
 */

/* ------------------------------------------------------------------------------------------------ */
/* Statuses, formatting                                                                              */

function nbdStatusColor(status) {
  switch (status) {
    case "pending": return "#c7ccd1";
    case "running": return "#2f80ed";
    case "completed": return "#27ae60";
    case "restored": return "#8e44ad";
    case "failed": return "#eb5757";
    case "retrying": return "#f2994a";
    case "sleeping": return "#56ccf2";
    case "waiting": return "#f2c94c";
    case "suspended": return "#9b9b9b";
    case "crashed": return "#eb5757";   /* run statuses */
    case "cancelled": return "#9b9b9b";
    default: return "#9b9b9b";
  }
}

function _nbdStatuses() {
  return ["pending", "running", "completed", "restored", "failed", "retrying", "sleeping", "waiting", "suspended",
          "crashed", "cancelled"];
}

function _nbdIsActive(status) {
  return status === "running" || status === "retrying" || status === "sleeping" || status === "waiting";
}

function _nbdNum(value) {
  return typeof value === "number" && isFinite(value) ? value : null;
}

function _nbdNow() {
  return Date.now() / 1000;
}

/* "Now" for a run's elapsed times: the clock while it is live, else when it ended, else the last time it
 * recorded (a run seen from the store after the fact must not grow by the wall clock). */
function _nbdClock(data) {
  const run = (data && data.run) || {};
  if (run.live) return _nbdNow();
  if (_nbdNum(run.ended_at) !== null) return run.ended_at;
  let last = null;
  const see = function (t) { if (_nbdNum(t) !== null && (last === null || t > last)) last = t; };
  see(run.started_at);
  for (const n of (data && Array.isArray(data.nodes)) ? data.nodes : []) {
    see(n.started_at); see(n.ended_at);
    for (const a of Array.isArray(n.attempts) ? n.attempts : []) { see(a.started_at); see(a.ended_at); }
    for (const c of Array.isArray(n.child_steps) ? n.child_steps : []) { see(c.started_at); see(c.ended_at); }
  }
  return last === null ? _nbdNow() : last;
}

function _nbdPad(n) {
  return (n < 10 ? "0" : "") + n;
}

/* 0.25 -> "250 ms", 12.34 -> "12.3 s", 125 -> "2 m 05 s", 7260 -> "2 h 01 m". */
function nbdFormatDuration(seconds) {
  let s = _nbdNum(seconds);
  if (s === null) return "";
  if (s < 0) s = 0;
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 59.95) return s.toFixed(1) + " s";
  if (s < 3600) {
    const m = Math.floor(s / 60);
    return m + " m " + _nbdPad(Math.floor(s - m * 60)) + " s";
  }
  if (s < 86400) {
    const h = Math.floor(s / 3600);
    return h + " h " + _nbdPad(Math.floor((s - h * 3600) / 60)) + " m";
  }
  const d = Math.floor(s / 86400);
  return d + " d " + Math.floor((s - d * 86400) / 3600) + " h";
}

function nbdFormatBytes(n) {
  const b = _nbdNum(n);
  if (b === null) return "";
  if (b < 1024) return b + " B";
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = b, i = -1;
  do { v /= 1024; i += 1; } while (v >= 1024 && i < units.length - 1);
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + " " + units[i];
}

/* Unix seconds -> local "YYYY-MM-DD HH:MM:SS". */
function nbdFormatTime(t) {
  const v = _nbdNum(t);
  if (v === null) return "";
  const d = new Date(v * 1000);
  return d.getFullYear() + "-" + _nbdPad(d.getMonth() + 1) + "-" + _nbdPad(d.getDate()) + " " +
    _nbdPad(d.getHours()) + ":" + _nbdPad(d.getMinutes()) + ":" + _nbdPad(d.getSeconds());
}

/* Terminal escape sequences (IPython colours its tracebacks) out of a text. */
function nbdStripAnsi(text) {
  if (text === null || text === undefined) return "";
  return String(text)
    .replace(/\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g, "")      /* OSC ... BEL / ST */
    .replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, "")              /* CSI ... final byte (colours, cursor) */
    .replace(/\x1b[@-Z\\-_]/g, "")                         /* other two-byte escapes */
    .replace(/[\x1b\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, ""); /* stray control characters */
}

/* What a suspended run waits for (as `nbdurable show` says it). */
function nbdDescribeWait(run) {
  if (!run) return "";
  const w = run.waiting_for;
  if (w && typeof w === "object") {
    let text = "waiting for event '" + (w.name === undefined || w.name === null ? "?" : String(w.name)) + "'";
    if (w.match !== undefined && w.match !== null && !(typeof w.match === "object" && Object.keys(w.match).length === 0)) {
      text += " matching " + (typeof w.match === "string" ? w.match : JSON.stringify(w.match));
    }
    if (_nbdNum(w.timeout_at) !== null) text += " until " + nbdFormatTime(w.timeout_at);
    return text;
  }
  if (_nbdNum(run.wake_at) !== null) return "sleeping until " + nbdFormatTime(run.wake_at);
  return run.status === "suspended" ? "suspended" : "";
}

function _nbdTrunc(text, n) {
  const s = String(text === null || text === undefined ? "" : text).replace(/\s+/g, " ").trim();
  return s.length > n ? s.slice(0, Math.max(1, n - 1)) + "\u2026" : s;
}

function _nbdPlural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

/* Seconds a node has taken: its recorded duration, else (still going) since it started. */
function _nbdNodeDuration(node, now) {
  const d = _nbdNum(node.duration_s);
  if (d !== null) return d;
  const start = _nbdNum(node.started_at), end = _nbdNum(node.ended_at);
  if (start !== null && end !== null) return Math.max(0, end - start);
  if (start !== null && _nbdIsActive(node.status)) return Math.max(0, now - start);
  return null;
}

/* ------------------------------------------------------------------------------------------------ */
/* DOM helpers (createElement + setAttribute + text nodes only)                                      */

function _nbdDocOf(node) {
  if (node && node.nodeType === 9) return node;
  if (node && node.ownerDocument) return node.ownerDocument;
  return document;
}

function _nbdAppend(el, children) {
  if (children === null || children === undefined || children === false) return el;
  if (!Array.isArray(children)) children = [children];
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (typeof child === "string" || typeof child === "number") {
      el.appendChild(el.ownerDocument.createTextNode(String(child)));
    } else {
      el.appendChild(child);
    }
  }
  return el;
}

function _nbdSetAttrs(el, attrs) {
  if (!attrs) return el;
  for (const name of Object.keys(attrs)) {
    const value = attrs[name];
    if (value === null || value === undefined || value === false) continue;
    el.setAttribute(name, value === true ? "" : String(value));
  }
  return el;
}

function _nbdEl(doc, tag, attrs, children) {
  return _nbdAppend(_nbdSetAttrs(doc.createElement(tag), attrs), children);
}

function _nbdSvg(doc, tag, attrs, children) {
  return _nbdAppend(_nbdSetAttrs(doc.createElementNS("http://www.w3.org/2000/svg", tag), attrs), children);
}

function _nbdClear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function _nbdHasClass(el, name) {
  if (!el || el.nodeType !== 1 || !el.getAttribute) return false;
  const cls = el.getAttribute("class");
  return !!cls && (" " + cls + " ").indexOf(" " + name + " ") >= 0;
}

/* The nearest element from `el` up to `stop` (exclusive) with the class. */
function _nbdClosest(el, name, stop) {
  for (let cur = el; cur && cur !== stop; cur = cur.parentNode) {
    if (_nbdHasClass(cur, name)) return cur;
  }
  return null;
}

function _nbdPill(doc, status, text) {
  return _nbdEl(doc, "span", { "class": "nbd-pill", "data-status": status || "" }, text || status || "?");
}

/* ------------------------------------------------------------------------------------------------ */
/* Styles                                                                                             */

function _nbdCss() {
  const statusRules = _nbdStatuses().map(function (s) {
    return [".nbd-node", ".nbd-child", ".nbd-bar", ".nbd-child-bar", ".nbd-pill", ".nbd-dot"].map(function (c) {
      return c + '[data-status="' + s + '"]';
    }).join(",") + "{--nbd-status:" + nbdStatusColor(s) + "}";
  }).join("\n");
  return [
    ".nbd-ui{--nbd-fg:var(--jp-ui-font-color1,#1f2328);--nbd-fg2:var(--jp-ui-font-color2,#57606a);",
    "--nbd-fg3:var(--jp-ui-font-color3,#8c959f);--nbd-bg:var(--jp-layout-color1,#ffffff);",
    "--nbd-bg2:var(--jp-layout-color2,#f3f4f6);--nbd-border:var(--jp-border-color1,#c9ced6);",
    "--nbd-border2:var(--jp-border-color2,#e1e4e8);--nbd-accent:var(--jp-brand-color1,#1976d2);",
    "--nbd-error-bg:var(--jp-rendermime-error-background,rgba(235,87,87,.09));",
    "--nbd-font:var(--jp-ui-font-family,system-ui,-apple-system,'Segoe UI',Roboto,sans-serif);",
    "--nbd-mono:var(--jp-code-font-family,ui-monospace,SFMono-Regular,Menlo,Consolas,monospace);",
    "font-family:var(--nbd-font);font-size:13px;line-height:1.4;color:var(--nbd-fg);box-sizing:border-box}",
    ".nbd-ui *,.nbd-ui *::before,.nbd-ui *::after{box-sizing:border-box}",
    ".nbd-ui [hidden]{display:none!important}",
    ".nbd-ui code,.nbd-ui pre{font-family:var(--nbd-mono);font-size:12px}",
    ".nbd-ui[data-status],.nbd-ui [data-status]{--nbd-status:#9b9b9b}",
    statusRules,
    /* pills, header */
    ".nbd-pill{display:inline-block;padding:0 7px;border-radius:9px;font-size:11px;font-weight:600;line-height:18px;",
    "color:#fff;background:var(--nbd-status);white-space:nowrap;vertical-align:middle}",
    '.nbd-pill[data-status="pending"],.nbd-pill[data-status="waiting"],.nbd-pill[data-status="sleeping"]{color:#1f2328}',
    ".nbd-header{display:flex;flex-wrap:wrap;align-items:center;gap:4px 12px;padding:6px 8px;",
    "border-bottom:1px solid var(--nbd-border2);background:var(--nbd-bg2);border-radius:6px 6px 0 0}",
    ".nbd-header-item{color:var(--nbd-fg2);white-space:nowrap}",
    ".nbd-header-item b{color:var(--nbd-fg);font-weight:600}",
    ".nbd-header-wait{color:var(--nbd-fg);font-weight:600}",
    ".nbd-live{color:#2f80ed;font-weight:600;animation:nbd-blink 1.6s ease-in-out infinite}",
    ".nbd-header-counts{color:var(--nbd-fg3);font-size:12px}",
    /* graph */
    ".nbd-graph{border:1px solid var(--nbd-border2);border-radius:6px;background:var(--nbd-bg)}",
    ".nbd-graph-scroll{overflow:auto;max-height:var(--nbd-graph-max-height,560px)}",
    ".nbd-graph svg{display:block}",
    ".nbd-graph svg text{font-family:var(--nbd-font);font-size:12px;fill:var(--nbd-fg)}",
    ".nbd-graph-empty{padding:16px;color:var(--nbd-fg3)}",
    ".nbd-node{cursor:pointer;outline:none}",
    ".nbd-node-box{fill:var(--nbd-bg);stroke:var(--nbd-status);stroke-width:1.5}",
    ".nbd-node:hover .nbd-node-box{fill:var(--nbd-bg2)}",
    ".nbd-node-stripe{fill:var(--nbd-status)}",
    ".nbd-node-ring{fill:none;stroke:var(--nbd-accent);stroke-width:2.5;display:none}",
    ".nbd-node.nbd-selected .nbd-node-ring,.nbd-node:focus-visible .nbd-node-ring{display:inline}",
    '.nbd-node[data-status="pending"] .nbd-node-box{stroke-dasharray:5 3}',
    '.nbd-node[data-status="pending"] text{fill:var(--nbd-fg3)}',
    ".nbd-graph svg text.nbd-node-label{font-weight:600;font-size:12.5px}",
    ".nbd-graph svg text.nbd-node-meta,.nbd-graph svg text.nbd-node-ord{fill:var(--nbd-fg2);font-size:11.5px}",
    ".nbd-graph svg text.nbd-node-wait{fill:var(--nbd-fg2);font-style:italic;font-size:11.5px}",
    ".nbd-graph svg .nbd-node-status{fill:var(--nbd-fg);font-weight:600}",
    ".nbd-badge rect{fill:#8e44ad;fill-opacity:.14;stroke:#8e44ad;stroke-opacity:.5}",
    ".nbd-graph svg .nbd-badge text{fill:#8e44ad;font-size:11px;font-weight:600}",
    ".nbd-expand{cursor:pointer}",
    ".nbd-expand rect{fill:var(--nbd-bg2);stroke:var(--nbd-border)}",
    ".nbd-expand:hover rect{stroke:var(--nbd-accent)}",
    ".nbd-graph svg .nbd-expand text{font-size:11px;fill:var(--nbd-fg)}",
    ".nbd-child .nbd-dot{fill:var(--nbd-status)}",
    ".nbd-graph svg .nbd-child text{font-size:11px;fill:var(--nbd-fg2)}",
    ".nbd-graph svg .nbd-child text .nbd-child-error{fill:#eb5757}",
    ".nbd-children-sep{stroke:var(--nbd-border2)}",
    ".nbd-edge{fill:none;stroke:var(--nbd-fg2);stroke-opacity:.5;stroke-width:1.4}",
    ".nbd-edge-hit{fill:none;stroke:transparent;stroke-width:10}",
    ".nbd-arrow{fill:var(--nbd-fg2);fill-opacity:.65}",
    ".nbd-edge-group:hover .nbd-edge,.nbd-edge-group.nbd-edge-active .nbd-edge{stroke:var(--nbd-accent);stroke-opacity:1;stroke-width:2}",
    ".nbd-edge-group:hover .nbd-arrow,.nbd-edge-group.nbd-edge-active .nbd-arrow{fill:var(--nbd-accent);fill-opacity:1}",
    /* activity */
    "@keyframes nbd-pulse{0%,100%{stroke-opacity:1;stroke-width:1.5}50%{stroke-opacity:.35;stroke-width:4.5}}",
    "@keyframes nbd-fade{0%,100%{opacity:1}50%{opacity:.45}}",
    "@keyframes nbd-blink{0%,100%{opacity:1}50%{opacity:.4}}",
    ['running', 'retrying', 'sleeping', 'waiting'].map(function (s) {
      return '.nbd-node[data-status="' + s + '"] .nbd-node-box';
    }).join(",") + "{animation:nbd-pulse 1.4s ease-in-out infinite}",
    ['running', 'retrying', 'sleeping', 'waiting'].map(function (s) {
      return '.nbd-node[data-status="' + s + '"] .nbd-node-stripe,.nbd-child[data-status="' + s + '"] .nbd-dot,' +
        '.nbd-bar[data-status="' + s + '"],.nbd-child-bar[data-status="' + s + '"]';
    }).join(",") + "{animation:nbd-fade 1.4s ease-in-out infinite}",
    "@media (prefers-reduced-motion:reduce){.nbd-ui *{animation:none!important}}",
    /* details */
    ".nbd-details{padding:8px 10px;border:1px solid var(--nbd-border2);border-radius:6px;background:var(--nbd-bg);",
    "overflow:auto;max-height:var(--nbd-details-max-height,620px);min-width:0}",
    ".nbd-details-empty{color:var(--nbd-fg3)}",
    ".nbd-details-title{display:flex;align-items:center;gap:8px;font-size:14px;font-weight:600;margin-bottom:4px;word-break:break-word}",
    ".nbd-details h4{margin:12px 0 4px;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--nbd-fg2)}",
    ".nbd-details dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:4px 0}",
    ".nbd-details dt{color:var(--nbd-fg2)}",
    ".nbd-details dd{margin:0;word-break:break-word}",
    ".nbd-details pre{margin:0;padding:6px 8px;background:var(--nbd-bg2);border-radius:4px;overflow:auto;",
    "max-height:320px;white-space:pre;tab-size:4}",
    ".nbd-details pre.nbd-traceback{background:var(--nbd-error-bg)}",
    ".nbd-error-title{color:#eb5757;font-weight:600;margin-bottom:4px;word-break:break-word}",
    ".nbd-ui table.nbd-table{border-collapse:collapse;width:100%;font-size:12px}",
    ".nbd-table th,.nbd-table td{text-align:left;padding:2px 8px 2px 0;border-bottom:1px solid var(--nbd-border2);",
    "vertical-align:top;word-break:break-word}",
    ".nbd-table th{color:var(--nbd-fg2);font-weight:600}",
    ".nbd-table td.nbd-num{text-align:right;white-space:nowrap}",
    ".nbd-muted{color:var(--nbd-fg3)}",
    /* gantt */
    ".nbd-gantt{border:1px solid var(--nbd-border2);border-radius:6px;background:var(--nbd-bg);padding:6px 8px;",
    "overflow:auto;max-height:var(--nbd-gantt-max-height,560px)}",
    ".nbd-gantt-head{color:var(--nbd-fg2);font-size:12px;margin-bottom:4px}",
    ".nbd-gantt-grid{position:relative;min-width:480px}",
    ".nbd-gantt-axis,.nbd-gantt-row{display:grid;grid-template-columns:minmax(120px,220px) 1fr;gap:8px;align-items:center}",
    ".nbd-gantt-axis{height:20px;border-bottom:1px solid var(--nbd-border2)}",
    ".nbd-gantt-ticks,.nbd-gantt-track{position:relative;height:100%}",
    ".nbd-gantt-tick{position:absolute;top:2px;transform:translateX(-50%);font-size:11px;color:var(--nbd-fg3);white-space:nowrap}",
    ".nbd-gantt-tick:first-child{transform:none}",
    ".nbd-gantt-row{height:24px;cursor:pointer;border-radius:3px}",
    ".nbd-gantt-row:hover{background:var(--nbd-bg2)}",
    ".nbd-gantt-row.nbd-selected{background:var(--nbd-bg2);outline:2px solid var(--nbd-accent);outline-offset:-2px}",
    ".nbd-gantt-label{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:12px}",
    ".nbd-gantt-label .nbd-muted{margin-right:4px}",
    ".nbd-bar{position:absolute;top:4px;height:12px;min-width:2px;border-radius:3px;background:var(--nbd-status)}",
    ".nbd-child-bar{position:absolute;top:18px;height:3px;min-width:1px;border-radius:1px;background:var(--nbd-status);opacity:.85}",
    ".nbd-gantt-lines{position:absolute;top:0;bottom:0;pointer-events:none}",
    ".nbd-gantt-line{position:absolute;top:0;bottom:0;width:0;border-left:1px dashed var(--nbd-border2)}",
    ".nbd-gantt-empty{color:var(--nbd-fg3);padding:8px 0}",
    /* run view (widget and report) */
    ".nbd-run-view{display:flex;flex-direction:column;gap:8px}",
    ".nbd-tabs{display:flex;gap:4px}",
    ".nbd-tab{font:inherit;font-size:12px;padding:3px 12px;border:1px solid var(--nbd-border);border-radius:4px;",
    "background:var(--nbd-bg);color:var(--nbd-fg);cursor:pointer}",
    '.nbd-tab[aria-selected="true"]{background:var(--nbd-accent);border-color:var(--nbd-accent);color:#fff}',
    ".nbd-run-main{display:grid;grid-template-columns:minmax(0,3fr) minmax(260px,2fr);gap:8px;align-items:start}",
    "@media (max-width:760px){.nbd-run-main{grid-template-columns:minmax(0,1fr)}}",
    ".nbd-run-left{min-width:0;display:flex;flex-direction:column;gap:8px}",
  ].join("\n");
}

/* Adds the stylesheet once per document (or shadow root): a <style id="nbd-styles">, refreshed when this
 * file's CSS changed (a newer widget version in the same page). `root`: a document, a shadow root, or any
 * element of the document. */
function nbdInjectStyles(root) {
  const css = _nbdCss();
  let target, doc;
  if (root && root.nodeType === 11) {            /* shadow root / fragment */
    doc = root.ownerDocument || document;
    target = root;
  } else {
    doc = _nbdDocOf(root);
    target = doc.head || doc.documentElement || doc.body;
  }
  const existing = target.nodeType === 11 ? _nbdFindById(target, "nbd-styles") : doc.getElementById("nbd-styles");
  if (existing) {
    if (existing.textContent !== css) existing.textContent = css;
    return existing;
  }
  const style = doc.createElement("style");
  style.setAttribute("id", "nbd-styles");
  style.textContent = css;
  target.appendChild(style);
  return style;
}

function _nbdFindById(root, id) {
  for (let c = root.firstChild; c; c = c.nextSibling) {
    if (c.nodeType === 1 && c.getAttribute("id") === id) return c;
  }
  return null;
}

/* ------------------------------------------------------------------------------------------------ */
/* Graph layout                                                                                       */

function _nbdDims() {
  return { W: 216, H: 64, GX: 22, GY: 46, M: 14, CHILD: 17, MAXCOLS: 3, LANE: 9, MAXLANES: 14 };
}

/* Rows of node indices, top to bottom. A node's layer is that of the node before it plus one, except
 * that a node whose sources (edges into it) all lie in earlier layers than its predecessor's shares that
 * layer (1 + the max layer of its sources, never above its predecessor): nodes stay in notebook order top
 * to bottom, independent consumers of the same data sit side by side, and cells without inputs stack.
 * A layer wider than MAXCOLS wraps onto more rows. */
function _nbdLayers(nodes, edges) {
  const index = new Map();
  nodes.forEach(function (n, i) { index.set(n.id, i); });
  const sources = nodes.map(function () { return []; });
  for (const e of edges) {
    const s = index.get(e.source), t = index.get(e.target);
    if (s === undefined || t === undefined || s >= t) continue;
    sources[t].push(s);
  }
  const layer = [];
  for (let i = 0; i < nodes.length; i++) {
    if (i === 0) { layer.push(0); continue; }
    if (sources[i].length === 0) { layer.push(layer[i - 1] + 1); continue; }
    let top = 0;
    for (const s of sources[i]) top = Math.max(top, layer[s] + 1);
    layer.push(Math.max(layer[i - 1], top));
  }
  return { index: index, layer: layer };
}

function _nbdChildRows(node) {
  const steps = Array.isArray(node.child_steps) ? node.child_steps.length : 0;
  const total = node.children && _nbdNum(node.children.total) !== null ? node.children.total : steps;
  return Math.max(1, steps + (total > steps ? 1 : 0));
}

function _nbdHasChildren(node) {
  return !!(node.children && node.children.total > 0) || (Array.isArray(node.child_steps) && node.child_steps.length > 0);
}

/* A node's box without its child list: one more line when it has both a restored badge and child steps. */
function _nbdBaseHeight(node) {
  return _nbdDims().H + (node.status === "restored" && _nbdHasChildren(node) ? 19 : 0);
}

function _nbdLayout(nodes, edges, expanded) {
  const D = _nbdDims();
  const L = _nbdLayers(nodes, edges);
  const rows = [];
  let current = null, currentLayer = -1;
  nodes.forEach(function (n, i) {
    if (L.layer[i] !== currentLayer || current.length >= D.MAXCOLS) {
      current = [];
      rows.push(current);
      currentLayer = L.layer[i];
    }
    current.push(i);
  });
  const heights = nodes.map(function (n) {
    return _nbdBaseHeight(n) + (expanded.has(n.id) && _nbdHasChildren(n) ? 8 + D.CHILD * _nbdChildRows(n) : 0);
  });
  const cols = rows.reduce(function (m, r) { return Math.max(m, r.length); }, 1);
  const contentW = cols * D.W + (cols - 1) * D.GX;
  const pos = new Array(nodes.length);
  const rowTop = [], rowBottom = [];
  let y = D.M + 4;
  rows.forEach(function (r, ri) {
    const rowW = r.length * D.W + (r.length - 1) * D.GX;
    let x = D.M + (contentW - rowW) / 2;
    let h = 0;
    for (const i of r) {
      pos[i] = { x: x, y: y, w: D.W, h: heights[i], row: ri };
      x += D.W + D.GX;
      h = Math.max(h, heights[i]);
    }
    rowTop.push(y);
    rowBottom.push(y + h);
    y += h + D.GY;
  });
  /* Edges: adjacent rows get a curve; longer ones leave below their source's row, run down a lane to the
   * right of the nodes, and enter their target from the gap above its row. A source's long edges share a
   * lane; lanes are reused once free. */
  const out = [];
  const laneOf = new Map(), laneEnd = [];
  const longSpan = new Map();
  for (const e of edges) {
    const s = L.index.get(e.source), t = L.index.get(e.target);
    if (s === undefined || t === undefined || s === t) continue;
    if (pos[t].row > pos[s].row + 1) longSpan.set(s, Math.max(longSpan.get(s) || 0, pos[t].row));
  }
  Array.from(longSpan.keys()).sort(function (a, b) { return a - b; }).forEach(function (s) {
    const start = pos[s].row, end = longSpan.get(s);
    let lane = laneEnd.findIndex(function (last) { return last <= start; });
    if (lane < 0) { lane = laneEnd.length; laneEnd.push(end); } else { laneEnd[lane] = end; }
    laneOf.set(s, lane % D.MAXLANES);
  });
  const lanes = Math.min(laneEnd.length, D.MAXLANES);
  const laneX = function (k) { return D.M + contentW + 16 + k * D.LANE; };
  for (const e of edges) {
    const s = L.index.get(e.source), t = L.index.get(e.target);
    if (s === undefined || t === undefined || s === t) continue;
    const ps = pos[s], pt = pos[t];
    const sx = ps.x + D.W / 2, sy = ps.y + ps.h, tx = pt.x + D.W / 2, ty = pt.y;
    let d;
    if (pt.row === ps.row + 1) {
      const my = (sy + ty) / 2;
      d = "M" + sx + " " + sy + " C" + sx + " " + my + " " + tx + " " + my + " " + tx + " " + (ty - 6);
    } else if (pt.row > ps.row + 1) {
      const k = laneOf.get(s), lx = laneX(k), off = (k % 4) * 4;
      const y1 = rowBottom[ps.row] + 10 + off, y2 = rowTop[pt.row] - 14 - off;
      d = "M" + sx + " " + sy + " V" + y1 + " H" + lx + " V" + y2 + " H" + tx + " V" + (ty - 6);
    } else {
      /* against the notebook order (should not happen): a plain curve */
      const dy = Math.max(30, Math.abs(ty - sy) / 2);
      d = "M" + sx + " " + (ps.y) + " C" + sx + " " + (ps.y - dy) + " " + tx + " " + (ty - dy) + " " + tx + " " + (ty - 6);
    }
    out.push({ edge: e, d: d, arrow: "M" + (tx - 4.5) + " " + (ty - 8) + " L" + (tx + 4.5) + " " + (ty - 8) + " L" + tx + " " + (ty - 1) + " Z" });
  }
  return {
    pos: pos, edges: out,
    width: Math.ceil(D.M + contentW + (lanes ? 16 + lanes * D.LANE : 0) + D.M),
    height: Math.ceil(nodes.length ? y - D.GY + D.M : 2 * D.M),
  };
}

/* ------------------------------------------------------------------------------------------------ */
/* Graph rendering                                                                                    */

function _nbdGraphHeader(doc, data, now) {
  const run = (data && data.run) || {};
  const nodes = (data && Array.isArray(data.nodes)) ? data.nodes : [];
  const item = function (label, value, attrs) {
    return _nbdEl(doc, "span", Object.assign({ "class": "nbd-header-item" }, attrs || {}),
      label ? [label + " ", _nbdEl(doc, "b", null, value)] : value);
  };
  const parts = [];
  parts.push(_nbdEl(doc, "span", { "class": "nbd-header-item nbd-header-run" },
    ["Run ", _nbdEl(doc, "code", { "class": "nbd-run-id" }, run.run_id ? String(run.run_id) : "\u2014")]));
  if (run.notebook) parts.push(item("", _nbdEl(doc, "b", { "class": "nbd-header-notebook", "title": String(run.notebook) }, _nbdTrunc(run.notebook, 60))));
  if (run.status) parts.push(_nbdPill(doc, String(run.status)));
  if (run.live && (run.status === "running" || !run.status)) parts.push(_nbdEl(doc, "span", { "class": "nbd-live" }, "\u25cf live"));
  let duration = _nbdNum(run.duration_s);
  if (duration === null && _nbdNum(run.started_at) !== null) {
    duration = _nbdNum(run.ended_at) !== null ? run.ended_at - run.started_at : (run.live ? now - run.started_at : null);
  }
  if (duration !== null) parts.push(item("took", nbdFormatDuration(duration), { "data-field": "duration" }));
  if (_nbdNum(run.time_saved_s) !== null && run.time_saved_s > 0) parts.push(item("saved", nbdFormatDuration(run.time_saved_s), { "data-field": "time-saved" }));
  if (run.resumed_from) parts.push(item("resumed from", String(run.resumed_from)));
  if (run.params && typeof run.params === "object" && Object.keys(run.params).length) {
    const text = JSON.stringify(run.params);
    parts.push(_nbdEl(doc, "span", { "class": "nbd-header-item", "title": text }, ["params ", _nbdEl(doc, "code", null, _nbdTrunc(text, 70))]));
  }
  let wait = "";
  if (run.status === "suspended") {
    wait = nbdDescribeWait(run);
  } else {
    const waiting = nodes.filter(function (n) { return (n.status === "sleeping" || n.status === "waiting") && n.waiting_for; });
    if (waiting.length) wait = String(waiting[0].waiting_for);
  }
  if (wait) parts.push(_nbdEl(doc, "span", { "class": "nbd-header-item nbd-header-wait" }, wait));
  const counts = {};
  for (const n of nodes) counts[n.status] = (counts[n.status] || 0) + 1;
  const summary = _nbdStatuses().filter(function (s) { return counts[s]; }).map(function (s) { return counts[s] + " " + s; });
  if (nodes.length) parts.push(_nbdEl(doc, "span", { "class": "nbd-header-item nbd-header-counts" }, _nbdPlural(nodes.length, "step") + ": " + summary.join(", ")));
  return _nbdEl(doc, "div", { "class": "nbd-header" }, parts);
}

function _nbdTextWidth(text, px) {
  return Math.ceil(String(text).length * (px || 6.3));
}

function _nbdRenderNode(doc, node, p, expanded, now) {
  const D = _nbdDims();
  const status = String(node.status || "pending");
  const duration = _nbdNodeDuration(node, now);
  const attempts = Array.isArray(node.attempts) ? node.attempts.length : 0;
  const meta = [status];
  if (duration !== null) meta.push(nbdFormatDuration(duration) + (_nbdIsActive(status) && _nbdNum(node.duration_s) === null ? "\u2026" : ""));
  if (attempts > 1) meta.push(attempts + " attempts");
  const tooltip = [String(node.label || node.id), meta.join(" \u00b7 ")];
  if (node.waiting_for) tooltip.push(String(node.waiting_for));
  if (node.error) tooltip.push(nbdStripAnsi((node.error.ename || "Error") + ": " + (node.error.evalue || "")));
  const g = _nbdSvg(doc, "g", {
    "class": "nbd-node", "data-node-id": node.id, "data-status": status, "data-label": String(node.label || node.id), "transform": "translate(" + p.x + "," + p.y + ")",
    "tabindex": "0", "role": "button", "aria-label": _nbdTrunc(tooltip.join(", "), 200),
  });
  _nbdAppend(g, [
    _nbdSvg(doc, "title", null, tooltip.join("\n")),
    _nbdSvg(doc, "rect", { "class": "nbd-node-ring", "x": -4, "y": -4, "width": D.W + 8, "height": p.h + 8, "rx": 9 }),
    _nbdSvg(doc, "rect", { "class": "nbd-node-box", "width": D.W, "height": p.h, "rx": 6 }),
    _nbdSvg(doc, "rect", { "class": "nbd-node-stripe", "x": 0, "y": 0, "width": 5, "height": p.h, "rx": 2 }),
  ]);
  const ordText = node.ordinal === null || node.ordinal === undefined ? "" : "#" + node.ordinal;
  if (ordText) _nbdAppend(g, _nbdSvg(doc, "text", { "class": "nbd-node-ord", "x": D.W - 8, "y": 19, "text-anchor": "end" }, ordText));
  const labelChars = Math.floor((D.W - 28 - _nbdTextWidth(ordText, 7)) / 7.7);
  _nbdAppend(g, _nbdSvg(doc, "text", { "class": "nbd-node-label", "x": 13, "y": 19 }, _nbdTrunc(node.label || node.id, labelChars)));
  const metaText = _nbdSvg(doc, "text", { "class": "nbd-node-meta", "x": 13, "y": 37 }, [
    _nbdSvg(doc, "tspan", { "class": "nbd-node-status" }, status),
    meta.length > 1 ? " \u00b7 " + meta.slice(1).join(" \u00b7 ") : null,
  ]);
  _nbdAppend(g, metaText);
  /* third line: restored badge, k/n steps toggle, or what it waits for */
  let x = 13;
  if (status === "restored") {
    const saved = _nbdNum(node.time_saved_s);
    const text = "restored" + (saved !== null ? " \u00b7 saved " + nbdFormatDuration(saved) : "");
    const w = _nbdTextWidth(text, 6.1) + 12;
    _nbdAppend(g, _nbdSvg(doc, "g", { "class": "nbd-badge nbd-restored-badge", "transform": "translate(" + x + ",44)" }, [
      _nbdSvg(doc, "rect", { "width": w, "height": 15, "rx": 7.5 }),
      _nbdSvg(doc, "text", { "x": 6, "y": 11 }, text),
    ]));
    x += w + 6;
  }
  const base = _nbdBaseHeight(node);
  if (_nbdHasChildren(node)) {
    if (x > 13) x = 13;   /* below the badge (a taller box) */
    const line = base === D.H ? 44 : 63;
    const c = node.children || {};
    const total = _nbdNum(c.total) !== null ? c.total : node.child_steps.length;
    const done = (c.completed || 0) + (c.restored || 0);
    const open = expanded.has(node.id);
    const text = (open ? "\u25be " : "\u25b8 ") + done + "/" + total + " steps" + (c.failed ? " \u00b7 " + c.failed + " failed" : "");
    const w = _nbdTextWidth(text, 6.1) + 12;
    _nbdAppend(g, _nbdSvg(doc, "g", {
      "class": "nbd-expand", "transform": "translate(" + x + "," + line + ")", "role": "button", "tabindex": "0",
      "aria-expanded": open ? "true" : "false", "data-node-id": node.id,
    }, [
      _nbdSvg(doc, "title", null, (open ? "Hide" : "Show") + " the child steps"),
      _nbdSvg(doc, "rect", { "width": w, "height": 15, "rx": 3 }),
      _nbdSvg(doc, "text", { "x": 6, "y": 11 }, text),
    ]));
    x += w + 6;
  }
  if (x === 13 && node.waiting_for) {
    _nbdAppend(g, _nbdSvg(doc, "text", { "class": "nbd-node-wait", "x": 13, "y": 56 }, _nbdTrunc(node.waiting_for, 34)));
  } else if (x === 13 && node.error) {
    _nbdAppend(g, _nbdSvg(doc, "text", { "class": "nbd-node-wait", "x": 13, "y": 56 },
      _nbdTrunc(nbdStripAnsi((node.error.ename || "Error") + ": " + (node.error.evalue || "")), 34)));
  }
  if (expanded.has(node.id) && _nbdHasChildren(node)) {
    const list = _nbdSvg(doc, "g", { "class": "nbd-children", "transform": "translate(0," + (base + 2) + ")" });
    _nbdAppend(list, _nbdSvg(doc, "line", { "class": "nbd-children-sep", "x1": 8, "x2": D.W - 8, "y1": 0, "y2": 0 }));
    const steps = Array.isArray(node.child_steps) ? node.child_steps : [];
    steps.forEach(function (c, i) {
      const cs = String(c.status || "pending");
      const cd = _nbdNodeDuration(c, now);
      const bits = [cs];
      if (cd !== null) bits.push(nbdFormatDuration(cd));
      const name = c.name || ("step #" + c.ordinal);
      const tip = [name + " (step #" + c.ordinal + ")", bits.join(" \u00b7 ") + (c.attempts > 1 ? " \u00b7 " + c.attempts + " attempts" : "")];
      if (c.attempts > 1) bits.push("\u00d7" + c.attempts);   /* x3: three attempts */
      if (c.error) tip.push(nbdStripAnsi(c.error));
      const row = _nbdSvg(doc, "g", {
        "class": "nbd-child", "data-ordinal": c.ordinal, "data-status": cs,
        "transform": "translate(0," + (6 + i * D.CHILD) + ")",
      }, [
        _nbdSvg(doc, "title", null, tip.join("\n")),
        _nbdSvg(doc, "circle", { "class": "nbd-dot", "data-status": cs, "cx": 16, "cy": 8, "r": 4 }),
      ]);
      const room = Math.floor((D.W - 34) / 6.1);
      const main = _nbdTrunc(_nbdTrunc(name, 14) + "  " + bits.join(" \u00b7 "), room);
      const textEl = _nbdSvg(doc, "text", { "x": 26, "y": 12 }, main);
      if (c.error && room - main.length >= 6) {
        _nbdAppend(textEl, _nbdSvg(doc, "tspan", { "class": "nbd-child-error" }, " " + _nbdTrunc(nbdStripAnsi(c.error), room - main.length - 1)));
      }
      _nbdAppend(row, textEl);
      _nbdAppend(list, row);
    });
    const total = node.children && _nbdNum(node.children.total) !== null ? node.children.total : steps.length;
    if (total > steps.length || steps.length === 0) {
      _nbdAppend(list, _nbdSvg(doc, "text", { "class": "nbd-node-meta", "x": 26, "y": 18 + steps.length * D.CHILD },
        steps.length ? "\u2026 and " + (total - steps.length) + " more" : "no child steps recorded"));
    }
    _nbdAppend(g, list);
  }
  return g;
}

function _nbdBuildSvg(doc, data, expanded, now) {
  const nodes = Array.isArray(data.nodes) ? data.nodes : [];
  const edges = Array.isArray(data.edges) ? data.edges : [];
  const lay = _nbdLayout(nodes, edges, expanded);
  const svg = _nbdSvg(doc, "svg", {
    "class": "nbd-graph-svg", "width": lay.width, "height": lay.height,
    "viewBox": "0 0 " + lay.width + " " + lay.height,
    /* shrinks to the pane down to 70%, then scrolls */
    "style": "width:clamp(" + Math.ceil(lay.width * 0.7) + "px,100%," + lay.width + "px);height:auto;margin:0 auto", "aria-label": "Steps of run " + ((data.run && data.run.run_id) || ""),
  });
  const edgeLayer = _nbdSvg(doc, "g", { "class": "nbd-edges" });
  const nodeLayer = _nbdSvg(doc, "g", { "class": "nbd-nodes" });
  const edgeEls = [];
  const labelOf = new Map(nodes.map(function (n) { return [n.id, n.label || n.id]; }));
  for (const e of lay.edges) {
    const vars = Array.isArray(e.edge.variables) ? e.edge.variables.map(String) : [];
    const tip = _nbdTrunc(labelOf.get(e.edge.source), 40) + " \u2192 " + _nbdTrunc(labelOf.get(e.edge.target), 40) +
      (vars.length ? "\n" + vars.join(", ") : "");
    const group = _nbdSvg(doc, "g", { "class": "nbd-edge-group", "data-source": e.edge.source, "data-target": e.edge.target }, [
      _nbdSvg(doc, "title", null, tip),
      _nbdSvg(doc, "path", { "class": "nbd-edge-hit", "d": e.d }),
      _nbdSvg(doc, "path", { "class": "nbd-edge", "d": e.d, "data-source": e.edge.source, "data-target": e.edge.target,
        "data-variables": vars.join(",") }),
      _nbdSvg(doc, "path", { "class": "nbd-arrow", "d": e.arrow }),
    ]);
    edgeEls.push(group);
    edgeLayer.appendChild(group);
  }
  const nodeEls = new Map();
  nodes.forEach(function (n, i) {
    const g = _nbdRenderNode(doc, n, lay.pos[i], expanded, now);
    nodeEls.set(String(n.id), g);
    nodeLayer.appendChild(g);
  });
  svg.appendChild(edgeLayer);
  svg.appendChild(nodeLayer);
  return { svg: svg, nodeEls: nodeEls, edgeEls: edgeEls };
}

function _nbdApplySelection(st) {
  st.nodeEls.forEach(function (g, id) {
    const on = st.selected !== null && st.selected !== undefined && id === String(st.selected);
    g.setAttribute("class", on ? "nbd-node nbd-selected" : "nbd-node");
    g.setAttribute("aria-pressed", on ? "true" : "false");
  });
  for (const group of st.edgeEls) {
    const on = st.selected && (group.getAttribute("data-source") === String(st.selected) ||
                               group.getAttribute("data-target") === String(st.selected));
    group.setAttribute("class", on ? "nbd-edge-group nbd-edge-active" : "nbd-edge-group");
  }
}

function _nbdGraphEvent(st, event) {
  const target = event.target;
  const toggle = _nbdClosest(target, "nbd-expand", st.root);
  if (toggle) {
    const id = toggle.getAttribute("data-node-id");
    if (st.expanded.has(id)) st.expanded.delete(id); else st.expanded.add(id);
    if (event.stopPropagation) event.stopPropagation();
    _nbdGraphRebuild(st, true);
    return;
  }
  const g = _nbdClosest(target, "nbd-node", st.root);
  if (!g) return;
  const id = g.getAttribute("data-node-id");
  st.selected = id;
  _nbdApplySelection(st);
  if (st.options && typeof st.options.onSelect === "function") st.options.onSelect(id);
}

function _nbdGraphRebuild(st, force) {
  const data = st.data || {};
  const key = JSON.stringify([data, Array.from(st.expanded).sort()]);
  if (!force && key === st.key) return false;
  st.key = key;
  const doc = st.root.ownerDocument;
  const now = _nbdClock(data);
  const run = data.run || {};
  st.root.setAttribute("data-run-id", run.run_id === null || run.run_id === undefined ? "" : String(run.run_id));
  st.root.setAttribute("data-run-status", run.status === null || run.status === undefined ? "" : String(run.status));
  const header = _nbdGraphHeader(doc, data, now);
  st.root.replaceChild(header, st.header);
  st.header = header;
  _nbdClear(st.scroll);
  const nodes = Array.isArray(data.nodes) ? data.nodes : [];
  if (!nodes.length) {
    st.nodeEls = new Map();
    st.edgeEls = [];
    st.scroll.appendChild(_nbdEl(doc, "div", { "class": "nbd-graph-empty" },
      run.run_id ? "No steps yet." : "No run yet: run a cell with nbdurable loaded."));
    return true;
  }
  const built = _nbdBuildSvg(doc, data, st.expanded, now);
  st.nodeEls = built.nodeEls;
  st.edgeEls = built.edgeEls;
  st.scroll.appendChild(built.svg);
  _nbdApplySelection(st);
  return true;
}

/* Draws `data` (GraphData) into `container` as div.nbd-graph[data-run-id][data-run-status]: a header line
 * and an SVG DAG. options: {onSelect(id), selected (a node id; omit to keep the current selection),
 * expanded (an array of node ids to expand, merged into the kept ones)}. Returns the div.nbd-graph. */
function nbdRenderGraph(container, data, options) {
  options = options || {};
  const doc = _nbdDocOf(container);
  let st = container.__nbdGraph;
  if (!st || st.root.parentNode !== container) {
    nbdInjectStyles(doc);
    const root = _nbdEl(doc, "div", { "class": "nbd-graph nbd-ui", "data-run-id": "", "data-run-status": "" });
    const header = _nbdEl(doc, "div", { "class": "nbd-header" });
    const scroll = _nbdEl(doc, "div", { "class": "nbd-graph-scroll" });
    root.appendChild(header);
    root.appendChild(scroll);
    container.appendChild(root);
    st = {
      root: root, header: header, scroll: scroll, data: null, key: null, options: options,
      selected: st ? st.selected : null, expanded: st ? st.expanded : new Set(),
      nodeEls: new Map(), edgeEls: [],
    };
    root.addEventListener("click", function (event) { _nbdGraphEvent(st, event); });
    root.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        if (_nbdClosest(event.target, "nbd-expand", root) || _nbdClosest(event.target, "nbd-node", root)) {
          if (event.preventDefault) event.preventDefault();
          _nbdGraphEvent(st, event);
        }
      }
    });
    container.__nbdGraph = st;
  }
  st.options = options;
  if (options.selected !== undefined) st.selected = options.selected === "" ? null : options.selected;
  if (Array.isArray(options.expanded)) for (const id of options.expanded) st.expanded.add(String(id));
  st.data = data || {};
  if (!_nbdGraphRebuild(st, false)) _nbdApplySelection(st);
  return st.root;
}

/* ------------------------------------------------------------------------------------------------ */
/* Details                                                                                            */

function _nbdTable(doc, cls, headers, rows, numeric) {
  numeric = numeric || [];
  return _nbdEl(doc, "table", { "class": "nbd-table " + cls }, [
    _nbdEl(doc, "thead", null, _nbdEl(doc, "tr", null, headers.map(function (h) { return _nbdEl(doc, "th", null, h); }))),
    _nbdEl(doc, "tbody", null, rows.map(function (r) {
      const attrs = r.attrs || null;
      const cells = r.cells || r;
      return _nbdEl(doc, "tr", attrs, cells.map(function (c, i) {
        return _nbdEl(doc, "td", numeric.indexOf(i) >= 0 ? { "class": "nbd-num" } : null, c === null || c === undefined || c === "" ? "\u2014" : c);
      }));
    })),
  ]);
}

/* Shows one node (GraphData node) in `container` as div.nbd-details[data-node-id]: source, variables,
 * error and traceback, attempts, child steps. `node` null: a hint to click a step. options: {now} (unix
 * seconds to measure a step still going against; default the clock). */
function nbdRenderDetails(container, node, options) {
  options = options || {};
  const doc = _nbdDocOf(container);
  let st = container.__nbdDetails;
  const key = node ? JSON.stringify(node) : "";
  if (st && st.root.parentNode === container && st.key === key) return st.root;
  nbdInjectStyles(doc);
  const root = _nbdEl(doc, "div", { "class": "nbd-details nbd-ui" });
  if (!node) {
    _nbdAppend(root, _nbdEl(doc, "div", { "class": "nbd-details-empty" }, "Click a step to see its source, variables, error and attempts."));
  } else {
    const status = String(node.status || "pending");
    root.setAttribute("data-node-id", String(node.id));
    root.setAttribute("data-status", status);
    _nbdAppend(root, _nbdEl(doc, "div", { "class": "nbd-details-title" }, [
      _nbdPill(doc, status),
      _nbdEl(doc, "span", { "class": "nbd-details-label" }, String(node.label || node.id)),
    ]));
    const now = _nbdNum(options.now) !== null ? options.now : _nbdNow();
    const meta = [];
    const add = function (k, v) { if (v !== null && v !== undefined && v !== "") meta.push(_nbdEl(doc, "dt", null, k), _nbdEl(doc, "dd", null, v)); };
    add("Step", node.ordinal === null || node.ordinal === undefined ? "not run yet in this run (" + node.id + ")" : "#" + node.ordinal);
    add("Started", nbdFormatTime(node.started_at));
    add("Ended", nbdFormatTime(node.ended_at));
    const d = _nbdNodeDuration(node, now);
    add("Duration", d === null ? "" : nbdFormatDuration(d) + (_nbdIsActive(status) && _nbdNum(node.duration_s) === null ? " so far" : ""));
    if (node.restored_from) {
      add("Restored from", "run " + (node.restored_from.run_id || "?") +
        (node.restored_from.ordinal === null || node.restored_from.ordinal === undefined ? "" : " step #" + node.restored_from.ordinal));
    }
    if (_nbdNum(node.time_saved_s) !== null) add("Time saved", nbdFormatDuration(node.time_saved_s));
    if (Array.isArray(node.attempts) && node.attempts.length > 1) add("Attempts", String(node.attempts.length));
    if (node.waiting_for) add("Waiting for", String(node.waiting_for));
    if (Array.isArray(node.reads) && node.reads.length) add("Reads", node.reads.join(", "));
    _nbdAppend(root, _nbdEl(doc, "dl", { "class": "nbd-details-meta" }, meta));

    if (node.error) {
      const e = node.error;
      _nbdAppend(root, [
        _nbdEl(doc, "h4", null, "Error"),
        _nbdEl(doc, "div", { "class": "nbd-error" }, [
          _nbdEl(doc, "div", { "class": "nbd-error-title" }, nbdStripAnsi((e.ename || "Error") + ": " + (e.evalue || ""))),
          e.traceback ? _nbdEl(doc, "pre", { "class": "nbd-traceback" }, nbdStripAnsi(Array.isArray(e.traceback) ? e.traceback.join("\n") : e.traceback)) : null,
        ]),
      ]);
    }
    _nbdAppend(root, [
      _nbdEl(doc, "h4", null, "Source"),
      _nbdEl(doc, "pre", { "class": "nbd-source" }, _nbdEl(doc, "code", null, String(node.source || ""))),
    ]);
    const vars = Array.isArray(node.variables) ? node.variables : [];
    _nbdAppend(root, _nbdEl(doc, "h4", null, "Variables"));
    if (vars.length) {
      _nbdAppend(root, _nbdTable(doc, "nbd-vars", ["Name", "Type", "Size", "Stored as"], vars.map(function (v) {
        const deleted = v.op === "del";
        return {
          attrs: { "class": "nbd-var", "data-var": String(v.name), "data-op": v.op || "set" },
          cells: [deleted ? _nbdEl(doc, "span", null, [_nbdEl(doc, "s", null, String(v.name)), " (deleted)"]) : _nbdEl(doc, "code", null, String(v.name)),
                  v.type ? String(v.type) : "", nbdFormatBytes(v.size_bytes), v.format ? String(v.format) : ""],
        };
      }), [2]));
    } else {
      _nbdAppend(root, _nbdEl(doc, "div", { "class": "nbd-muted" }, "No variables set."));
    }
    const attempts = Array.isArray(node.attempts) ? node.attempts : [];
    if (attempts.length) {
      _nbdAppend(root, [
        _nbdEl(doc, "h4", null, "Attempts"),
        _nbdTable(doc, "nbd-attempts", ["#", "Started", "Duration", "Error", "Next delay"], attempts.map(function (a) {
          const s = _nbdNum(a.started_at), e = _nbdNum(a.ended_at);
          return {
            attrs: { "class": "nbd-attempt", "data-attempt": a.attempt },
            cells: [String(a.attempt), nbdFormatTime(s), s !== null && e !== null ? nbdFormatDuration(e - s) : "",
                    a.error ? nbdStripAnsi(a.error) : "", _nbdNum(a.next_delay_s) !== null ? nbdFormatDuration(a.next_delay_s) : ""],
          };
        }), [0, 2, 4]),
      ]);
    }
    const steps = Array.isArray(node.child_steps) ? node.child_steps : [];
    if (_nbdHasChildren(node)) {
      const total = node.children && _nbdNum(node.children.total) !== null ? node.children.total : steps.length;
      _nbdAppend(root, [
        _nbdEl(doc, "h4", null, "Child steps (" + total + ")"),
        _nbdTable(doc, "nbd-detail-children", ["#", "Name", "Status", "Duration", "Attempts", "Error"], steps.map(function (c) {
          const cd = _nbdNodeDuration(c, now);
          return {
            attrs: { "class": "nbd-detail-child", "data-ordinal": c.ordinal, "data-status": c.status || "" },
            cells: [String(c.ordinal), c.name ? String(c.name) : "", _nbdPill(doc, String(c.status || "?")),
                    cd === null ? "" : nbdFormatDuration(cd), c.attempts ? String(c.attempts) : "", c.error ? nbdStripAnsi(c.error) : ""],
          };
        }), [0, 3, 4]),
        total > steps.length ? _nbdEl(doc, "div", { "class": "nbd-muted" }, "\u2026 and " + (total - steps.length) + " more not listed") : null,
      ]);
    }
  }
  if (st && st.root.parentNode === container) container.replaceChild(root, st.root);
  else container.appendChild(root);
  container.__nbdDetails = { root: root, key: key };
  return root;
}

/* ------------------------------------------------------------------------------------------------ */
/* Gantt                                                                                              */

function _nbdTickStep(span) {
  const steps = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
                 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
  for (const s of steps) if (span / s <= 6) return s;
  return Math.ceil(span / 6 / 604800) * 604800;
}

function _nbdFormatTick(t) {
  if (t === 0) return "0";
  if (t < 1) return Math.round(t * 1000) + " ms";
  if (t < 60) return (Number.isInteger(t) ? String(t) : t.toFixed(1)) + " s";
  /* whole ticks: "2 m", "1 m 30 s", "3 h", "2 d" */
  return nbdFormatDuration(t).replace(/ 0+ [smh]$/, "");
}

/* The timeline of `data` in `container` as div.nbd-gantt: one row per node that has a start time, its bar
 * (.nbd-bar[data-node-id][data-status]) from started_at to ended_at (or now while it runs), its child steps
 * as thin bars (.nbd-child-bar[data-ordinal][data-status]) and a time axis relative to the run's start.
 * options: {onSelect(id), selected}. Returns the div.nbd-gantt. */
function nbdRenderGantt(container, data, options) {
  options = options || {};
  const doc = _nbdDocOf(container);
  let st = container.__nbdGantt;
  if (!st || st.root.parentNode !== container) {
    nbdInjectStyles(doc);
    const root = _nbdEl(doc, "div", { "class": "nbd-gantt nbd-ui" });
    container.appendChild(root);
    st = { root: root, options: options };
    root.addEventListener("click", function (event) {
      const row = _nbdClosest(event.target, "nbd-gantt-row", root);
      if (!row) return;
      const id = row.getAttribute("data-node-id");
      st.selected = id;
      for (let r = st.rows ? st.rows.firstChild : null; r; r = r.nextSibling) {
        r.setAttribute("class", r.getAttribute("data-node-id") === id ? "nbd-gantt-row nbd-selected" : "nbd-gantt-row");
      }
      if (st.options && typeof st.options.onSelect === "function") st.options.onSelect(id);
    });
    container.__nbdGantt = st;
  }
  st.options = options;
  if (options.selected !== undefined) st.selected = options.selected;
  data = data || {};
  const run = data.run || {};
  const now = _nbdClock(data);
  const nodes = (Array.isArray(data.nodes) ? data.nodes : []).filter(function (n) { return _nbdNum(n.started_at) !== null; });
  _nbdClear(st.root);
  st.root.setAttribute("data-run-id", run.run_id === null || run.run_id === undefined ? "" : String(run.run_id));
  if (!nodes.length) {
    st.rows = null;
    st.root.appendChild(_nbdEl(doc, "div", { "class": "nbd-gantt-empty" }, "No step has started yet."));
    return st.root;
  }
  const runEnd = _nbdNum(run.ended_at);
  const endOf = function (item) {
    const end = _nbdNum(item.ended_at);
    if (end !== null) return end;
    if (_nbdIsActive(item.status) || run.live) return Math.max(now, item.started_at);
    if (runEnd !== null) return Math.max(runEnd, item.started_at);
    const d = _nbdNum(item.duration_s);
    return item.started_at + (d === null ? 0 : d);
  };
  let t0 = Infinity, t1 = -Infinity;
  for (const n of nodes) {
    t0 = Math.min(t0, n.started_at);
    t1 = Math.max(t1, endOf(n));
    for (const c of (Array.isArray(n.child_steps) ? n.child_steps : [])) {
      if (_nbdNum(c.started_at) === null) continue;
      t0 = Math.min(t0, c.started_at);
      t1 = Math.max(t1, endOf(c));
    }
  }
  if (_nbdNum(run.started_at) !== null) t0 = Math.min(t0, run.started_at);
  const span = Math.max(t1 - t0, 0.001);
  const pct = function (t) { return Math.max(0, Math.min(100, (t - t0) / span * 100)); };
  const step = _nbdTickStep(span);
  const ticks = [], lines = [];
  for (let i = 0; i * step <= span + 1e-9; i++) {
    const t = Math.round(i * step * 1000) / 1000;
    const left = (t / span * 100).toFixed(3) + "%";
    ticks.push(_nbdEl(doc, "span", { "class": "nbd-gantt-tick", "style": "left:" + left }, _nbdFormatTick(t)));
    lines.push(_nbdEl(doc, "div", { "class": "nbd-gantt-line", "style": "left:" + left }));
    if (ticks.length > 40) break;
  }
  _nbdAppend(st.root, _nbdEl(doc, "div", { "class": "nbd-gantt-head" },
    "Timeline from " + nbdFormatTime(t0) + " \u00b7 " + nbdFormatDuration(span) + (run.live ? " so far" : "")));
  const grid = _nbdEl(doc, "div", { "class": "nbd-gantt-grid" });
  _nbdAppend(grid, _nbdEl(doc, "div", { "class": "nbd-gantt-axis" }, [
    _nbdEl(doc, "span", { "class": "nbd-muted" }, "step"),
    _nbdEl(doc, "div", { "class": "nbd-gantt-ticks" }, ticks),
  ]));
  const rows = _nbdEl(doc, "div", { "class": "nbd-gantt-rows", "style": "position:relative" });
  for (const n of nodes) {
    const status = String(n.status || "pending");
    const end = endOf(n);
    const left = pct(n.started_at), width = Math.max(0, pct(end) - left);
    const d = _nbdNodeDuration(n, now);
    const tip = String(n.label || n.id) + "\n" + status + (d !== null ? " \u00b7 " + nbdFormatDuration(d) : "") +
      "\n" + nbdFormatTime(n.started_at) + (_nbdNum(n.ended_at) !== null ? " \u2192 " + nbdFormatTime(n.ended_at) : "");
    const track = _nbdEl(doc, "div", { "class": "nbd-gantt-track" }, [
      _nbdEl(doc, "div", { "class": "nbd-bar", "data-node-id": n.id, "data-status": status,
        "style": "left:" + left.toFixed(3) + "%;width:" + width.toFixed(3) + "%", "title": tip }),
    ]);
    for (const c of (Array.isArray(n.child_steps) ? n.child_steps : [])) {
      if (_nbdNum(c.started_at) === null) continue;
      const cl = pct(c.started_at), cw = Math.max(0, pct(endOf(c)) - cl);
      const cd = _nbdNodeDuration(c, now);
      _nbdAppend(track, _nbdEl(doc, "div", { "class": "nbd-child-bar", "data-ordinal": c.ordinal, "data-status": c.status || "",
        "style": "left:" + cl.toFixed(3) + "%;width:" + cw.toFixed(3) + "%",
        "title": (c.name || "step #" + c.ordinal) + "\n" + (c.status || "") + (cd !== null ? " \u00b7 " + nbdFormatDuration(cd) : "") +
          (c.error ? "\n" + nbdStripAnsi(c.error) : "") }));
    }
    const selected = st.selected !== null && st.selected !== undefined && String(st.selected) === String(n.id);
    _nbdAppend(rows, _nbdEl(doc, "div", { "class": selected ? "nbd-gantt-row nbd-selected" : "nbd-gantt-row", "data-node-id": n.id }, [
      _nbdEl(doc, "span", { "class": "nbd-gantt-label", "title": String(n.label || n.id) }, [
        n.ordinal === null || n.ordinal === undefined ? null : _nbdEl(doc, "span", { "class": "nbd-muted" }, "#" + n.ordinal),
        String(n.label || n.id),
      ]),
      track,
    ]));
  }
  _nbdAppend(grid, rows);
  /* dashed tick lines over the tracks' column */
  const overlay = _nbdEl(doc, "div", { "class": "nbd-gantt-axis nbd-gantt-overlay",
    "style": "position:absolute;top:0;bottom:0;left:0;right:0;height:auto;border:0;pointer-events:none" }, [
    _nbdEl(doc, "span", null, ""),
    _nbdEl(doc, "div", { "class": "nbd-gantt-lines", "style": "position:relative;height:100%" }, lines),
  ]);
  _nbdAppend(grid, overlay);
  st.rows = rows;
  _nbdAppend(st.root, grid);
  return st.root;
}

/* ------------------------------------------------------------------------------------------------ */
/* A run view: graph + details, and the timeline (a tab, or below)                                   */

/* Mounts a run view into `el`. options: {onSelect(id), layout: "tabs" (Graph | Timeline, the widget) or
 * "stacked" (the timeline under the graph, the report)}. Returns {update(data, selected), setSelected(id),
 * destroy()}. */
function nbdMountRunView(el, options) {
  options = options || {};
  const doc = _nbdDocOf(el);
  nbdInjectStyles(doc);
  const tabs = options.layout !== "stacked";
  const root = _nbdEl(doc, "div", { "class": "nbd-run-view nbd-ui", "data-layout": tabs ? "tabs" : "stacked" });
  const graphBox = _nbdEl(doc, "div", { "class": "nbd-graph-box" });
  const ganttBox = _nbdEl(doc, "div", { "class": "nbd-gantt-box" });
  const detailsBox = _nbdEl(doc, "div", { "class": "nbd-details-box" });
  const left = _nbdEl(doc, "div", { "class": "nbd-run-left" }, [graphBox]);
  let tab = "graph", bar = null;
  const tabButtons = [];
  if (tabs) {
    for (const [name, text] of [["graph", "Graph"], ["gantt", "Timeline"]]) {
      const b = _nbdEl(doc, "button", { "type": "button", "class": "nbd-tab", "data-tab": name, "role": "tab",
        "aria-selected": name === tab ? "true" : "false" }, text);
      tabButtons.push(b);
    }
    bar = _nbdEl(doc, "div", { "class": "nbd-tabs", "role": "tablist" }, tabButtons);
    left.appendChild(ganttBox);
    ganttBox.setAttribute("hidden", "");
    root.appendChild(bar);
  }
  root.appendChild(_nbdEl(doc, "div", { "class": "nbd-run-main" }, [left, detailsBox]));
  if (!tabs) root.appendChild(ganttBox);
  el.appendChild(root);

  let data = null, selected = null;
  const findNode = function (id) {
    if (!data || !Array.isArray(data.nodes) || id === null || id === undefined) return null;
    for (const n of data.nodes) if (String(n.id) === String(id)) return n;
    return null;
  };
  const userSelect = function (id) {
    selected = id;
    render();
    if (typeof options.onSelect === "function") options.onSelect(id);
  };
  const render = function () {
    nbdRenderGraph(graphBox, data, { selected: selected, onSelect: userSelect });
    nbdRenderDetails(detailsBox, findNode(selected), { now: _nbdClock(data) });
    nbdRenderGantt(ganttBox, data, { selected: selected, onSelect: userSelect });  /* hidden in the Graph tab: cheap */
  };
  const onTab = function (event) {
    const b = _nbdClosest(event.target, "nbd-tab", bar);
    if (!b) return;
    tab = b.getAttribute("data-tab");
    for (const t of tabButtons) t.setAttribute("aria-selected", t === b ? "true" : "false");
    if (tab === "graph") { graphBox.removeAttribute("hidden"); ganttBox.setAttribute("hidden", ""); }
    else { ganttBox.removeAttribute("hidden"); graphBox.setAttribute("hidden", ""); }
    render();
  };
  if (bar) bar.addEventListener("click", onTab);
  return {
    root: root,
    update: function (newData, newSelected) {
      data = newData || {};
      if (newSelected !== undefined) selected = newSelected === "" ? null : newSelected;
      render();
    },
    setSelected: function (id) {
      selected = id === "" || id === undefined ? null : id;
      render();
    },
    showTab: function (name) {
      for (const t of tabButtons) if (t.getAttribute("data-tab") === name) onTab({ target: t });
    },
    destroy: function () {
      if (bar) bar.removeEventListener("click", onTab);
      if (root.parentNode) root.parentNode.removeChild(root);
    },
  };
}
