// The index page: jobs and models (links to their pages, and why a job failed or a model is
// invalid), an upload form and a submit form. Everything goes through the public API.
"use strict";
(() => {
  const { api, el, num, pct, shortId, when, fidelity, every } = SPA;
  const jobsBody = document.getElementById("jobs");
  const modelsBody = document.getElementById("models");
  const modelSelect = document.getElementById("s_model");

  const td = (content, cls) => el("td", { class: cls }, content);

  function jobRow(j) {
    const s = j.summary || {};
    const macs = s.macs_before ? 1 - s.macs_after / s.macs_before : null;
    return el("tr", { "data-job": j.id },
      td([el("a", { href: "/jobs/" + j.id }, shortId(j.id)), j.name ? " " + j.name : ""]),
      td(el("a", { href: "/models/" + j.model_id }, shortId(j.model_id))),
      td(j.state, j.state), td(j.stage || ""),
      td(el("progress", { max: 1, value: j.progress })),
      td(macs == null ? "" : pct(macs), "n"), td(s.speedup == null ? "" : num(s.speedup) + "×", "n"),
      td(fidelity(s.fidelity)), td(when(j.created_at)),
      td(j.error ? (j.error_code ? j.error_code + ": " : "") + j.error : "", "why"));
  }

  function modelRow(m) {
    const s = m.summary || {};
    return el("tr", { "data-model": m.id },
      td(el("a", { href: "/models/" + m.id }, shortId(m.id))), td(m.filename), td(m.state, m.state),
      td(num(s.params), "n"), td(s.macs == null ? "" : num(s.macs), "n"),
      td(s.groups_total == null ? "" : s.groups_prunable + " / " + s.groups_total + " prunable"),
      td(when(m.created_at)), td(m.reason || "", "why"));
  }

  function fillModels(items) {
    const chosen = modelSelect.value;
    const ready = items.filter(m => m.state === "ready");
    modelSelect.replaceChildren(...ready.map(m => el("option", { value: m.id }, shortId(m.id) + " " + m.filename)));
    if (ready.some(m => m.id === chosen)) modelSelect.value = chosen;
  }

  async function refresh() {
    const [jobs, models] = await Promise.all([api("/v1/jobs?limit=50"), api("/v1/models?limit=50")]);
    jobsBody.replaceChildren(...jobs.items.map(jobRow));
    if (!jobs.items.length) jobsBody.appendChild(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "no jobs yet")));
    modelsBody.replaceChildren(...models.items.map(modelRow));
    if (!models.items.length) modelsBody.appendChild(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no models yet: upload one above")));
    fillModels(models.items);
  }

  document.getElementById("uploadform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const state = document.getElementById("uploadstate");
    const file = document.getElementById("modelfile").files[0];
    if (!file) { state.textContent = "choose a file first"; return; }
    const form = new FormData();
    form.append("file", file, file.name);
    state.textContent = "uploading " + file.name + " …";
    try {
      const m = await api("/v1/models", { method: "POST", body: form });
      state.replaceChildren("uploaded as ", el("a", { href: "/models/" + m.id }, shortId(m.id)), " (" + m.state + ")");
      await refresh();
    } catch (e) { state.textContent = "upload failed: " + e.message; }
  });

  document.getElementById("submitform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const state = document.getElementById("submitstate");
    const modelId = modelSelect.value;
    if (!modelId) { state.textContent = "upload a model first, and wait until it is ready"; return; }
    const body = {
      model_id: modelId,
      spec: {
        target: { [document.getElementById("s_kind").value]: Number(document.getElementById("s_fraction").value) },
        criterion: document.getElementById("s_criterion").value,
      },
    };
    const name = document.getElementById("s_name").value.trim();
    if (name) body.name = name;
    try {
      const j = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
      window.location.assign("/jobs/" + j.id);
    } catch (e) { state.textContent = "not submitted: " + e.message; }
  });

  window.addEventListener("spa:key", refresh);
  every(3000, refresh);
})();
