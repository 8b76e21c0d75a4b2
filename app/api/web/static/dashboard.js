// Polls the public API with the key kept in this browser's localStorage. Builds DOM nodes with
// textContent only: names come from users and must never be interpreted as HTML.
"use strict";
const keyInput = document.getElementById("key");
if (keyInput) {
  keyInput.value = localStorage.getItem("spaKey") || "";
  document.getElementById("save").onclick = () => { localStorage.setItem("spaKey", keyInput.value); refresh(); };
}
function headers() {
  const k = localStorage.getItem("spaKey");
  return k ? { Authorization: "Bearer " + k } : {};
}
function cell(row, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value == null ? "" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
}
async function load(path, body, render) {
  const r = await fetch(path, { headers: headers() });
  body.replaceChildren();
  if (!r.ok) { const tr = document.createElement("tr"); cell(tr, "error " + r.status); body.appendChild(tr); return; }
  for (const item of (await r.json()).items) { const tr = document.createElement("tr"); render(tr, item); body.appendChild(tr); }
}
// "cos 0.9981, top-1 97.0%, acc 91.0% -> 89.5% on held-out data (200 samples)"
function fidelity(f) {
  if (!f || f.cosine == null) return "";
  const pct = x => (100 * x).toFixed(1) + "%";
  const parts = ["cos " + f.cosine.toFixed(4)];
  if (f.top1_agreement != null) parts.push("top-1 " + pct(f.top1_agreement));
  if (f.accuracy) parts.push("acc " + pct(f.accuracy.before) + " -> " + pct(f.accuracy.after));
  return parts.join(", ") + " on " + (f.inputs === "synthetic" ? "synthetic inputs" : f.inputs);
}
function refresh() {
  load("/v1/jobs?limit=50", document.getElementById("jobs"), (tr, j) => {
    cell(tr, j.id.slice(0, 8)); cell(tr, j.state, j.state); cell(tr, j.stage);
    const p = document.createElement("progress"); p.max = 1; p.value = j.progress; cell(tr, p);
    cell(tr, j.created_at); cell(tr, fidelity(j.summary && j.summary.fidelity));
    cell(tr, j.artifacts.map(a => a.name).join(", "));
  });
  load("/v1/models?limit=50", document.getElementById("models"), (tr, m) => {
    cell(tr, m.id.slice(0, 8)); cell(tr, m.filename); cell(tr, m.state, m.state);
    cell(tr, m.summary ? m.summary.params : ""); cell(tr, m.created_at);
  });
}
refresh();
setInterval(refresh, 3000);
