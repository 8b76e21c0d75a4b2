// What every dashboard page shares: the API key (kept in this browser's localStorage, sent as a
// Bearer header), calls to the public API with problem+json errors turned into sentences, a DOM
// builder that sets text only (names come from users' models and must never become HTML), and
// downloads that work under API-key auth (a plain link cannot carry the header).
"use strict";
const SPA = (() => {
  const body = document.body;
  const authOn = body.dataset.auth === "on";
  const key = () => localStorage.getItem("spaKey") || "";
  const headers = (extra) => Object.assign(key() ? { Authorization: "Bearer " + key() } : {}, extra || {});

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // One sentence for any failed call: the problem's detail, else the status.
  async function failure(r) {
    let detail = "";
    try {
      const p = await r.json();
      detail = p.detail || p.title || "";
      if (Array.isArray(detail)) detail = detail.map(d => d.msg || String(d)).join("; ");
    } catch (e) { /* not JSON */ }
    if (r.status === 401) detail = (key() ? "the API key was refused" : "paste an API key above") + (detail ? " (" + detail + ")" : "");
    return new ApiError(r.status, detail || ("the server answered " + r.status));
  }

  async function api(path, opts) {
    opts = opts || {};
    let r;
    try {
      r = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
    } catch (e) {
      throw new ApiError(0, "cannot reach the server");
    }
    if (!r.ok) throw await failure(r);
    return r.status === 204 ? null : r.json();
  }

  function notice(message) {
    const n = document.getElementById("notice");
    n.hidden = !message;
    n.textContent = message || "";
  }

  // A link to an artifact: a real href (works when auth is off, and shows what it is); under auth
  // a click fetches the bytes with the key and saves them from a blob.
  function downloadLink(url, name, label) {
    const a = el("a", { href: url, download: name, "data-artifact": name }, label || name);
    a.addEventListener("click", async (ev) => {
      if (!key()) return;
      ev.preventDefault();
      try {
        // through the API: a redirect to a presigned S3 URL would need that bucket's CORS
        const r = await fetch(url + "?redirect=false", { headers: headers() });
        if (!r.ok) throw await failure(r);
        const blobUrl = URL.createObjectURL(await r.blob());
        const tmp = el("a", { href: blobUrl, download: name });
        document.body.appendChild(tmp); tmp.click(); tmp.remove();
        setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
      } catch (e) { notice("download of " + name + " failed: " + e.message); }
    });
    return a;
  }

  const num = (x, digits) => {
    if (x == null) return "–";
    if (Number.isInteger(x)) return x.toLocaleString("en-US");
    return Math.abs(x) >= 1e4 ? Math.round(x).toLocaleString("en-US") : Number(x).toPrecision(digits || 3);
  };
  const pct = (x, digits) => x == null ? "–" : (100 * x).toFixed(digits == null ? 1 : digits) + " %";
  const shortId = (id) => id ? id.slice(0, 8) : "";
  const when = (iso) => iso ? new Date(iso).toLocaleString() : "";

  // "cos 0.9981, top-1 97.0 %, accuracy 91.0 % → 89.5 % on held-out data (200 samples)"
  function fidelity(f) {
    if (!f || f.cosine == null) return "";
    const parts = ["cos " + f.cosine.toFixed(4)];
    if (f.top1_agreement != null) parts.push("top-1 " + pct(f.top1_agreement));
    if (f.accuracy && f.accuracy.before != null) parts.push("accuracy " + pct(f.accuracy.before) + " → " + pct(f.accuracy.after));
    return parts.join(", ") + " on " + (f.inputs === "synthetic" ? "synthetic inputs" : (f.inputs || "?"));
  }

  // Polls fn every ms until it returns false; a failure is shown and polling goes on.
  function every(ms, fn) {
    let stopped = false;
    const tick = async () => {
      let again = true;
      try { again = (await fn()) !== false; notice(""); }
      catch (e) { notice(e.message); }
      if (again && !stopped) setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; };
  }

  const keyForm = document.getElementById("keyform");
  if (keyForm) {
    const input = document.getElementById("key");
    const state = document.getElementById("keystate");
    input.value = key();
    state.textContent = key() ? "key set" : "no key";
    keyForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      localStorage.setItem("spaKey", input.value.trim());
      state.textContent = input.value.trim() ? "key set" : "no key";
      window.dispatchEvent(new Event("spa:key"));
    });
  }
  return { api, el, notice, downloadLink, num, pct, shortId, when, fidelity, every, authOn, key, ApiError };
})();
