/* nbdurable graph_core.js: what the graph renderers share: statuses, formatting, DOM helpers. */

/* The graph renderers (graph_*.js) draw a run's GraphData (see ARCHITECTURE.md) as an SVG DAG, a details
 * panel and a timeline. No build step, no dependencies, no import/export: only function declarations, so
 * that Python can concatenate the files (in the order of GRAPH_SCRIPTS in nbdurable/widgets/__init__.py) in
 * front of a widget's ES module (run_graph.js, history.js) or inline them into the self-contained HTML
 * report (nbdurable/report.py). Their stylesheet is graph.css, loaded by the host (the widgets' `_css`, a
 * <style> element in the report): the scripts add no style element.
 *
 * Public: nbdRenderGraph, nbdRenderDetails, nbdRenderGantt, nbdMountRunView, and the helpers
 * nbdStatusColor, nbdFormatDuration, nbdFormatBytes, nbdFormatTime, nbdStripAnsi, nbdDescribeWait.
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

/* Whether a node has child steps: a total in node.children, or some in node.child_steps. */
function _nbdHasChildren(node) {
  return !!(node.children && node.children.total > 0) || (Array.isArray(node.child_steps) && node.child_steps.length > 0);
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

/* A child step's id in a selection: its cell's id, "/", its ordinal ("s4/7"). */
function _nbdChildId(node, child) {
  return String(node.id) + "/" + String(child.ordinal);
}

/* The node with `id` in `data`, or a child step ("s4/7") as a node the details panel can show: its name as
 * label, `cell` its parent node, `attempts` its attempt log, `error` split into ename/evalue. */
function _nbdFindNode(data, id) {
  if (!data || !Array.isArray(data.nodes) || id === null || id === undefined) return null;
  const key = String(id);
  for (const n of data.nodes) if (String(n.id) === key) return n;
  const slash = key.lastIndexOf("/");
  if (slash < 0) return null;
  const parent = _nbdFindNode(data, key.slice(0, slash));
  const steps = parent && Array.isArray(parent.child_steps) ? parent.child_steps : [];
  for (const c of steps) {
    if (String(c.ordinal) !== key.slice(slash + 1)) continue;
    let error = null;
    if (c.error) {
      const text = nbdStripAnsi(c.error), colon = text.indexOf(": ");
      error = colon > 0 ? { ename: text.slice(0, colon), evalue: text.slice(colon + 2) } : { ename: "Error", evalue: text };
    }
    return {
      id: key, ordinal: c.ordinal, label: c.name || ("step #" + c.ordinal), status: c.status, started_at: c.started_at,
      ended_at: c.ended_at, duration_s: c.duration_s, attempts: Array.isArray(c.attempt_log) ? c.attempt_log : [],
      error: error, variables: null, source: null, child_steps: [], children: { total: 0 },
      parent: { id: parent.id, label: parent.label, ordinal: parent.ordinal },
    };
  }
  return null;
}
