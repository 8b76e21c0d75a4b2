// SVG charts for the job page, drawn from report.json and the job's events: channels kept per
// group, MACs and latency per layer before/after, and the AutoBot loss curve. Text nodes only.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const MAX_ROWS = 400; // report.json has them all; the page draws the first ones and says so
  function s(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text != null) n.textContent = String(text);
    return n;
  }
  const label = (x) => { x = String(x); return x.length > 44 ? "…" + x.slice(-43) : x; };
  function more(n, what) {
    return n > MAX_ROWS ? SPA.el("p", { class: "muted" }, (n - MAX_ROWS) + " more " + what + " in report.json") : null;
  }

  // One row per group: name, a kept (green) / removed (red) bar, "kept / total".
  function groups(list) {
    const rows = list.slice(0, MAX_ROWS), h = 16, lw = 300, bw = 360;
    const svg = s("svg", { width: lw + bw + 110, height: rows.length * h + 4, role: "img", "aria-label": "channels kept per group", "data-chart": "groups" });
    rows.forEach((g, i) => {
      const y = i * h + 2, keptW = g.total ? bw * g.kept / g.total : 0;
      const row = s("g", { "data-group": g.name });
      row.appendChild(s("title", {}, g.name + ": " + g.kept + " of " + g.total + " kept" + (g.prunable ? "" : " (fixed: " + (g.reasons || []).join("; ") + ")")));
      row.appendChild(s("text", { x: 0, y: y + 11 }, label(g.name)));
      row.appendChild(s("rect", { x: lw, y, width: keptW, height: h - 4, class: "kept" }));
      row.appendChild(s("rect", { x: lw + keptW, y, width: bw - keptW, height: h - 4, class: g.prunable ? "gone" : "track" }));
      row.appendChild(s("text", { x: lw + bw + 6, y: y + 11 }, g.kept + " / " + g.total + (g.prunable ? "" : " fixed")));
      svg.appendChild(row);
    });
    return [svg, more(list.length, "groups")].filter(Boolean);
  }

  // One row per layer: two pairs of bars (MACs, then latency), before grey above after blue.
  function layers(list) {
    if (!list || !list.length) return [SPA.el("p", { class: "muted" }, "no per-layer figures (the job did not measure latency)")];
    const rows = list.slice(0, MAX_ROWS), h = 22, lw = 300, bw = 220, gap = 120;
    const top = (k1, k2) => Math.max(...rows.map(r => Math.max(r[k1] || 0, r[k2] || 0))) || 1;
    const tm = top("macs_before", "macs_after"), tl = top("latency_ms_before", "latency_ms_after");
    const svg = s("svg", { width: lw + 2 * (bw + gap), height: rows.length * h + 22, role: "img", "aria-label": "MACs and latency per layer", "data-chart": "layers" });
    svg.appendChild(s("text", { x: lw, y: 12 }, "MACs"));
    svg.appendChild(s("text", { x: lw + bw + gap, y: 12 }, "latency (ms, the layer alone)"));
    rows.forEach((r, i) => {
      const y = 20 + i * h;
      const row = s("g", { "data-layer": r.node });
      row.appendChild(s("title", {}, r.node + " (" + r.op + "): MACs " + r.macs_before + " → " + r.macs_after + ", ms " + r.latency_ms_before + " → " + r.latency_ms_after));
      row.appendChild(s("text", { x: 0, y: y + 13 }, label(r.node) + " " + r.op));
      const pair = (x0, b, a, t, fmt) => {
        row.appendChild(s("rect", { x: x0, y, width: bw * b / t, height: 8, class: "before" }));
        row.appendChild(s("rect", { x: x0, y: y + 10, width: bw * a / t, height: 8, class: "after" }));
        row.appendChild(s("text", { x: x0 + bw + 4, y: y + 13 }, fmt(b) + " → " + fmt(a)));
      };
      pair(lw, r.macs_before || 0, r.macs_after || 0, tm, v => SPA.num(v));
      pair(lw + bw + gap, r.latency_ms_before || 0, r.latency_ms_after || 0, tl, v => SPA.num(v, 2));
      svg.appendChild(row);
    });
    return [svg, more(list.length, "layers")].filter(Boolean);
  }

  // A line through (step, value) points with the first and last values marked.
  function line(points, what) {
    const w = 640, h = 180, pad = 40;
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const X = x => pad + (w - 2 * pad) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
    const Y = y => h - pad + (y1 > y0 ? -(h - 2 * pad) * (y - y0) / (y1 - y0) : -(h - 2 * pad) / 2);
    const svg = s("svg", { width: w, height: h, role: "img", "aria-label": what, "data-chart": "loss", "data-points": points.length });
    svg.appendChild(s("line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, class: "axis" }));
    svg.appendChild(s("line", { x1: pad, y1: pad, x2: pad, y2: h - pad, class: "axis" }));
    svg.appendChild(s("polyline", { points: points.map(p => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" "), class: "line" }));
    svg.appendChild(s("text", { x: 2, y: pad + 4 }, SPA.num(y1, 3)));
    svg.appendChild(s("text", { x: 2, y: h - pad + 4 }, SPA.num(y0, 3)));
    svg.appendChild(s("text", { x: pad, y: h - pad + 16 }, "step " + x0));
    svg.appendChild(s("text", { x: w - pad - 50, y: h - pad + 16 }, "step " + x1));
    return [svg];
  }
  return { groups, layers, line };
})();
