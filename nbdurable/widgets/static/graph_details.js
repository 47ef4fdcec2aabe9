/* nbdurable graph_details.js: the details panel of a node (nbdRenderDetails): source, variables, error, attempts. */

/* A table in a horizontally scrolling box (a narrow panel scrolls it rather than breaking its words). */
function _nbdTable(doc, cls, headers, rows, numeric) {
  numeric = numeric || [];
  return _nbdEl(doc, "div", { "class": "nbd-table-box" }, _nbdEl(doc, "table", { "class": "nbd-table " + cls }, [
    _nbdEl(doc, "thead", null, _nbdEl(doc, "tr", null, headers.map(function (h) { return _nbdEl(doc, "th", null, h); }))),
    _nbdEl(doc, "tbody", null, rows.map(function (r) {
      const attrs = r.attrs || null;
      const cells = r.cells || r;
      return _nbdEl(doc, "tr", attrs, cells.map(function (c, i) {
        return _nbdEl(doc, "td", numeric.indexOf(i) >= 0 ? { "class": "nbd-num" } : null, c === null || c === undefined || c === "" ? "\u2014" : c);
      }));
    })),
  ]));
}

/* The failed attempts of a step as one text ("attempt 1: ValueError: boom; attempt 2: ..."). */
function _nbdAttemptErrors(log) {
  return (Array.isArray(log) ? log : []).filter(function (a) { return a && a.error; })
    .map(function (a) { return "attempt " + a.attempt + ": " + nbdStripAnsi(a.error); }).join("; ");
}

/* Shows one node (GraphData node) in `container` as div.nbd-details[data-node-id]: source, variables,
 * error and traceback, attempts, child steps. `node` null: a hint to click a step. options: {now} (unix
 * seconds to measure a step still going against; default the clock). */
function nbdRenderDetails(container, node, options) {
  options = options || {};
  const doc = _nbdDocOf(container);
  let st = container.__nbdDetails;
  const key = node ? JSON.stringify(node) : "";
  if (st && st.root.parentNode === container && st.key === key) { st.options = options; return st.root; }
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
    if (node.parent) add("Child step of", String(node.parent.label || node.parent.id));
    if (_nbdNum(node.cell) !== null) add("Cell", "#" + node.cell);
    if (!node.child_run) add("Step", node.ordinal === null || node.ordinal === undefined ? "not run yet in this run (" + node.id + ")" : "#" + node.ordinal);
    add("Started", nbdFormatTime(node.started_at));
    add("Ended", nbdFormatTime(node.ended_at));
    const d = _nbdNodeDuration(node, now);
    add("Duration", d === null ? "" : nbdFormatDuration(d) + (_nbdIsActive(status) && _nbdNum(node.duration_s) === null ? " so far" : ""));
    if (node.plan && status === "pending") add("Run All", _nbdPlanText(node.plan));
    if (node.restored_from) {
      add("Restored from", "run " + (node.restored_from.run_id || "?") +
        (node.restored_from.ordinal === null || node.restored_from.ordinal === undefined ? "" : " step #" + node.restored_from.ordinal));
    }
    if (_nbdNum(node.original_duration_s) !== null) add("Originally took", nbdFormatDuration(node.original_duration_s));
    if (_nbdNum(node.time_saved_s) !== null) add("Time saved", nbdFormatDuration(node.time_saved_s));
    if (Array.isArray(node.attempts) && node.attempts.length > 1) add("Attempts", String(node.attempts.length));
    if (node.waiting_for) add("Waiting for", String(node.waiting_for));
    if (Array.isArray(node.child_runs) && node.child_runs.length) add("Child runs", node.child_runs.join(", "));
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
    if (node.child_run) {   /* a child run (nbd.run_notebook): a link to its own graph */
      const id = String(node.child_run.current || node.child_run.run_id);   /* the newest run of its chain */
      _nbdAppend(root, [
        _nbdEl(doc, "h4", null, "Child run"),
        _nbdEl(doc, "div", { "class": "nbd-child-run" }, [
          _nbdEl(doc, "a", { "class": "nbd-run-link", "href": encodeURIComponent(id) + ".html", "data-run-id": id,
            "title": "Open the graph of run " + id }, "Open run " + id),
          node.child_run.notebook ? " \u00b7 " + String(node.child_run.notebook) : null,
          _nbdNum(node.child_run.attempt) !== null ? " \u00b7 attempt " + node.child_run.attempt : null,
        ]),
      ]);
    } else if (!node.parent) {
      _nbdAppend(root, [
        _nbdEl(doc, "h4", null, "Source"),
        _nbdEl(doc, "pre", { "class": "nbd-source" }, _nbdEl(doc, "code", null, String(node.source || ""))),
      ]);
    }
    const vars = Array.isArray(node.variables) ? node.variables : [];
    if (!node.parent) _nbdAppend(root, _nbdEl(doc, "h4", null, "Variables"));
    if (node.parent) {
      /* a child step records no variables of its own */
    } else if (vars.length) {
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
          const failures = _nbdAttemptErrors(c.attempt_log);
          const error = c.error ? nbdStripAnsi(c.error) : "";
          return {
            attrs: { "class": "nbd-detail-child", "data-ordinal": c.ordinal, "data-status": c.status || "",
                     "data-node-id": _nbdChildId(node, c), "tabindex": "0", "role": "button", "title": "Show this step" },
            cells: [String(c.ordinal), c.name ? _nbdEl(doc, "code", null, String(c.name)) : "", _nbdPill(doc, String(c.status || "?")),
                    cd === null ? "" : nbdFormatDuration(cd), c.attempts ? String(c.attempts) : "",
                    failures && failures.indexOf(error) < 0 ? (error ? error + " (" + failures + ")" : failures) : (failures || error)],
          };
        }), [0, 3, 4]),
        total > steps.length ? _nbdEl(doc, "div", { "class": "nbd-muted" }, "\u2026 and " + (total - steps.length) + " more not listed") : null,
      ]);
    }
  }
  if (st && st.root.parentNode === container) container.replaceChild(root, st.root);
  else container.appendChild(root);
  container.__nbdDetails = { root: root, key: key, options: options };
  const pick = function (event) {
    const link = _nbdClosest(event.target, "nbd-run-link", root);
    const onOpenRun = container.__nbdDetails && container.__nbdDetails.options.onOpenRun;
    if (link && event.type === "click" && typeof onOpenRun === "function") {
      if (event.preventDefault) event.preventDefault();
      onOpenRun(link.getAttribute("data-run-id"));
      return;
    }
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    const row = _nbdClosest(event.target, "nbd-detail-child", root);
    const onSelect = container.__nbdDetails && container.__nbdDetails.options.onSelect;
    if (!row || typeof onSelect !== "function") return;
    if (event.preventDefault && event.type === "keydown") event.preventDefault();
    onSelect(row.getAttribute("data-node-id"));
  };
  root.addEventListener("click", pick);
  root.addEventListener("keydown", pick);
  return root;
}
