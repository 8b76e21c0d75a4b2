"""report.html: a job's report.json as one self-contained page (inline CSS, bars drawn with CSS
widths; no script, no font, no image, nothing fetched), written beside report.json for every
successful job and downloadable like the other artifacts.

Sections: the summary (params, MACs, latency with quartiles, speed-up, efficiency, verification,
fidelity), channels kept and removed per group, MACs / params / latency per layer before and after,
and stage timings. Every value from the report is HTML-escaped: names come from the user's model."""

from __future__ import annotations

from html import escape
from typing import Any

MAX_ROWS = 500  # groups / layers drawn; the rest are counted (report.json has them all)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;border-bottom:1px solid #eaeef2;
text-align:left;vertical-align:middle}th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:flex;height:12px;min-width:160px;background:#eaeef2;border-radius:2px;overflow:hidden}
.kept{background:#2da44e}.gone{background:#cf222e}.before{background:#8c959f}.after{background:#0969da}
.pair{display:grid;gap:2px}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.muted{color:#57606a}code{background:#f6f8fa;padding:0 3px}
"""


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return escape(str(x))


def _bar(parts: list[tuple[float, str]], total: float) -> str:
    total = total or 1.0
    return '<div class="bar">' + "".join(
        f'<span class="{cls}" style="width:{max(0.0, 100.0 * v / total):.2f}%"></span>' for v, cls in parts) + "</div>"


def _pair(before: float, after: float, scale: float) -> str:
    """Two bars on one scale: before (grey) above after (blue)."""
    return ('<div class="pair">' + _bar([(before, "before")], scale) + _bar([(after, "after")], scale) + "</div>")


def _summary(r: dict[str, Any]) -> str:
    lat, ver, fid = r.get("latency_ms") or {}, r.get("verify") or {}, r.get("fidelity") or {}
    rows = [("params", r["params"]["before"], r["params"]["after"], f"−{100 * r['params']['removed_fraction']:.1f} %"),
            ("MACs", r["macs"]["before"], r["macs"]["after"], f"−{100 * r['macs']['removed_fraction']:.1f} %")]
    if lat.get("before") is not None:
        spread = lat.get("spread") or {}
        q = " ".join(f"{k} {v[0]:.3g}–{v[1]:.3g} ms" for k, v in spread.items())
        rows.append(("latency (ms, median)", lat["before"], lat["after"],
                     f"{_num(lat.get('speedup'))}x faster, efficiency {_num(lat.get('efficiency'))}"
                     + (f" <span class='muted'>(quartiles {escape(q)})</span>" if q else "")))
    body = "".join(f"<tr><th>{escape(k)}</th><td class='n'>{_num(b)}</td><td class='n'>{_num(a)}</td><td>{note}</td></tr>"
                   for k, b, a, note in rows)
    if ver.get("skipped"):
        v = "<span class='muted'>skipped</span>"
    else:
        ok = "ok" if ver.get("passed") else "bad"
        v = (f"<span class='{ok}'>{'passed' if ver.get('passed') else 'FAILED'}</span>: max error "
             f"{_num(ver.get('max_error'))} (tolerance {_num(ver.get('tolerance'))}"
             + (f", {escape(str(ver['precision']))}" if ver.get("precision") else "") + ")")
    f = "<span class='muted'>not measured</span>"
    if fid and not fid.get("skipped") and fid.get("cosine") is not None:
        acc = fid.get("accuracy")
        f = (f"output cosine {_num(fid.get('cosine'), 4)}, top-1 agreement {_num(fid.get('top1_agreement'), 4)}"
             + (f", accuracy {_num(acc.get('before'), 4)} → {_num(acc.get('after'), 4)}" if isinstance(acc, dict) else "")
             + f" <span class='muted'>({escape(str(fid.get('inputs', '')))})</span>")
    before = r.get("fidelity_before_recovery") or {}
    if before.get("cosine") is not None:
        f += f"; before recovery: cosine {_num(before.get('cosine'), 4)}"
    return ("<table><tr><th></th><th>before</th><th>after</th><th></th></tr>" + body
            + f"<tr><th>verification</th><td colspan=3>{v}</td></tr><tr><th>fidelity</th><td colspan=3>{f}</td></tr></table>")


def _groups(r: dict[str, Any]) -> str:
    groups = r.get("groups") or []
    rows = []
    for gr in groups[:MAX_ROWS]:
        kept, total = gr["kept"], gr["total"]
        why = "" if gr.get("prunable") else " <span class='muted'>fixed: " + escape("; ".join(gr.get("reasons") or [])[:200]) + "</span>"
        rows.append(f"<tr><td><code>{escape(str(gr['name']))}</code>{why}</td><td class='n'>{kept} / {total}</td>"
                    f"<td>{_bar([(kept, 'kept'), (total - kept, 'gone')], total)}</td></tr>")
    more = f"<p class='muted'>{len(groups) - MAX_ROWS} more groups in report.json</p>" if len(groups) > MAX_ROWS else ""
    return ("<p><span class='kept'>&nbsp;&nbsp;</span> kept <span class='gone'>&nbsp;&nbsp;</span> removed</p>"
            "<table><tr><th>group</th><th>kept / total</th><th></th></tr>" + "".join(rows) + "</table>" + more)


def _layers(r: dict[str, Any]) -> str:
    layers = r.get("layers") or []
    if not layers:
        return "<p class='muted'>no per-layer figures (the job did not measure latency)</p>"
    top_macs = max(max(x["macs_before"], x["macs_after"]) for x in layers) or 1
    top_ms = max(max(x["latency_ms_before"], x["latency_ms_after"]) for x in layers) or 1.0
    top_p = max(max(x.get("params_before", 0), x.get("params_after", 0)) for x in layers) or 1
    rows = []
    for x in layers[:MAX_ROWS]:
        rows.append(
            f"<tr><td><code>{escape(str(x['node']))}</code> <span class='muted'>{escape(str(x['op']))}</span></td>"
            f"<td class='n'>{_num(x['macs_before'])}<br>{_num(x['macs_after'])}</td>"
            f"<td>{_pair(x['macs_before'], x['macs_after'], top_macs)}</td>"
            f"<td class='n'>{_num(x.get('params_before'))}<br>{_num(x.get('params_after'))}</td>"
            f"<td>{_pair(x.get('params_before', 0), x.get('params_after', 0), top_p)}</td>"
            f"<td class='n'>{_num(x['latency_ms_before'])}<br>{_num(x['latency_ms_after'])}</td>"
            f"<td>{_pair(x['latency_ms_before'], x['latency_ms_after'], top_ms)}</td></tr>")
    more = f"<p class='muted'>{len(layers) - MAX_ROWS} more layers in report.json</p>" if len(layers) > MAX_ROWS else ""
    return ("<p><span class='before'>&nbsp;&nbsp;</span> before <span class='after'>&nbsp;&nbsp;</span> after; "
            "latency: the layer alone, timed in turn at both shapes</p><table><tr><th>layer</th><th>MACs</th><th></th>"
            "<th>params</th><th></th><th>ms</th><th></th></tr>" + "".join(rows) + "</table>" + more)


def _timings(r: dict[str, Any]) -> str:
    t = r.get("timings_s") or {}
    total = sum(t.values()) or 1.0
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td class='n'>{v:.2f} s</td><td>{_bar([(v, 'after')], total)}</td></tr>"
                   for k, v in t.items())
    return f"<table><tr><th>stage</th><th>time</th><th></th></tr>{rows}</table>"


def _warnings(r: dict[str, Any]) -> str:
    return "".join(f"<p class='bad'>warning: {escape(str(w))}</p>" for w in r.get("warnings") or [])


def render(report: dict[str, Any], title: str = "pruning report") -> str:
    spec = report.get("spec") or {}
    target = {k: v for k, v in (spec.get("target") or {}).items() if v is not None}
    src = (report.get("source") or {}).get("name", "")
    head = (f"<p>{escape(str(src))}: target <code>{escape(str(target))}</code>, criterion "
            f"<code>{escape(str(spec.get('criterion', '')))}</code>, runtime <code>{escape(str(report.get('runtime', '')))}</code></p>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>{head}{_warnings(report)}<h2>Summary</h2>{_summary(report)}"
            f"<h2>Channels per group</h2>{_groups(report)}<h2>Layers</h2>{_layers(report)}"
            f"<h2>Stage timings</h2>{_timings(report)}</body></html>")
