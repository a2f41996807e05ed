package admin

import (
	"strings"
	"time"
)

// GraphRefresh is how often the /debug/graph page asks for graph.json again.
const GraphRefresh = 2 * time.Second

// graphRefreshText is GraphRefresh in milliseconds, as the page's script
// writes it; TestHandlerPages keeps the two the same.
const graphRefreshText = "2000"

// ElementID is the HTML id the graph page gives a node or edge with the
// given ID, after "node-" or "edge-": every character outside
// [A-Za-z0-9_-] becomes "_".
func ElementID(id string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		}
		return '_'
	}, id)
}

// graphHTML is the /debug/graph page: self-contained (no CDN, no fonts to
// fetch), it polls graph.json next to it and redraws an SVG. Nodes are laid
// out in columns by their distance from a caller-only node.
const graphHTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>mesh service graph</title>
<style>
body { font-family: sans-serif; margin: 12px; background: #fafafa; }
#status { color: #555; font-size: 12px; }
.node rect { fill: #fff; stroke: #333; stroke-width: 1.5; rx: 6; }
.node text { font-size: 13px; text-anchor: middle; }
.edge line { stroke-width: 2.5; }
.edge.health-healthy line { stroke: #3e8635; }
.edge.health-degraded line { stroke: #f0ab00; }
.edge.health-failure line { stroke: #c9190b; }
.edge.health-idle line { stroke: #8a8d90; stroke-dasharray: 4 4; }
.edge text { font-size: 11px; fill: #222; text-anchor: middle; }
.lock rect { fill: #1f4e79; }
.lock path { fill: none; stroke: #1f4e79; stroke-width: 2; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
</style></head>
<body>
<h2>mesh service graph</h2>
<div class="legend"><span style="color:#3e8635">&#9632; healthy</span><span style="color:#f0ab00">&#9632; errors &ge; 0.1%</span><span style="color:#c9190b">&#9632; errors &ge; 20%</span><span style="color:#8a8d90">&#9632; idle</span><span>lock: mutual TLS</span><span>edge: weight of the route in force, requests/s, errors, p99 latency</span></div>
<div id="status">loading...</div>
<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="1100" height="640"></svg>
<script>
"use strict";
const svgNS = "http://www.w3.org/2000/svg";
function elementID(id) { return id.replace(/[^A-Za-z0-9_-]/g, "_"); }
function el(name, attrs, parent) {
  const e = document.createElementNS(svgNS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function layout(g) {
  const depth = {}, incoming = {};
  g.nodes.forEach(n => { incoming[n.id] = 0; });
  g.edges.forEach(e => { incoming[e.target] = (incoming[e.target] || 0) + 1; });
  const queue = g.nodes.filter(n => !incoming[n.id]).map(n => n.id);
  queue.forEach(id => { depth[id] = 0; });
  for (let i = 0; i < queue.length; i++) {
    g.edges.filter(e => e.source === queue[i]).forEach(e => {
      if (depth[e.target] === undefined) { depth[e.target] = depth[queue[i]] + 1; queue.push(e.target); }
    });
  }
  const columns = {};
  g.nodes.forEach(n => { const d = depth[n.id] || 0; (columns[d] = columns[d] || []).push(n); });
  const pos = {};
  Object.keys(columns).forEach(d => {
    columns[d].forEach((n, i) => { pos[n.id] = { x: 120 + d * 320, y: 80 + i * 130 }; });
  });
  return pos;
}
// rps keeps small rates readable: 0.25 rps is not "0.3", and never "0.0"
// while calls flow.
function rps(r) { return r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(1) : r > 0 ? r.toPrecision(1) : "0"; }
function p99(ms) { return ms < 0 ? "slow" : ms === 0 ? "-" : "\u2264" + ms + "ms"; }
function draw(g) {
  const svg = document.getElementById("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const pos = layout(g);
  g.edges.forEach(e => {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) return;
    const group = el("g", { id: "edge-" + elementID(e.id), "class": "edge health-" + e.health + (e.mutual_tls ? " mtls" : ""),
      "data-source": e.source, "data-target": e.target, "data-rate": e.rate.toFixed(2), "data-error-ratio": e.error_ratio.toFixed(4),
      "data-p99-ms": String(e.p99_ms), "data-weight": e.weight !== undefined ? String(e.weight) : "" }, svg);
    el("line", { x1: a.x + 70, y1: a.y, x2: b.x - 70, y2: b.y }, group);
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    // The labels sit beside the line, on its outer side (above a level or
    // rising edge, below a falling one), far enough that a slanted line
    // does not cross their text.
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    let nx = dy / len, ny = -dx / len;
    if ((dy > 0) !== (ny > 0)) { nx = -nx; ny = -ny; }
    const off = 12 + Math.abs(dx / len) * 14 + Math.abs(dy / len) * 80;
    const lx = mx + nx * off, ly = my + ny * off;
    const label = el("text", { x: lx, y: ly - 3, "class": "traffic" }, group);
    label.textContent = (e.weight !== undefined ? "weight " + e.weight + "% \u00b7 " : "") + rps(e.rate) + " rps";
    const quality = el("text", { x: lx, y: ly + 11, "class": "quality" }, group);
    quality.textContent = (100 * e.error_ratio).toFixed(1) + "% err \u00b7 p99 " + p99(e.p99_ms);
    const title = el("title", {}, group);
    title.textContent = e.source + " -> " + e.target + ": " + e.requests + " requests, " + e.errors + " errors" + (e.mutual_tls ? ", mutual TLS" : "");
    if (e.mutual_tls) {
      const lock = el("g", { "class": "lock", id: "lock-" + elementID(e.id), transform: "translate(" + (mx - 6) + "," + (my + 2) + ")" }, group);
      el("path", { d: "M2 7 V4 a4 4 0 0 1 8 0 V7" }, lock);
      el("rect", { x: 0, y: 7, width: 12, height: 9 }, lock);
    }
  });
  g.nodes.forEach(n => {
    const p = pos[n.id];
    const group = el("g", { id: "node-" + elementID(n.id), "class": "node", "data-service": n.service, "data-version": n.version }, svg);
    el("rect", { x: p.x - 70, y: p.y - 22, width: 140, height: 44 }, group);
    const name = el("text", { x: p.x, y: p.y - 3 }, group);
    name.textContent = n.service;
    const ver = el("text", { x: p.x, y: p.y + 14 }, group);
    ver.textContent = n.version + " \u00b7 " + n.namespace;
  });
}
async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("graph.json", { cache: "no-store" });
    if (!resp.ok) throw new Error("graph.json: " + resp.status);
    const g = await resp.json();
    draw(g);
    status.textContent = g.nodes.length + " nodes, " + g.edges.length + " edges, at " + g.generated_at +
      (g.errors && g.errors.length ? " (scrape errors: " + g.errors.join("; ") + ")" : "");
    status.setAttribute("data-state", "ok");
  } catch (err) {
    status.textContent = "error: " + err.message;
    status.setAttribute("data-state", "error");
  }
}
refresh();
setInterval(refresh, ` + graphRefreshText + `);
</script>
</body></html>
`
