"""The one entry point: ``prune(model, spec, out_dir, progress=...) -> PruneResult``.

load -> analyze -> score -> select -> surgery -> verify -> measure -> save. Progress goes to
``progress(stage, fraction, message)``; a callback that raises ``Cancelled`` stops the run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, helper

from pruning_core import surgery
from pruning_core.analysis.groups import Analysis
from pruning_core.analysis.groups import analyze as analyze_graph
from pruning_core.errors import PruneError
from pruning_core.frontends import open_model
from pruning_core.importance import CRITERIA, ScoreContext, score
from pruning_core.ir import graph as graph_mod
from pruning_core.ir.weights import LightModel, small_pages
from pruning_core.runtime import data as data_mod
from pruning_core.runtime import metrics
from pruning_core.selection import SelectOptions, candidates, select
from pruning_core.spec import PruneSpec
from pruning_core.verify import verify

Progress = Callable[[str, float, str | None], None]

STAGES = ["load", "analyze", "score", "select", "surgery", "verify", "compensate", "recover", "save",
          "check", "measure"]


class VerificationError(PruneError):
    """The pruned model does not match the masked original: never shipped."""

    code = "verification_failed"


@dataclass
class PruneResult:
    artifacts: dict[str, Path]
    report: dict[str, Any]
    summary: dict[str, Any]


def _io(g: graph_mod.Graph, names: list[str]) -> list[dict]:
    return [{"name": n, "shape": list(g.shape(n)) if n in g.shapes else None,
             "dtype": str(helper.tensor_dtype_to_np_dtype(g.dtypes[n])) if n in g.dtypes else None}
            for n in names]


def analyze(model: str | os.PathLike[str], input_shapes: dict[str, list[int]] | None = None,
            attention_heads: str = "auto", approximate: bool = False) -> dict[str, Any]:
    """Summary of a model: params, MACs, inputs, outputs and its dependency groups."""
    with tempfile.TemporaryDirectory(prefix="spa-") as tmp, small_pages():
        src = open_model(model, Path(tmp))
        g = graph_mod.load(src.path, input_shapes)
    an = analyze_graph(g, attention_heads, approximate)
    return {"kind": src.kind, "params": metrics.count_params(g), "macs": metrics.count_macs(g),
            "inputs": _io(g, g.inputs), "outputs": _io(g, g.outputs), "opset": g.opset,
            "nodes": len(g.model.graph.node), **an.summary(),
            "groups": [grp.to_dict() for grp in an.groups]}


def prune(model: str | os.PathLike[str], spec: PruneSpec | dict[str, Any], out_dir: str | os.PathLike[str],
          *, data: str | os.PathLike[str] | None = None, progress: Progress | None = None) -> PruneResult:
    spec = spec if isinstance(spec, PruneSpec) else PruneSpec.model_validate(spec)
    with tempfile.TemporaryDirectory(prefix="spa-") as tmp, small_pages():
        return _prune(model, spec, Path(out_dir), Path(tmp), data, progress)


def _prune(model: str | os.PathLike[str], spec: PruneSpec, out: Path, tmp: Path,
           data: str | os.PathLike[str] | None, progress: Progress | None) -> PruneResult:
    timings: dict[str, float] = {}
    started: dict[str, float] = {}

    def stage(name: str, frac: float = 0.0, msg: str | None = None) -> None:
        started.setdefault(name, time.perf_counter())  # a stage's clock starts at its first report
        if progress is not None:
            progress(name, frac, msg)

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - started.get(name, time.perf_counter()), 4)

    stage("load", 0.0, f"loading {Path(model).name}")
    src = open_model(model, tmp)
    g = graph_mod.load(src.path, spec.input_shapes)
    done("load")

    stage("analyze", 0.0, f"{len(g.model.graph.node)} nodes")
    an = analyze_graph(g, spec.attention_heads, spec.approximate)
    done("analyze")

    calib, class_labels = (data_mod.load_npz(data, g) if data is not None else (None, None))
    stage("score", 0.0, f"criterion {spec.criterion}")
    ctx = ScoreContext(an, spec, calib, class_labels, progress=lambda f, m: stage("score", f, m))
    scores = score(ctx)
    done("score")

    stage("select", 0.0, f"target {spec.target.kind}={spec.target.value}")
    removed = select(an, scores, SelectOptions.from_spec(spec))
    done("select")

    stage("surgery", 0.0, f"removing {int(removed.sum())} channels")
    pruned: LightModel | ModelProto = surgery.apply_light(an, removed, progress=lambda f: stage("surgery", f))
    done("surgery")

    crit = CRITERIA[spec.criterion]
    inputs = data_mod.synthetic_inputs(g, seed=spec.seed)
    verify_rep: dict[str, Any] = {"skipped": True}
    if spec.verify:
        stage("verify", 0.0, "masked-equivalence check")
        exact_removed = _exact_only(an, removed)
        exact_model = pruned if exact_removed.sum() == removed.sum() else surgery.apply_light(an, exact_removed)
        verify_rep = verify(an, exact_removed, exact_model, inputs)
        if exact_removed.sum() != removed.sum():
            approx = verify(an, removed, pruned, inputs)
            verify_rep["approximate"] = {"max_error": approx["max_error"],
                                         "channels": int(removed.sum() - exact_removed.sum())}
        del exact_model
        if not verify_rep["passed"]:
            raise VerificationError(f"pruned model differs from the masked original by {verify_rep['max_error']:.3g} "
                                    f"(tolerance {verify_rep['tolerance']:.3g})")
        done("verify")

    if crit.compensate is not None:
        stage("compensate", 0.0, f"{spec.criterion} weight compensation")
        ctx.progress = lambda f, m: stage("compensate", f, m)
        pruned = crit.compensate(ctx, removed, _full(pruned))
        done("compensate")

    if spec.recover is not None:
        from pruning_core.training.recovery import recover

        stage("recover", 0.0, f"{spec.recover.method}, {spec.recover.steps} steps")
        pruned = recover(g.full_model(), _full(pruned), spec, calib, class_labels,
                         progress=lambda f, m: stage("recover", f, m))
        done("recover")

    stage("save", 0.0, None)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "pruned.onnx"
    _save(pruned, onnx_path)
    done("save")
    # The graph is checked with its weights as typed inputs: full_check (strict shape inference)
    # without serializing the weights; the writer checked every array against its declaration.
    stage("check", 0.0, "onnx full check of the pruned graph")
    onnx.checker.check_model(graph_mod.skeleton(pruned.proto if isinstance(pruned, LightModel) else pruned),
                             full_check=True)
    done("check")
    if src.artifacts is None:
        del pruned  # from here on the file is the result: run and timed from disk

    stage("measure", 0.0, "params, MACs, latency")
    figures = _measure(g, an, removed, onnx_path, inputs, tmp, spec.measure, lambda f: stage("measure", f))
    done("measure")

    artifacts = {"pruned.onnx": onnx_path}
    if src.artifacts is not None:
        artifacts.update(src.artifacts(an, removed, _full(pruned), out, spec))
    report = _report(g, an, removed, scores, spec, figures, verify_rep, timings)
    report["source"] = {"kind": src.kind, "name": Path(src.original).name}
    if ctx.cache.get("stats"):  # e.g. OBSPA: the largest Hessian built
        report["criterion_stats"] = ctx.cache["stats"]
    rep_path = out / "report.json"
    rep_path.write_text(json.dumps(report, indent=1))
    stage("save", 1.0, "done")
    summary = {k: figures[k] for k in ("params_before", "params_after", "macs_before", "macs_after")}
    summary["latency_ms_before"] = figures["latency_before"]["median_ms"]
    summary["latency_ms_after"] = figures["latency_after"]["median_ms"]
    summary["verify_max_error"] = verify_rep.get("max_error")
    summary["channels_removed"] = int(removed.sum())
    artifacts["report.json"] = rep_path
    return PruneResult(artifacts, report, summary)


def _exact_only(an: Analysis, removed: np.ndarray) -> np.ndarray:
    exact = removed.copy()
    for grp in an.groups:
        if not grp.exact:
            exact[grp.channels] = False
    return exact


def _measure(g: graph_mod.Graph, an: Analysis, removed: np.ndarray, pruned: Path,
             inputs: dict[str, np.ndarray], tmp: Path, timed: bool = True,
             progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Figures of the normalized original (constants folded like the result, so the ratio shows
    what pruning did) vs the pruned file; one onnxruntime session from each file, one at a time."""
    counts = {"params_before": an.params(), "params_after": an.params(removed),
              "macs_before": an.macs(), "macs_after": an.macs(removed)}
    if not timed:
        none = {"median_ms": None, "runs": 0, "threads": 1}
        return {**counts, "latency_before": none, "latency_after": none,
                "fidelity": {"cosine": None, "max_rel_error": None}}
    original = tmp / "normalized.onnx"
    g.light().save(original)
    sess = metrics.session(original)
    before, ref = metrics.latency_ms(sess, inputs), metrics.run(sess, inputs)
    del sess
    original.unlink()
    if progress is not None:  # each half runs for seconds (a latency budget of 3 s)
        progress(0.5)
    sess = metrics.session(pruned)
    after, out = metrics.latency_ms(sess, inputs), metrics.run(sess, inputs)
    return {**counts, "latency_before": before, "latency_after": after, "fidelity": metrics.fidelity(ref, out)}


def _full(m: LightModel | ModelProto) -> ModelProto:
    return m.full() if isinstance(m, LightModel) else m


def _save(m: LightModel | ModelProto, path: Path) -> None:
    if isinstance(m, LightModel):
        m.save(path)
    elif m.ByteSize() > 1_800_000_000:
        onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(m, str(path))


def _report(g: graph_mod.Graph, an: Analysis, removed: np.ndarray, scores: dict[int, np.ndarray],
            spec: PruneSpec, figures: dict[str, Any], verify_rep: dict[str, Any],
            timings: dict[str, float]) -> dict[str, Any]:
    cands = {grp.id for grp in candidates(an, spec.ignore)}
    groups = []
    for grp in an.groups:
        kept = int(grp.size - removed[grp.channels].sum())
        groups.append({"id": grp.id, "name": grp.name, "kept": kept, "total": grp.size,
                       "prunable": grp.prunable, "candidate": grp.id in cands, "exact": grp.exact,
                       "reasons": grp.reasons,
                       "kept_channels": np.nonzero(~removed[grp.channels])[0].tolist() if kept < grp.size else None})
    def ratio(a: float, b: float) -> float:
        return round(1 - b / a, 6) if a else 0.0

    return {
        "version": 1,
        "spec": spec.model_dump(mode="json"),
        "inputs": _io(g, g.inputs), "outputs": _io(g, g.outputs),
        "params": {"before": figures["params_before"], "after": figures["params_after"],
                   "removed_fraction": ratio(figures["params_before"], figures["params_after"])},
        "macs": {"before": figures["macs_before"], "after": figures["macs_after"],
                 "removed_fraction": ratio(figures["macs_before"], figures["macs_after"])},
        "latency_ms": {"before": figures["latency_before"]["median_ms"],
                       "after": figures["latency_after"]["median_ms"],
                       "threads": figures["latency_after"]["threads"], "runs": figures["latency_after"]["runs"]},
        "fidelity": figures["fidelity"],
        "channels": {"total": int(an.n_channels), "removed": int(removed.sum())},
        "groups_summary": {"total": len(an.groups), "prunable": sum(gr.prunable for gr in an.groups),
                           "pruned": sum(1 for gr in groups if gr["kept"] < gr["total"]),
                           "unprunable": [{"name": gr.name, "size": gr.size, "reasons": gr.reasons}
                                          for gr in an.groups if not gr.prunable]},
        "groups": groups,
        "verify": verify_rep,
        "timings_s": timings,
    }
