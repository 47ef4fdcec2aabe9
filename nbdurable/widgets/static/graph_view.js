/* nbdurable graph_view.js: a run view (nbdMountRunView): graph and details, the timeline in a tab or below. */

/* Mounts a run view into `el`. options: {onSelect(id), onOpenRun(runId) (a child run's link: show that run;
 * without it the link goes to RUN_ID.html, the report's default name), layout: "tabs" (Graph | Timeline, the widget) or
 * "stacked" (the timeline under the graph, the report)}. Returns {update(data, selected), setSelected(id),
 * destroy()}. */
function nbdMountRunView(el, options) {
  options = options || {};
  const doc = _nbdDocOf(el);
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
    const node = _nbdFindNode(data, id);
    if (node && !node.parent && node.kind !== "child_run") {   /* the cell's position in the run, as the graph numbers it */
      const i = data.nodes.filter(function (n) { return n.kind !== "child_run"; }).indexOf(node);
      return Object.assign({}, node, { cell: i + 1 });
    }
    return node;
  };
  const userSelect = function (id) {
    selected = id;
    render();
    if (typeof options.onSelect === "function") options.onSelect(id);
  };
  const render = function () {
    nbdRenderGraph(graphBox, data, { selected: selected, onSelect: userSelect });
    nbdRenderDetails(detailsBox, findNode(selected), { now: _nbdClock(data), onSelect: userSelect, onOpenRun: options.onOpenRun });
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
