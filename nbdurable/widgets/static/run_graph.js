/* nbdurable RunGraph widget (anywidget ES module). Python sends `_esm` = the graph scripts (graph_*.js) + this
 * file, so their nbd* functions are in scope here, and `_css` = graph.css. Traits: `graph` (GraphData, replaced
 * whole on every live update) and `selected` (a node id, "" for none; set here when the user clicks a node). */

export default {
  render({ model, el }) {
    const view = nbdMountRunView(el, {
      layout: "tabs",
      onSelect(id) {
        model.set("selected", id === null || id === undefined ? "" : String(id));
        model.save_changes();
      },
      onOpenRun(runId) { model.send({ type: "open_run", run_id: String(runId) }); },  /* a child run: its graph */
    });
    const onGraph = () => view.update(model.get("graph"), model.get("selected") || null);
    const onSelected = () => view.setSelected(model.get("selected") || null);
    model.on("change:graph", onGraph);
    model.on("change:selected", onSelected);
    onGraph();
    return () => {
      model.off("change:graph", onGraph);
      model.off("change:selected", onSelected);
      view.destroy();
    };
  },
};
