// The job page: live state, stage, step counts and progress; the AutoBot loss curve; the event
// log; cancel; and, once the job succeeded, report.json's figures, per-group and per-layer charts
// and download links that carry the API key.
"use strict";
(() => {
  const { api, el, num, pct, fidelity, when, every, downloadLink } = SPA;
  const id = document.body.dataset.jobId;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STEP = /step (\d+)\/(\d+)/;
  const LOSS = /autobot step (\d+)\/\d+ loss (-?[\d.]+(?:e[-+]?\d+)?)/i;
  const $ = (x) => document.getElementById(x);
  let after = 0, reportShown = false, lastState = null;
  const loss = [];

  function addEvents(items) {
    const body = $("events");
    for (const e of items) {
      body.appendChild(el("tr", { "data-seq": e.seq }, el("td", { class: "n" }, e.seq), el("td", {}, when(e.at)),
        el("td", {}, e.kind), el("td", {}, e.stage || ""), el("td", { class: "n" }, e.progress == null ? "" : pct(e.progress, 0)),
        el("td", {}, e.message || "")));
      const m = e.message && e.message.match(LOSS);
      if (m) loss.push([Number(m[1]), Number(m[2])]);
      const st = e.message && e.message.match(STEP);
      if (st) $("steps").textContent = "step " + st[1] + " of " + st[2];
      after = e.seq;
    }
    if (loss.length > 1) { $("losscard").hidden = false; $("loss").replaceChildren(...Charts.line(loss, "AutoBot loss per step")); }
  }

  async function events() {
    for (;;) {
      const page = await api(`/v1/jobs/${id}/events?after=${after}&limit=500`);
      addEvents(page.items);
      if (page.items.length < 500) return;
    }
  }

  function row(name, before, afterValue, note) {
    return el("tr", {}, el("th", {}, name), el("td", { class: "n" }, before), el("td", { class: "n" }, afterValue), el("td", {}, note || ""));
  }

  function figures(r) {
    const lat = r.latency_ms || {}, ver = r.verify || {}, fid = r.fidelity || {};
    const rows = [el("tr", {}, el("th", {}), el("th", {}, "before"), el("th", {}, "after"), el("th", {})),
      row("params", num(r.params.before), num(r.params.after), "−" + pct(r.params.removed_fraction)),
      row("MACs", num(r.macs.before), num(r.macs.after), "−" + pct(r.macs.removed_fraction))];
    if (lat.before != null) {
      const q = lat.spread ? " (quartiles " + lat.spread.before.map(v => num(v, 3)).join("–") + " / " + lat.spread.after.map(v => num(v, 3)).join("–") + " ms)" : "";
      rows.push(row("latency (ms, median)", num(lat.before, 3), num(lat.after, 3),
        num(lat.speedup, 3) + "× faster, efficiency " + num(lat.efficiency, 3) + q));
    }
    const verText = ver.skipped ? "skipped" : (ver.passed ? "passed" : "FAILED") + ": max error " + num(ver.max_error, 3) + " (tolerance " + num(ver.tolerance, 3) + ")";
    rows.push(el("tr", {}, el("th", {}, "verification"), el("td", { colspan: 3, class: ver.skipped ? "muted" : (ver.passed ? "ok" : "bad") }, verText)));
    rows.push(el("tr", {}, el("th", {}, "fidelity"), el("td", { colspan: 3 }, fidelity(fid) || "not measured")));
    for (const w of r.warnings || []) rows.push(el("tr", {}, el("th", {}, "warning"), el("td", { colspan: 3, class: "bad" }, w)));
    const t = r.timings_s || {};
    rows.push(el("tr", {}, el("th", {}, "stage timings"), el("td", { colspan: 3 },
      Object.entries(t).map(([k, v]) => k + " " + v.toFixed(2) + " s").join(", "))));
    return rows;
  }

  async function showReport(job) {
    reportShown = true;
    $("downloads").replaceChildren(...job.artifacts.map(a => el("li", {}, downloadLink(a.url, a.name), " ", el("span", { class: "muted" }, num(a.size) + " bytes"))));
    $("figurescard").hidden = false;
    if (!job.artifacts.some(a => a.name === "report.json")) return;
    const r = await api(`/v1/jobs/${id}/artifacts/report.json`);
    $("figures").replaceChildren(...figures(r));
    $("groups").replaceChildren(...Charts.groups(r.groups || []));
    $("layers").replaceChildren(...Charts.layers(r.layers));
  }

  async function refresh() {
    const j = await api(`/v1/jobs/${id}`);
    $("state").textContent = j.state;
    $("state").className = "state " + j.state;
    $("bar").value = j.progress;
    $("stage").textContent = (j.stage || "") + " " + pct(j.progress, 0);
    const target = Object.entries((j.spec || {}).target || {}).filter(([, v]) => v != null).map(([k, v]) => k + " " + v).join(", ");
    $("jobline").replaceChildren((j.name ? j.name + " · " : ""), "model ", el("a", { href: "/models/" + j.model_id }, j.model_id.slice(0, 8)),
      " · target " + (target || "default") + " · criterion " + ((j.spec || {}).criterion || "") + " · queue " + j.queue + " · attempt " + j.attempts + " · created " + when(j.created_at));
    $("cancel").hidden = !(j.state === "queued" || j.state === "running");
    if (j.error) { $("failure").hidden = false; $("failure").textContent = (j.error_code ? j.error_code + ": " : "") + j.error; }
    await events();
    if (j.state === "succeeded" && !reportShown) await showReport(j);
    if (j.state !== lastState) { lastState = j.state; document.title = "job " + id.slice(0, 8) + " " + j.state + " · SPA service"; }
    return !FINAL.has(j.state);
  }

  $("cancel").addEventListener("click", async () => {
    try {
      const c = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
      $("cancelstate").textContent = "cancel requested: " + c.state;
    } catch (e) { $("cancelstate").textContent = "not cancelled: " + e.message; }
  });
  let stop = every(1500, refresh);
  window.addEventListener("spa:key", () => { stop(); stop = every(1500, refresh); });
})();
