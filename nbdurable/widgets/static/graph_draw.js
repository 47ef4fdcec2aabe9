/* nbdurable graph_draw.js: the graph as SVG (header, nodes, child steps, edges): nbdRenderGraph, selection, expansion. */

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
  if (run.forked_from) {
    const at = _nbdNum(run.forked_at_cell) || 0;
    parts.push(item(at ? "forked from" : "rerun of", String(run.forked_from) + (at ? " after cell " + at : ""), { "data-field": "lineage" }));
  }
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

function _nbdPlanText(plan) {
  /* what Run All will do with a cell not reached yet, in words (hover and details) */
  if (plan.action === "restore") {
    const from = plan.from || {};
    const saved = _nbdNum(plan.saved_s);
    return "will restore from run " + (from.run_id || "?") + " step #" + (from.ordinal === undefined ? "?" : from.ordinal) +
      (saved !== null ? " (saves " + nbdFormatDuration(saved) + ")" : "");
  }
  return "will execute" + (plan.reason ? ": " + String(plan.reason) : "");
}

function _nbdTextWidth(text, px) {
  return Math.ceil(String(text).length * (px || 6.3));
}

/* Node i (0-based) is the run's cell #i+1: numbered by its position among the top-level steps, the step
 * ordinal (which counts child steps too) kept in the details. */
function _nbdRenderNode(doc, node, p, expanded, now, cell) {
  const D = _nbdDims();
  const status = String(node.status || "pending");
  const duration = _nbdNodeDuration(node, now);
  const attempts = Array.isArray(node.attempts) ? node.attempts.length : 0;
  const meta = [status];
  const plan = node.plan && status === "pending" ? node.plan : null;
  if (plan) meta.push("will " + String(plan.action || "execute"));
  if (duration !== null) meta.push(nbdFormatDuration(duration) + (_nbdIsActive(status) && _nbdNum(node.duration_s) === null ? "\u2026" : ""));
  if (attempts > 1) meta.push(attempts + " attempts");
  const tooltip = [String(node.label || node.id), meta.join(" \u00b7 ")];
  if (node.waiting_for) tooltip.push(String(node.waiting_for));
  if (plan) tooltip.push(_nbdPlanText(plan));
  if (node.error) tooltip.push(nbdStripAnsi((node.error.ename || "Error") + ": " + (node.error.evalue || "")));
  const g = _nbdSvg(doc, "g", {
    "class": node.kind === "child_run" ? "nbd-node nbd-node-child-run" : "nbd-node", "data-kind": node.kind || "cell", "data-node-id": node.id, "data-status": status, "data-label": String(node.label || node.id), "data-cell": cell, "transform": "translate(" + p.x + "," + p.y + ")",
    "tabindex": "0", "role": "button", "aria-label": _nbdTrunc(tooltip.join(", "), 200),
  });
  _nbdAppend(g, [
    _nbdSvg(doc, "title", null, tooltip.join("\n")),
    _nbdSvg(doc, "rect", { "class": "nbd-node-ring", "x": -4, "y": -4, "width": D.W + 8, "height": p.h + 8, "rx": 9 }),
    _nbdSvg(doc, "rect", { "class": "nbd-node-box", "width": D.W, "height": p.h, "rx": 6 }),
    _nbdSvg(doc, "rect", { "class": "nbd-node-stripe", "x": 0, "y": 0, "width": 5, "height": p.h, "rx": 2 }),
  ]);
  const ordText = cell ? "#" + cell : "";
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
  if (node.child_run) {   /* a child run: its id, and that its own graph is one click away (details) */
    _nbdAppend(g, _nbdSvg(doc, "text", { "class": "nbd-node-wait nbd-child-run-id", "x": 13, "y": 56 },
      "\u2197 run " + _nbdTrunc(String(node.child_run.run_id), 30)));
  } else if (x === 13 && node.waiting_for) {
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
        "class": "nbd-child", "data-ordinal": c.ordinal, "data-status": cs, "data-node-id": _nbdChildId(node, c),
        "role": "button", "tabindex": "0",
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
  let cellNo = 0;
  nodes.forEach(function (n, i) {
    const g = _nbdRenderNode(doc, n, lay.pos[i], expanded, now, n.kind === "child_run" ? 0 : ++cellNo);
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
    const base = g.getAttribute("data-kind") === "child_run" ? "nbd-node nbd-node-child-run" : "nbd-node";
    g.setAttribute("class", on ? base + " nbd-selected" : base);
    g.setAttribute("aria-pressed", on ? "true" : "false");
    for (const c of g.querySelectorAll ? Array.from(g.querySelectorAll(".nbd-child")) : []) {
      c.setAttribute("class", c.getAttribute("data-node-id") === String(st.selected) ? "nbd-child nbd-selected" : "nbd-child");
    }
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
  const g = _nbdClosest(target, "nbd-child", st.root) || _nbdClosest(target, "nbd-node", st.root);
  if (!g) return;
  if (event.stopPropagation) event.stopPropagation();
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
        if (_nbdClosest(event.target, "nbd-expand", root) || _nbdClosest(event.target, "nbd-child", root) ||
            _nbdClosest(event.target, "nbd-node", root)) {
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
