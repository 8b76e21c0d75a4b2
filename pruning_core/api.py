"""The one entry point: ``prune(model, spec, out_dir, progress=...) -> PruneResult``.

load -> analyze -> score -> select -> surgery -> verify -> measure -> save. Progress goes to
``progress(stage, fraction, message)``; a callback that raises ``Cancelled`` stops the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, helper

from pruning_core import surgery
from pruning_core.analysis.groups import Analysis
from pruning_core.analysis.groups import analyze as analyze_graph
from pruning_core.errors import Cancelled, InternalError, PruneError, SpecError, describe
from pruning_core.frontends import open_model
from pruning_core.importance import CRITERIA, ScoreContext, score
from pruning_core.ir import check
from pruning_core.ir import graph as graph_mod
from pruning_core.ir.signature import restore as restore_signature
from pruning_core.ir.weights import LightModel, small_pages
from pruning_core.latency_target import meet_latency
from pruning_core.runtime import data as data_mod
from pruning_core.runtime import fidelity as fidelity_mod
from pruning_core.runtime import latency, metrics
from pruning_core.selection import SelectOptions, candidates, select, unmatched_ignores
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
    with tempfile.TemporaryDirectory(prefix="spa-") as tmp, small_pages(), _sentences(lambda: "analysing the model"):
        src = open_model(model, Path(tmp))
        g = graph_mod.load(src.path, input_shapes)
        an = analyze_graph(g, attention_heads, approximate)
    return {"kind": src.kind, "params": metrics.count_params(g), "macs": metrics.count_macs(g),
            "inputs": _io(g, g.inputs), "outputs": _io(g, g.outputs), "opset": g.opset,
            "nodes": len(g.model.graph.node), **an.summary(),
            "groups": [grp.to_dict() for grp in an.groups]}


def prune(model: str | os.PathLike[str], spec: PruneSpec | dict[str, Any], out_dir: str | os.PathLike[str],
          *, data: str | os.PathLike[str] | None = None, eval_data: str | os.PathLike[str] | None = None,
          progress: Progress | None = None) -> PruneResult:
    """``data``: calibration .npz (a split of it is held out for fidelity, ``calibration.eval_fraction``);
    ``eval_data``: a separate evaluation .npz instead of the split (``runtime.fidelity``)."""
    spec = spec if isinstance(spec, PruneSpec) else PruneSpec.model_validate(spec)
    last = ["load"]

    def seen(name: str, frac: float, msg: str | None) -> None:
        last[0] = name
        if progress is not None:
            progress(name, frac, msg)

    with tempfile.TemporaryDirectory(prefix="spa-") as tmp, small_pages(), \
            _sentences(lambda: f"the {last[0]} stage"):
        return _prune(model, spec, Path(out_dir), Path(tmp), data, seen, eval_data)


@contextlib.contextmanager
def _sentences(doing: Callable[[], str]) -> Iterator[None]:
    """Every failure leaves as a ``PruneError`` sentence that names the stage: a bug or a runtime's
    refusal deep inside must not reach the user as an exception name. Cancellation, memory and
    OS errors (a full disk) pass through: the service classifies them."""
    try:
        yield
    except (PruneError, Cancelled, MemoryError, OSError):
        raise
    except Exception as e:
        raise InternalError(f"internal error in {doing()}: {describe(e)}") from e


def _prune(model: str | os.PathLike[str], spec: PruneSpec, out: Path, tmp: Path,
           data: str | os.PathLike[str] | None, progress: Progress | None,
           eval_data: str | os.PathLike[str] | None = None) -> PruneResult:
    timings: dict[str, float] = {}
    started: dict[str, float] = {}

    def stage(name: str, frac: float = 0.0, msg: str | None = None) -> None:
        started.setdefault(name, time.perf_counter())  # a stage's clock starts at its first report
        if progress is not None:
            progress(name, frac, msg)

    def done(name: str) -> None:
        timings[name] = round(time.perf_counter() - started.get(name, time.perf_counter()), 4)

    stage("load", 0.0, f"loading {Path(model).name}")
    if spec.device == "cuda":
        _require_cuda()
    src = open_model(model, tmp)
    g = graph_mod.load(src.path, spec.input_shapes, spec.runtime.batch)
    check.refuse_quantized(g.model)
    done("load")

    stage("analyze", 0.0, f"{len(g.model.graph.node)} nodes")
    an = analyze_graph(g, spec.attention_heads, spec.approximate)
    # what the user asked for that has no effect: said in the events, the report and the CLI
    warnings = [f"ignore pattern {pat!r} matches no tensor of the model's channel groups, so it pins nothing"
                for pat in unmatched_ignores(an, spec.ignore)]
    for w in warnings:
        stage("analyze", 1.0, f"warning: {w}")
    done("analyze")

    # the criterion and recovery see calib only; fidelity is measured on the held-out split
    calib, class_labels, evaluation = fidelity_mod.prepare(g, spec, data, eval_data)
    stage("score", 0.0, f"criterion {spec.criterion}")
    ctx = ScoreContext(an, spec, calib, class_labels, progress=lambda f, m: stage("score", f, m))
    scores = score(ctx)
    done("score")

    stage("select", 0.0, f"target {spec.target.kind}={spec.target.value}")
    rt = latency.RuntimeConfig.from_spec(spec.runtime)
    inputs = data_mod.synthetic_inputs(g, seed=spec.seed)
    watch, table, latency_info = None, None, None
    if spec.measure or spec.target.kind == "latency":
        rt.providers()  # a provider this worker lacks fails here, before any work is lost
        watch = latency.Stopwatch(g, tmp / "normalized.onnx", rt, inputs)
        table = latency.LatencyTable(an, rt, latency.cache_dir_from_env(), whole_ms=watch.alone()["median_ms"],
                                     progress=lambda f, m: stage("select", 0.5 * f, m))
    opts = SelectOptions.from_spec(spec, latency.auto_step(rt), table)
    if spec.target.kind == "latency":
        assert watch is not None

        def time_pair(r: np.ndarray, longer: bool) -> tuple[float, float]:
            path = tmp / "try.onnx"
            _save(restore_signature(surgery.apply_light(an, r), g), path)  # timed as it will ship
            before, after, _, _ = watch.pair(path, budget_s=8.0 if longer else 3.0)
            path.unlink()
            return before["median_ms"], after["median_ms"]

        removed, latency_info = meet_latency(an, scores, opts, time_pair,
                                             progress=lambda f, m: stage("select", 0.5 + 0.5 * f, m))
    else:
        removed = select(an, scores, opts)
    done("select")

    stage("surgery", 0.0, f"removing {int(removed.sum())} channels")
    pruned: LightModel | ModelProto = surgery.apply_light(an, removed, progress=lambda f: stage("surgery", f))
    done("surgery")

    crit = CRITERIA[spec.criterion]
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
        if spec.measure:  # fidelity of the pruned model before recovery, on the same samples
            evaluation.measure_unrecovered(pruned)
        pruned = recover(g.full_model(), _full(pruned), spec, calib, class_labels,
                         progress=lambda f, m: stage("recover", f, m), trainable=g.original_inits)
        done("recover")

    stage("save", 0.0, None)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "pruned.onnx"
    _save(restore_signature(pruned, g), onnx_path)  # the original's inputs / outputs (dynamic dims)
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
    figures = _measure(an, removed, onnx_path, watch, table, lambda f: stage("measure", f), evaluation)
    if watch is not None:
        _refuse_slower(spec, figures, lambda: watch.pair(onnx_path, budget_s=6.0)[:2])
        watch.close()
    figures["latency_target"] = latency_info
    figures["runtime"] = {**rt.describe(), "batch": _batch(inputs), "round_to": spec.round_to,
                          **({"step": opts.round_to} if opts.auto else {})}
    done("measure")

    artifacts = {"pruned.onnx": onnx_path}
    if src.artifacts is not None:
        artifacts.update(src.artifacts(an, removed, _full(pruned), out, spec))
    report = _report(g, an, removed, scores, spec, figures, verify_rep, timings)
    report["source"] = {"kind": src.kind, "name": Path(src.original).name}
    report["warnings"] = warnings
    if ctx.cache.get("stats"):  # e.g. OBSPA: the largest Hessian built
        report["criterion_stats"] = ctx.cache["stats"]
    rep_path = out / "report.json"
    rep_path.write_text(json.dumps(report, indent=1))
    stage("save", 1.0, "done")
    summary = {k: figures[k] for k in ("params_before", "params_after", "macs_before", "macs_after")}
    summary["latency_ms_before"] = figures["latency_before"]["median_ms"]
    summary["latency_ms_after"] = figures["latency_after"]["median_ms"]
    summary["speedup"] = report["latency_ms"]["speedup"]
    summary["efficiency"] = report["latency_ms"]["efficiency"]
    summary["verify_max_error"] = verify_rep.get("max_error")
    summary["channels_removed"] = int(removed.sum())
    if warnings:
        summary["warnings"] = warnings
    artifacts["report.json"] = rep_path
    from pruning_core.ir import provenance  # spa.* metadata_props: version, spec, source hash, figures

    provenance.stamp(onnx_path, provenance.props(spec, src.original, summary))
    return PruneResult(artifacts, report, summary)


def _require_cuda() -> None:
    """``device: cuda`` where torch sees no GPU is the user's error, said before any work (it
    used to run on the CPU without a word)."""
    try:
        import torch

        ok = torch.cuda.is_available()
    except ImportError:
        ok = False
    if not ok:
        raise SpecError("device 'cuda' was asked for, but this machine has no CUDA GPU that torch can use; "
                        "use device 'cpu', or run the job where a GPU worker listens")


def _exact_only(an: Analysis, removed: np.ndarray) -> np.ndarray:
    exact = removed.copy()
    for grp in an.groups:
        if not grp.exact:
            exact[grp.channels] = False
    return exact


def _measure(an: Analysis, removed: np.ndarray, pruned: Path, watch: latency.Stopwatch | None,
             table: latency.LatencyTable | None,
             progress: Callable[[float], None] | None = None,
             evaluation: fidelity_mod.Evaluation | None = None) -> dict[str, Any]:
    """Figures of the normalized original (constants folded like the result, so the ratio shows
    what pruning did) vs the pruned file, timed in turn on the job's runtime; per-layer latency
    from the latency table."""
    counts = {"params_before": an.params(), "params_after": an.params(removed),
              "macs_before": an.macs(), "macs_after": an.macs(removed)}
    if watch is None or table is None:
        none = {"median_ms": None, "runs": 0}
        return {**counts, "latency_before": none, "latency_after": none, "layers": None,
                "fidelity": fidelity_mod.skipped(), "fidelity_before_recovery": None}
    before, after, ref, out = watch.pair(pruned)
    if progress is not None:
        progress(0.7)
    return {**counts, "latency_before": before, "latency_after": after, "layers": table.layers(removed),
            "fidelity": evaluation.measure(pruned) if evaluation is not None else fidelity_mod.skipped(),
            "fidelity_before_recovery": evaluation.before_recovery if evaluation is not None else None}


def _batch(inputs: dict[str, np.ndarray]) -> int | None:
    shapes = [a.shape for a in inputs.values() if a.ndim]
    return int(shapes[0][0]) if shapes else None


class SlowerThanOriginalError(PruneError):
    """The pruned model measures slower than the original: not shipped silently."""

    code = "slower_than_original"


# Below this many milliseconds of difference a run's fixed cost (onnxruntime's per-call overhead,
# thread wake-ups) decides, not the model: a 0.02 ms model can time 30 % apart for no reason of its own.
SLOWER_FLOOR_MS = 0.02


def _slower(before: dict[str, Any], after: dict[str, Any], margin: float = 0.1) -> bool:
    return (after["median_ms"] > before["median_ms"] * (1 + margin) and after["p25_ms"] > before["p75_ms"]
            and after["median_ms"] - before["median_ms"] > SLOWER_FLOOR_MS)


def _refuse_slower(spec: PruneSpec, figures: dict[str, Any],
                   retime: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Fail when the result is clearly slower than the original: more than 10 % and 0.02 ms by the
    median, quartiles apart, and again when timed a second time for longer. Not for a params-only
    target, where speed is not the point."""
    if spec.target.kind == "params" or figures["latency_before"].get("median_ms") is None:
        return
    if not _slower(figures["latency_before"], figures["latency_after"]):
        return
    b, a = retime()
    if not _slower(b, a):
        figures["latency_before"], figures["latency_after"] = b, a
        return
    raise SlowerThanOriginalError(
        f"the pruned model measures slower than the original ({a['median_ms']:.3g} ms vs "
        f"{b['median_ms']:.3g} ms, median of {a['runs']} runs on {spec.runtime.provider} with "
        f"{spec.runtime.threads} threads); prune less, or give a latency target or a coarser round_to "
        f"(e.g. 8 or 16; a small model's target may have needed finer widths)")


def _full(m: LightModel | ModelProto) -> ModelProto:
    return m.full() if isinstance(m, LightModel) else m


def _save(m: LightModel | ModelProto, path: Path) -> None:
    if isinstance(m, LightModel):
        m.save(path)
    elif m.ByteSize() > 1_800_000_000:
        onnx.save(m, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(m, str(path))


def _latency_report(figures: dict[str, Any]) -> dict[str, Any]:
    """Measured latency before/after with quartiles and spread; speed-up, and efficiency: the
    speed-up over the MAC reduction (1.0 = the model got as much faster as it got smaller)."""
    b, a = figures["latency_before"], figures["latency_after"]
    rep: dict[str, Any] = {"before": b["median_ms"], "after": a["median_ms"], "runs": a["runs"],
                           "speedup": None, "efficiency": None}
    if b["median_ms"] is None:
        return rep
    rep["spread"] = {"before": [round(b["p25_ms"], 5), round(b["p75_ms"], 5)],
                     "after": [round(a["p25_ms"], 5), round(a["p75_ms"], 5)]}
    speedup = b["median_ms"] / a["median_ms"] if a["median_ms"] > 0 else None
    mac_ratio = figures["macs_before"] / figures["macs_after"] if figures["macs_after"] else None
    rep["speedup"] = round(speedup, 4) if speedup else None
    rep["efficiency"] = round(speedup / mac_ratio, 4) if speedup and mac_ratio else None
    # layers whose narrower shape measured slower than their original one (kernels that dislike
    # a width): shown, so a user can pin them with `ignore` or choose another round_to
    rep["slower_layers"] = [r["node"] for r in figures.get("layers") or []
                            if r["macs_after"] < r["macs_before"] and r["latency_ms_after"] > 1.1 * r["latency_ms_before"]]
    return rep


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
        "latency_ms": _latency_report(figures),
        "runtime": figures["runtime"],
        "latency_target": figures["latency_target"],
        "layers": figures["layers"],
        "fidelity": figures["fidelity"],
        "fidelity_before_recovery": figures.get("fidelity_before_recovery"),
        "channels": {"total": int(an.n_channels), "removed": int(removed.sum())},
        "groups_summary": {"total": len(an.groups), "prunable": sum(gr.prunable for gr in an.groups),
                           "pruned": sum(1 for gr in groups if gr["kept"] < gr["total"]),
                           "unprunable": [{"name": gr.name, "size": gr.size, "reasons": gr.reasons}
                                          for gr in an.groups if not gr.prunable]},
        "groups": groups,
        "verify": verify_rep,
        "timings_s": timings,
    }
