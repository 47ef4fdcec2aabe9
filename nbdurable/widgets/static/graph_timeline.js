/* nbdurable graph_timeline.js: the Gantt timeline (nbdRenderGantt): a bar per started step, child bars, a time axis. */

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
