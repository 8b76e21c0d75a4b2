"""report.html (worker.report_html): self-contained, escaped, complete when figures are missing."""

from __future__ import annotations

import re

from worker.report_html import MAX_ROWS, render


def _report(n_groups: int = 3, layers: bool = True) -> dict:
    return {
        "spec": {"target": {"flops": 0.5, "params": None}, "criterion": "l1"},
        "source": {"name": "model.onnx"},
        "params": {"before": 1000, "after": 600, "removed_fraction": 0.4},
        "macs": {"before": 2_000_000, "after": 1_000_000, "removed_fraction": 0.5},
        "latency_ms": {"before": 2.0, "after": 1.1, "runs": 9, "speedup": 1.82, "efficiency": 0.91,
                       "spread": {"before": [1.9, 2.1], "after": [1.0, 1.2]}} if layers else
                      {"before": None, "after": None, "runs": 0, "speedup": None, "efficiency": None},
        "layers": [{"node": "<img src=x onerror=alert(1)>", "op": "Conv", "macs_before": 10, "macs_after": 5,
                    "params_before": 8, "params_after": 4, "latency_ms_before": 0.2,
                    "latency_ms_after": 0.1}] if layers else [],
        "fidelity": {"inputs": "synthetic", "cosine": 0.99, "top1_agreement": 0.9, "accuracy": None},
        "groups": [{"name": f"g{i}<script>alert(1)</script>", "kept": 8, "total": 16, "prunable": True, "reasons": []}
                   for i in range(n_groups)],
        "verify": {"max_error": 1e-6, "tolerance": 1e-4, "passed": True},
        "timings_s": {"load": 0.1, "score": 0.5},
    }


def test_names_from_the_model_are_escaped_and_nothing_is_fetched() -> None:
    html = render(_report(), "report <b>x</b>")
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert not re.search(r"<[^>]*\b(src|href)\s*=|https?://|url\(", html)  # no tag loads anything
    assert "1.82x faster" in html and "2,000,000" in html and "passed" in html


def test_missing_latency_and_many_groups() -> None:
    html = render(_report(n_groups=MAX_ROWS + 7, layers=False))
    assert "no per-layer figures" in html and "7 more groups" in html and "latency (ms" not in html
