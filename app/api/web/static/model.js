// The model page: what validation found (or why the model is invalid) and its channel groups,
// with the reasons the fixed ones cannot lose channels.
"use strict";
(() => {
  const { api, el, num, when, every } = SPA;
  const id = document.body.dataset.modelId;
  const $ = (x) => document.getElementById(x);
  const io = (list) => (list || []).map(t => t.name + " " + JSON.stringify(t.shape) + " " + (t.dtype || "")).join("; ");
  let groupsShown = false;

  async function refresh() {
    const m = await api(`/v1/models/${id}`);
    $("state").textContent = m.state;
    $("state").className = "state " + m.state;
    $("modelline").textContent = m.filename + " · " + m.format + " · " + num(m.size) + " bytes · uploaded " + when(m.created_at);
    if (m.reason) { $("failure").hidden = false; $("failure").textContent = m.reason; }
    const s = m.summary || {};
    if (m.summary) {
      $("summary").replaceChildren(...[["params", num(s.params)], ["MACs", num(s.macs)], ["inputs", io(s.inputs)],
        ["outputs", io(s.outputs)], ["groups", s.groups_prunable + " of " + s.groups_total + " prunable"],
        ["channels", num(s.channels_removable) + " of " + num(s.channels_total) + " removable"]]
        .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
    }
    if (m.state === "ready" && !groupsShown) {
      groupsShown = true;
      const g = await api(`/v1/models/${id}/groups`);
      $("groupline").textContent = g.groups.length + " groups; a fixed group keeps all its channels, for the reason given.";
      $("groups").replaceChildren(...g.groups.map(gr => el("tr", { "data-group": gr.name, class: gr.prunable ? "" : "fixed" },
        el("td", {}, el("code", {}, gr.name)), el("td", { class: "n" }, gr.size),
        el("td", { class: gr.prunable ? "ok" : "bad" }, gr.prunable ? "yes" : "no"),
        el("td", {}, (gr.reasons || []).join("; ")))));
    }
    return m.state === "validating";
  }
  let stop = every(2000, refresh);
  // a new key restarts the one polling loop (a second loop would poll twice as often)
  window.addEventListener("spa:key", () => { stop(); groupsShown = false; stop = every(2000, refresh); });
})();
