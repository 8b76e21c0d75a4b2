"""Write docs/zoo.md: every zoo entry x exporter, pruned at 30 % channels (l1, global).

python -m tests.zoo.write_table [--out docs/zoo.md] [NAME ...]      (`make zoo`)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import torch
import transformers

from tests.zoo.acceptance import SPEC, Outcome, prune_and_check
from tests.zoo.export import REPO_ROOT, cached_export, meta_for
from tests.zoo.models import ZOO


@dataclass
class Row:
    name: str
    family: str
    exporter: str
    export_s: float | None = None
    outcome: Outcome | None = None
    groups: tuple[int, int] | None = None
    status: str = "ok"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:240].replace("|", "\\|")


def evaluate(name: str, exporter: str) -> Row:
    from pruning_core.api import analyze

    entry = ZOO[name]
    row = Row(name, entry.family, exporter)
    try:
        path = cached_export(name, exporter)
        row.export_s = float(meta_for(path)["seconds"])
        info = analyze(path)
        row.groups = (int(info["groups_total"]), int(info["groups_prunable"]))
        with tempfile.TemporaryDirectory() as tmp:
            row.outcome = prune_and_check(path, Path(tmp))
    except Exception as exc:
        row.status = f"FAIL: {_one_line(exc)}"
    if exporter in entry.excused:
        row.status = f"excused: {entry.excused[exporter]} ({row.status})"
    return row


def _n(x: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return str(x)


def _cells(r: Row) -> list[str]:
    o = r.outcome
    groups = f"{r.groups[0]}" if r.groups else "-"
    prunable = f"{r.groups[1]}" if r.groups else "-"
    if o is None:
        macs = params = err = secs = "-"
    else:
        drop = 1 - o.macs_after / o.macs_before if o.macs_before else 0.0
        macs = f"{_n(o.macs_before)} → {_n(o.macs_after)} (−{drop:.0%})"
        params = f"{_n(o.params_before)} → {_n(o.params_after)}"
        err = f"{o.verify_max_error:.1e}"
        secs = f"{o.seconds:.2f}"
    export_s = f"{r.export_s:.2f}" if r.export_s is not None else "-"
    return [r.name, r.family, r.exporter, groups, prunable, macs, params, err, export_s, secs, r.status]


HEADER = [
    "architecture",
    "family",
    "exporter",
    "groups",
    "prunable",
    "MACs before → after",
    "params before → after",
    "verify max error",
    "export s",
    "prune s",
    "status",
]


def render(rows: list[Row], total_s: float) -> str:
    ok = sum(r.status == "ok" for r in rows)
    lines = [
        "# Test zoo",
        "",
        "Written by `make zoo` (`python -m tests.zoo.write_table`); do not edit by hand.",
        "",
        f"Spec: `{SPEC}`. Each row: export (torch.onnx.export, static shapes, opset 18), "
        "`pruning_core.api.analyze`, `pruning_core.api.prune`, then the checks of `tests/zoo/acceptance.py`: "
        "onnx full check, onnxruntime runs with the same input/output names and output shapes (the "
        "dims the original declares static: `crnn`'s decoded length depends on the data), "
        "verify max error ≤ 1e-4 · max(1, max |output|), MACs drop. Models are small, random-weight "
        "builds from `transformers` configs or hand-written (`tests/zoo/`); `*_qdq` rows are those "
        "exports quantized by `onnxruntime.quantization` (QDQ, static); `if_branch` (`torch.cond`, an "
        "ONNX `If`) has no TorchScript row: tracing cannot write a branch.",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}. {ok}/{len(rows)} ok; "
        f"{total_s:.0f} s in all (exports from the cache where present). "
        "Export seconds are those of the cached export.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zoo.write_table", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="entries (default: all)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "zoo.md")
    args = ap.parse_args(argv)
    names = args.names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        ap.error(f"unknown entries {unknown}")
    t0 = time.perf_counter()
    rows = []
    for name in names:
        for exporter in ZOO[name].exporters:
            row = evaluate(name, exporter)
            rows.append(row)
            print(f"{name:20s} {exporter:11s} {row.status}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, time.perf_counter() - t0))
    print(f"wrote {args.out}")
    return 0 if all(r.status == "ok" or r.status.startswith("excused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
