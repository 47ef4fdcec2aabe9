// The history explorer's frontend (anywidget): filters, the runs table, one run's graph, two runs compared.
// Python sends `_esm` = the graph scripts (graph_*.js) + this file, and `_css` = graph.css + history.css: it
// mounts their run view (nbdMountRunView: graph, timeline, details of the clicked node) for the selected run;
// without them it draws a minimal graph. It only edits traits (filters, selected_run, selected_node, compare)
// and sends {type: "refresh"} (and "fork"/"rerun" from the selected run's graph): the Python side does the work. Everything is inside one const, so that
// no name here can collide with a declaration of the graph scripts. Selectors follow the DOM contract
// (browser tests use them).

const nbdHistoryWidget = (() => {
  const RUN_STATUSES = ["running", "completed", "failed", "suspended", "interrupted", "cancelled", "crashed"];
  const FILTER_KEYS = ["notebook", "status", "params", "since", "until", "origin"];
  const COLOURS = {
    pending: "#c7ccd1", running: "#2f80ed", completed: "#27ae60", restored: "#8e44ad", failed: "#eb5757",
    retrying: "#f2994a", sleeping: "#56ccf2", waiting: "#f2c94c", suspended: "#9b9b9b",
    cancelled: "#9b9b9b", crashed: "#c0392b", interrupted: "#f2994a",
  };
  const DARK_TEXT = new Set(["pending", "waiting", "sleeping"]);
  const DEBOUNCE_MS = 350;
  const SVG_NS = "http://www.w3.org/2000/svg";

  // -- small helpers ---------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "value" || key === "checked") node[key] = value;
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function badge(status) {
    const s = status || "unknown";
    const span = h("span", { class: "nbd-badge" + (DARK_TEXT.has(s) ? " nbd-dark-text" : ""), "data-status": s, text: s });
    span.style.background = COLOURS[s] || "#9b9b9b";
    return span;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "—";
    const sign = s < 0 ? "-" : "";
    s = Math.abs(s);
    if (s < 0.001) return sign + "<1 ms";
    if (s < 1) return `${sign}${Math.round(s * 1000)} ms`;
    if (s < 60) return `${sign}${s.toFixed(s < 10 ? 2 : 1)} s`;
    if (s < 3600) return `${sign}${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${sign}${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function fmtDelta(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "—";
    if (Math.abs(s) < 0.0005) return "±0";
    return (s > 0 ? "+" : "") + fmtDuration(s);
  }

  function fmtTime(t) {
    if (t === null || t === undefined) return "—";
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function fmtTimeShort(t) {  // the runs table: "12-06 17:52" this year, the date alone before (title: in full)
    const full = fmtTime(t);
    if (full === "—") return full;
    return full.slice(0, 4) === String(new Date().getFullYear()) ? full.slice(5, 16) : full.slice(0, 10);
  }

  function shortRunId(runId) {  // the random tail of a run id (its head is the start time, a column of its own)
    const tail = String(runId || "").split("-").pop();
    return tail && tail.length >= 4 && tail !== runId ? tail : String(runId || "");
  }

  function fmtValue(v) {
    if (v === undefined) return "—";
    return typeof v === "string" ? v : JSON.stringify(v);
  }

  function fmtParams(params) {
    return Object.entries(params || {}).map(([k, v]) => `${k}=${fmtValue(v)}`).join(", ");
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function hint(text) {
    return h("div", { class: "nbd-history-hint", text });
  }

  // -- a minimal graph, when the graph scripts are not there ------------------------------------------

  function fallbackGraph(container, data, opts) {
    const run = data.run || {};
    const nodes = data.nodes || [];
    const root = h("div", { class: "nbd-graph", "data-run-id": run.run_id || "", "data-run-status": run.status || "" });
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("width", "480");
    svg.setAttribute("height", String(nodes.length * 40 + 8));
    nodes.forEach((node, i) => {
      const g = document.createElementNS(SVG_NS, "g");
      g.setAttribute("class", "nbd-node");
      g.setAttribute("data-node-id", node.id);
      g.setAttribute("data-status", node.status);
      g.setAttribute("transform", `translate(4, ${4 + i * 40})`);
      g.style.cursor = "pointer";
      const rect = document.createElementNS(SVG_NS, "rect");
      for (const [k, v] of Object.entries({ width: 470, height: 32, rx: 4, fill: COLOURS[node.status] || "#999", "fill-opacity": 0.1, stroke: COLOURS[node.status] || "#999" })) rect.setAttribute(k, v);
      rect.setAttribute("stroke-width", "2");
      const text = document.createElementNS(SVG_NS, "text");
      text.setAttribute("x", "8");
      text.setAttribute("y", "20");
      text.setAttribute("font-size", "12");
      text.setAttribute("fill", "currentColor");
      text.textContent = `${node.label} · ${node.status} · ${fmtDuration(node.duration_s)}`;
      g.append(rect, text);
      g.addEventListener("click", () => opts.onSelect && opts.onSelect(node));
      svg.append(g);
    });
    root.append(svg);
    container.append(root);
  }

  function fallbackDetails(container, node) {
    const vars = (node.variables || []).map((v) => h("li", { text: `${v.name}: ${v.type || "?"} ${fmtBytes(v.size_bytes)}` }));
    container.append(h("div", { class: "nbd-details nbd-fallback-details", "data-node-id": node.id },
      h("div", { text: `${node.label} — ${node.status}` }),
      h("pre", { class: "nbd-mono", text: node.source || "" }),
      vars.length ? h("ul", {}, vars) : null,
      node.error ? h("pre", { class: "nbd-mono", text: `${node.error.ename}: ${node.error.evalue}\n${node.error.traceback || ""}` }) : null));
  }

  // A run view: the graph scripts' (graph and timeline tabs, details on the side), else the minimal one above.
  function mountRunView(host, onSelect, onOpenRun) {
    if (typeof nbdMountRunView === "function") {
      try {
        return nbdMountRunView(host, { layout: "tabs", onSelect, onOpenRun });
      } catch (err) {
        console.error("nbdurable: nbdMountRunView failed", err);
        host.replaceChildren();
      }
    }
    let data = null;
    let selected = null;
    const draw = () => {
      host.replaceChildren();
      fallbackGraph(host, data, { onSelect: (node) => { selected = node.id; draw(); onSelect(node.id); } });
      const node = (data.nodes || []).find((n) => n.id === selected);
      if (node) fallbackDetails(host, node);
    };
    return {
      update(newData, newSelected) { data = newData || {}; selected = newSelected; draw(); },
      setSelected(id) { selected = id; draw(); },
      destroy() { host.replaceChildren(); },
    };
  }

  // -- the widget ----------------------------------------------------------------------------------

  function render({ model, el }) {
    const doc = el.ownerDocument || document;
    const listeners = [];
    const on = (event, fn) => { model.on(event, fn); listeners.push([event, fn]); };
    const save = (changes) => {
      for (const [k, v] of Object.entries(changes)) model.set(k, v);
      model.save_changes();
    };
    let onlyDiff = false;
    let debounce = null;
    let refreshTimer = null;

    // Filters.
    const listId = "nbd-notebooks-" + Math.random().toString(36).slice(2);
    const inputs = {
      notebook: h("input", { type: "text", class: "nbd-filter-notebook", placeholder: "notebook", list: listId,
        "aria-label": "Notebook", title: "A notebook name or path; * and ? for a pattern" }),
      status: h("select", { class: "nbd-filter-status", "aria-label": "Status" },
        h("option", { value: "", text: "any status" }), RUN_STATUSES.map((s) => h("option", { value: s, text: s }))),
      params: h("input", { type: "text", class: "nbd-filter-params", placeholder: "parameters: lr=0.1, epochs>=3",
        "aria-label": "Parameters", title: "name=value terms, comma-separated (also != < <= > >=)" }),
      since: h("input", { type: "text", class: "nbd-filter-since", placeholder: "since: date or 7d",
        "aria-label": "Started since", title: "A date, date and time, or a duration ago (24h, 7d)" }),
      until: h("input", { type: "text", class: "nbd-filter-until", placeholder: "until: date or 1h",
        "aria-label": "Started until", title: "A date (the whole day), date and time, or a duration ago" }),
      origin: h("input", { type: "text", class: "nbd-filter-origin", placeholder: "started by: schedule:nightly",
        "aria-label": "Started by", title: "schedule:NAME, trigger:NAME or parent:RUN_ID (a bare name: a schedule "
          + "or a trigger); * and ? for a pattern" }),
    };
    const datalist = h("datalist", { id: listId });
    const refreshButton = h("button", { type: "button", class: "nbd-refresh", title: "Look for new runs", text: "↻ Refresh" });
    const clearButton = h("button", { type: "button", class: "nbd-clear-filters", title: "Clear the filters", text: "Clear" });
    const errorSlot = h("div", { class: "nbd-history-error-slot" });
    const count = h("div", { class: "nbd-history-count" });
    const tbody = h("tbody");
    const table = h("table", { class: "nbd-runs" },
      h("thead", {}, h("tr", {},
        h("th", { title: "Tick two runs to compare them", text: "⇄" }),
        h("th", { title: "The run (its id in the tooltip), its status and when it started", text: "run" }),
        h("th", { text: "notebook" }), h("th", { class: "nbd-num", title: "How long it ran; the time restores saved",
          text: "duration" }),
        h("th", { text: "steps" }), h("th", { text: "parameters" }))),
      tbody);
    const compareSlot = h("div", { class: "nbd-history-compare-slot" });
    const graphPanel = h("div", { class: "nbd-history-graph" });
    const root = h("div", { class: "nbd-history" },
      h("div", { class: "nbd-history-toolbar" },
        inputs.notebook, datalist, inputs.status, inputs.params, inputs.since, inputs.until, inputs.origin, clearButton,
        refreshButton),
      errorSlot, count, h("div", { class: "nbd-history-table-wrap" }, table), compareSlot, graphPanel);
    el.replaceChildren(root);

    function readFilters() {
      const f = {};
      for (const key of FILTER_KEYS) f[key] = inputs[key].value.trim();
      return f;
    }

    function pushFilters() {
      clearTimeout(debounce);
      debounce = null;
      const f = readFilters();
      const old = model.get("filters") || {};
      if (FILTER_KEYS.every((k) => String(old[k] ?? "").trim() === f[k])) return;
      save({ filters: f });
    }

    for (const key of ["notebook", "params", "since", "until", "origin"]) {
      inputs[key].addEventListener("input", () => {
        clearTimeout(debounce);
        debounce = setTimeout(pushFilters, DEBOUNCE_MS);
      });
      inputs[key].addEventListener("change", pushFilters);
      inputs[key].addEventListener("keydown", (e) => { if (e.key === "Enter") pushFilters(); });
    }
    inputs.status.addEventListener("change", pushFilters);
    clearButton.addEventListener("click", () => {
      for (const key of FILTER_KEYS) inputs[key].value = "";
      pushFilters();
    });
    refreshButton.addEventListener("click", () => {
      refreshButton.disabled = true;
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => { refreshButton.disabled = false; }, 15000);
      model.send({ type: "refresh" });
    });

    function showFilters() {
      const f = model.get("filters") || {};
      for (const key of FILTER_KEYS) {
        if (doc.activeElement === inputs[key] && key !== "status") continue; // do not clobber typing
        inputs[key].value = f[key] === null || f[key] === undefined ? "" : String(f[key]);
      }
    }

    function showNotebooks() {
      datalist.replaceChildren(...(model.get("notebooks") || []).map((n) => h("option", { value: n })));
    }

    function showError() {
      const message = model.get("error") || "";
      errorSlot.replaceChildren();
      if (message) errorSlot.append(h("div", { class: "nbd-history-error", role: "alert", text: message }));
    }

    // Runs.
    function runsById() {
      const map = new Map();
      for (const run of model.get("runs") || []) map.set(run.run_id, run);
      return map;
    }

    function togglePick(runId, checked) {
      let picked = (model.get("compare") || []).filter((r) => r !== runId);
      if (checked) picked.push(runId);
      if (picked.length > 2) picked = picked.slice(-2);
      if (picked.length === 2) {
        const runs = runsById();
        const t = (id) => (runs.get(id) || {}).started_at ?? 0;
        picked.sort((x, y) => t(x) - t(y)); // the older run is "a"
      }
      save({ compare: picked });
    }

    function select(runId) {
      save({ selected_run: runId, selected_node: "" });
    }

    function stepsCell(run) {  // the total, and below it how many ran, were restored, failed
      const detail = [];
      if (run.steps_executed) detail.push(`${run.steps_executed} ran`);
      if (run.steps_restored) detail.push(`${run.steps_restored} restored`);
      if (run.steps_failed) detail.push(`${run.steps_failed} failed`);
      return h("td", { class: "nbd-wrap nbd-steps-cell" }, String(run.steps_total ?? 0),
        detail.length ? h("div", { class: "nbd-sub", text: detail.join(" · ") }) : null);
    }

    function startedBy(run) {  // what started the run, when no person did: a schedule, a trigger, a parent run
      const text = run.schedule ? `schedule ${run.schedule}` : run.trigger ? `trigger ${run.trigger}`
        : run.parent_run ? `child of ${shortRunId(run.parent_run)}` : "";
      return text ? h("div", { class: "nbd-sub nbd-started-by", text }) : null;
    }

    function runRow(run, picked, selected) {
      const pick = h("input", { type: "checkbox", class: "nbd-compare-pick", title: "Compare",
        "aria-label": `Compare run ${run.run_id}`, checked: picked.includes(run.run_id) });
      pick.addEventListener("click", (e) => e.stopPropagation());
      pick.addEventListener("change", () => togglePick(run.run_id, pick.checked));
      const isSelected = run.run_id === selected;
      const params = fmtParams(run.params);
      const tr = h("tr", { class: "nbd-run" + (isSelected ? " nbd-selected" : ""), "data-run-id": run.run_id,
        "data-status": run.status || "", tabindex: 0, "aria-selected": String(isSelected) },
        h("td", {}, pick),
        h("td", { class: "nbd-run-cell" }, h("span", { class: "nbd-mono", title: run.run_id, text: shortRunId(run.run_id) }),
          " ", badge(run.status),
          h("div", { class: "nbd-sub", title: `started ${fmtTime(run.started_at)}`, text: fmtTimeShort(run.started_at) })),
        h("td", { class: "nbd-wrap nbd-notebook-cell", title: run.notebook_path || run.notebook || "" },
          run.notebook_label || run.notebook || "—", startedBy(run)),
        h("td", { class: "nbd-num" }, fmtDuration(run.duration_s),
          run.time_saved_s ? h("div", { class: "nbd-sub", text: `saved ${fmtDuration(run.time_saved_s)}` }) : null),
        stepsCell(run),
        h("td", { class: "nbd-wrap nbd-mono nbd-params-cell", text: params || "—" }));
      tr.addEventListener("click", () => select(run.run_id));
      tr.addEventListener("keydown", (e) => {
        if (e.target !== tr) return;
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(run.run_id); }
        else if (e.key === "ArrowDown" && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
        else if (e.key === "ArrowUp" && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
      });
      return tr;
    }

    function showRuns() {
      const runs = model.get("runs") || [];
      const picked = model.get("compare") || [];
      const selected = model.get("selected_run") || "";
      tbody.replaceChildren(...runs.map((run) => runRow(run, picked, selected)));
      if (!runs.length) tbody.append(h("tr", { class: "nbd-empty" }, h("td", { colspan: 6, text: "No runs match these filters." })));
      const total = model.get("total") || 0;
      const refreshed = model.get("refreshed_at");
      count.textContent = (total > runs.length
        ? `Showing the newest ${runs.length} of ${total.toLocaleString()} runs`
        : `${total.toLocaleString()} run${total === 1 ? "" : "s"}`) +
        (refreshed ? ` · as of ${fmtTime(refreshed).slice(11)}` : "");
    }

    function showPicks() {
      const picked = model.get("compare") || [];
      for (const box of tbody.querySelectorAll("input.nbd-compare-pick")) {
        box.checked = picked.includes(box.closest("tr").getAttribute("data-run-id"));
      }
      showCompare();
    }

    function showSelection() {
      const selected = model.get("selected_run") || "";
      for (const tr of tbody.querySelectorAll("tr.nbd-run")) {
        const is = tr.getAttribute("data-run-id") === selected;
        tr.classList.toggle("nbd-selected", is);
        tr.setAttribute("aria-selected", String(is));
      }
      showGraph();
    }

    // One run's graph: a header line, then the run view (kept across updates: selection, expanded nodes).
    const graphHead = h("div", { class: "nbd-history-panel-head" });
    const graphHint = h("div", { class: "nbd-history-hint" });
    const viewHost = h("div", { class: "nbd-history-graph-canvas" });
    graphPanel.append(graphHint, graphHead, viewHost);
    let view = null;
    let viewRun = null;

    function dropView() {
      if (view) view.destroy();
      view = null;
      viewRun = null;
    }

    function showGraph() {
      const selected = model.get("selected_run") || "";
      const graph = model.get("graph");
      graphHead.replaceChildren();
      if (!selected || !graph || !graph.run || graph.run.run_id !== selected) {
        dropView();
        graphHint.hidden = false;
        graphHint.textContent = !selected ? "Click a run to see its graph; tick two runs to compare them."
          : model.get("error") ? `No graph for run ${selected}.` : `Loading run ${selected}…`;
        return;
      }
      graphHint.hidden = true;
      const run = graph.run;
      const close = h("button", { type: "button", class: "nbd-close", title: "Close the graph", text: "×" });
      close.addEventListener("click", () => save({ selected_run: "", selected_node: "" }));
      graphHead.append("Run ", h("span", { class: "nbd-mono", text: run.run_id }), close);
      if (run.status && run.status !== "running") {
        // Fork from the selected cell (its number: its place among the run's cells), or rerun the whole run.
        const cells = (graph.nodes || []).filter((n) => n.status !== "pending");
        const cell = cells.findIndex((n) => n.id === (model.get("selected_node") || "")) + 1;
        const fork = h("button", { type: "button", class: "nbd-fork", text: cell ? `Fork from cell ${cell}` : "Fork…",
          title: cell ? `A new headless run: cells 1-${cell - 1} restored as this run recorded them, cell ${cell} on executed`
            : "Select a cell of the graph to fork the run from it" });
        fork.disabled = !cell;
        fork.addEventListener("click", () => { fork.disabled = true; model.send({ type: "fork", cell }); });
        const rerun = h("button", { type: "button", class: "nbd-rerun", text: "Rerun",
          title: "A new headless run of this run's notebook and parameters, every cell executed" });
        rerun.addEventListener("click", () => { rerun.disabled = true; model.send({ type: "rerun" }); });
        graphHead.append(" ", fork, " ", rerun);
      }
      if (model.get("action")) graphHead.append(h("div", { class: "nbd-action", text: model.get("action") }));
      if (viewRun !== run.run_id) {
        dropView();
        view = mountRunView(viewHost, (id) => save({ selected_node: id === null || id === undefined ? "" : String(id) }),
          (runId) => save({ selected_run: runId, selected_node: "" }));  // a child run's link: its own graph
        viewRun = run.run_id;
      }
      view.update(graph, model.get("selected_node") || null);
    }

    // Two runs compared.
    function runTag(which, run) {
      return h("span", {},
        h("span", { class: `nbd-run-tag nbd-${which}`, text: which }), " ",
        h("span", { class: "nbd-mono", text: run.run_id }), " ", badge(run.status),
        h("span", { class: "nbd-history-count", text: ` ${fmtTime(run.started_at)} · ${fmtDuration(run.duration_s)}` }));
    }

    function missing(text = "—") {
      return h("span", { class: "nbd-missing", text });
    }

    function sourceDiff(text) {
      const pre = h("pre", { class: "nbd-mono nbd-source-diff" });
      for (const line of text.split("\n")) {
        const cls = line.startsWith("+++") || line.startsWith("---") ? "" : line.startsWith("+") ? "nbd-diff-add"
          : line.startsWith("-") ? "nbd-diff-del" : line.startsWith("@@") ? "nbd-diff-hunk" : "";
        pre.append(h("span", { class: cls || null, text: line + "\n" }));
      }
      return h("details", {}, h("summary", { text: "source diff" }), pre);
    }

    function durationBars(row, max) {
      const bar = (which, side) => {
        if (!side) return h("div", { class: "nbd-dbar-row" }, missing(`${which}: —`));
        const width = Math.max(1, Math.round(((side.duration_s || 0) / max) * 80));
        const div = h("div", { class: `nbd-dbar nbd-${which}`, title: `${which}: ${fmtDuration(side.duration_s)}` });
        div.style.width = `${width}px`;
        return h("div", { class: "nbd-dbar-row" }, div, h("span", { text: fmtDuration(side.duration_s) }));
      };
      return h("div", { class: "nbd-dbars" }, bar("a", row.a), bar("b", row.b));
    }

    function varText(v) {
      if (!v) return missing();
      const parts = [v.type || "?", fmtBytes(v.size_bytes), v.object ? v.object.slice(0, 10) : ""].filter(Boolean);
      return h("span", { class: "nbd-mono", title: v.object || "", text: parts.join(" · ") });
    }

    function showCompare() {
      const c = model.get("comparison");
      const picked = model.get("compare") || [];
      compareSlot.replaceChildren();
      if (!c || !c.a || !c.b) {
        if (picked.length === 1) compareSlot.append(hint("Tick one more run to compare it with."));
        return;
      }
      const s = c.summary || {};
      const panel = h("div", { class: "nbd-compare" + (onlyDiff ? " nbd-only-diff" : ""), "data-run-a": c.a.run_id, "data-run-b": c.b.run_id });
      const close = h("button", { type: "button", class: "nbd-close", title: "Stop comparing", text: "×" });
      close.addEventListener("click", () => save({ compare: [] }));
      const toggle = h("input", { type: "checkbox", class: "nbd-compare-only-diff", checked: onlyDiff });
      toggle.addEventListener("change", () => {
        onlyDiff = toggle.checked;
        panel.classList.toggle("nbd-only-diff", onlyDiff);
      });
      const stepBits = [];
      if (s.steps_source_changed) stepBits.push(`${s.steps_source_changed} changed`);
      if (s.steps_status_changed) stepBits.push(`${s.steps_status_changed} with another status`);
      if (s.steps_only_in_b) stepBits.push(`${s.steps_only_in_b} new`);
      if (s.steps_only_in_a) stepBits.push(`${s.steps_only_in_a} removed`);
      const summary = [
        `${(s.params_changed || []).length} parameter${(s.params_changed || []).length === 1 ? "" : "s"} changed`,
        `${s.steps_differ || 0} step${s.steps_differ === 1 ? "" : "s"} differ${s.steps_differ === 1 ? "s" : ""}` + (stepBits.length ? ` (${stepBits.join(", ")})` : ""),
        `${(s.variables_changed || []).length} variable${(s.variables_changed || []).length === 1 ? "" : "s"} changed`,
        `duration ${fmtDelta(s.duration_delta_s)}`,
      ].join(" · ");
      panel.append(
        h("div", { class: "nbd-history-panel-head" }, "Comparing ", runTag("a", c.a), " with ", runTag("b", c.b), close),
        h("div", { class: "nbd-compare-summary", text: summary }),
        h("label", {}, toggle, " only differences"));

      panel.append(h("h4", { text: "Parameters" }));
      if ((c.params || []).length) {
        panel.append(h("table", { class: "nbd-compare-params" },
          h("thead", {}, h("tr", {}, h("th", { text: "parameter" }), h("th", { text: "a" }), h("th", { text: "b" }))),
          h("tbody", {}, c.params.map((p) => h("tr", { class: "nbd-param-diff", "data-name": p.name, "data-differs": String(p.differs) },
            h("td", { class: "nbd-mono", text: p.name }),
            h("td", { class: "nbd-mono" }, p.in_a ? fmtValue(p.a) : missing("(not set)")),
            h("td", { class: "nbd-mono" }, p.in_b ? fmtValue(p.b) : missing("(not set)")))))));
      } else {
        panel.append(hint("Neither run has parameters."));
      }

      panel.append(h("h4", { text: "Steps" }));
      const steps = c.steps || [];
      const max = Math.max(1e-6, ...steps.flatMap((r) => [(r.a && r.a.duration_s) || 0, (r.b && r.b.duration_s) || 0]));
      panel.append(h("table", { class: "nbd-compare-steps" },
        h("thead", {}, h("tr", {},
          h("th", { title: "The step's number in run a / in run b", text: "#" }), h("th", { text: "step" }),
          h("th", { title: "In run a, then in run b", text: "status" }), h("th", { text: "duration" }),
          h("th", { class: "nbd-num", text: "Δ" }), h("th", { text: "difference" }))),
        h("tbody", {}, steps.map((row) => {
          const side = row.b || row.a || {};
          return h("tr", { class: "nbd-step-diff", "data-differs": String(row.differs), "data-change": row.change,
            "data-a-ordinal": row.a ? row.a.ordinal : null, "data-b-ordinal": row.b ? row.b.ordinal : null },
            h("td", { class: "nbd-num" }, row.a ? String(row.a.ordinal) : missing(), " / ",
              row.b ? String(row.b.ordinal) : missing()),
            h("td", { class: "nbd-mono", title: side.source || "", text: row.label }),
            h("td", { class: "nbd-statuses" }, row.a ? badge(row.a.status) : missing(), h("br"),
              row.b ? badge(row.b.status) : missing()),
            h("td", {}, durationBars(row, max)),
            h("td", { class: "nbd-num", text: fmtDelta(row.duration_delta_s) }),
            h("td", { class: "nbd-reasons" }, (row.reasons || []).join("; ") || missing("same"),
              row.source_diff ? sourceDiff(row.source_diff) : null));
        }))));

      panel.append(h("h4", { text: "Variables (final state)" }));
      const variables = c.variables || [];
      if (variables.length) {
        const changeText = { same: "same", changed: "changed", only_in_a: "only in a", only_in_b: "only in b" };
        panel.append(h("table", { class: "nbd-compare-variables" },
          h("thead", {}, h("tr", {}, h("th", { text: "variable" }), h("th", { text: "a" }), h("th", { text: "b" }), h("th", { text: "difference" }))),
          h("tbody", {}, variables.map((v) => h("tr", { class: "nbd-var-diff", "data-name": v.name, "data-change": v.change, "data-differs": String(v.differs) },
            h("td", { class: "nbd-mono", text: v.name }), h("td", {}, varText(v.a)), h("td", {}, varText(v.b)),
            h("td", { text: (changeText[v.change] || v.change) + (v.fields && v.fields.length ? ` (${v.fields.join(", ").replace("size_bytes", "size").replace("object", "value")})` : "") }))))));
      } else {
        panel.append(hint("Neither run recorded variables."));
      }
      compareSlot.append(panel);
    }

    on("change:filters", showFilters);
    on("change:notebooks", showNotebooks);
    on("change:error", () => { showError(); if (!model.get("graph")) showGraph(); });
    on("change:runs", showRuns);
    on("change:total", showRuns);
    on("change:compare", showPicks);
    on("change:comparison", showCompare);
    on("change:selected_run", showSelection);
    on("change:graph", showGraph);
    on("change:selected_node", showGraph);
    on("change:action", showGraph);
    on("change:refreshed_at", () => { clearTimeout(refreshTimer); refreshButton.disabled = false; showRuns(); });

    showFilters();
    showNotebooks();
    showError();
    showRuns();
    showCompare();
    showGraph();

    return () => {
      clearTimeout(debounce);
      clearTimeout(refreshTimer);
      for (const [event, fn] of listeners) model.off(event, fn);
      dropView();
    };
  }

  return { render };
})();

export default nbdHistoryWidget;
