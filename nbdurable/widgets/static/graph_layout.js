/* nbdurable graph_layout.js: the DAG layout: nodes in rows in notebook order, box sizes, edge paths and lanes. */

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
