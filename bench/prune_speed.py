"""Pruning speed and peak memory: pruning_core beside Torch-Pruning, on ResNet-50, ViT-B/16 and BERT-base.

Run by hand, not in CI:

    python -m bench.prune_speed [--models resnet50 vit_b16 bert_base] [--ratio 0.3] [--exporter dynamo] [--repeat 5]

Models are transformers configs at their defaults (ResNetConfig = ResNet-50 layout, ViTConfig = ViT-B/16 at
224x224, BertConfig = BERT-base, 128 tokens) with random, seeded weights; nothing is downloaded.

Each measurement runs in its own subprocess, so peak memory is that tool's alone:
- ours: the model is exported to ONNX first (a separate subprocess, timed, cached under --work); then
  pruning_core.api.prune(path, {channels: RATIO, l1, global}) = load, analyze, score, select, surgery,
  verify, save, check, measure ("full"). "core" is a second run, in its own process, with
  ``verify: false, measure: false``: load -> analyze -> prune -> save (+ the graph check, ms), what
  Torch-Pruning does (its forward check is not timed either). Both are timed and measured directly;
  core and Torch-Pruning run --repeat times, alternating, each in a fresh process: the median run
  is shown (all times are in the JSON), and the largest peak.
- tp: Torch-Pruning on the same torch model: DependencyGraph + MetaPruner with L1 group magnitude,
  global, the same channel ratio, classifier ignored, attention head dims pruned (num_heads given),
  then torch.save of the pruned model; a forward pass checks the result (not timed).

Peak memory: the rise of the process's peak RSS (ru_maxrss) over its RSS just before the timed part,
(tracemalloc is not used: it slows numpy-heavy code several times and does not see torch tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50", "vit_b16", "bert_base")
SEQ = 128


def build(name: str) -> tuple[Any, dict[str, Any]]:
    """(wrapped eval model returning logits, example inputs by name); seeded random weights."""
    import torch
    import transformers as tf

    from tests.zoo.registry import OutputSelect

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "resnet50":
        model = tf.ResNetForImageClassification(tf.ResNetConfig())
        inputs = {"pixel_values": torch.randn(1, 3, 224, 224, generator=g)}
    elif name == "vit_b16":
        model = tf.ViTForImageClassification._from_config(tf.ViTConfig(), attn_implementation="eager")
        inputs = {"pixel_values": torch.randn(1, 3, 224, 224, generator=g)}
    elif name == "bert_base":
        model = tf.BertForSequenceClassification._from_config(tf.BertConfig(), attn_implementation="eager")
        inputs = {"input_ids": torch.randint(3, 30000, (1, SEQ), generator=g)}
    else:
        raise ValueError(f"unknown model {name!r}; known: {MODELS}")
    return OutputSelect(model.eval(), list(inputs), ["logits"]).eval(), inputs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measured(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Wall time and peak-RSS rise of ``fn``. No tracemalloc here: it traces every numpy
    allocation (ours) but no torch allocation (Torch-Pruning's), which skewed the times 3-5x
    against numpy-heavy code."""
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    extra = fn()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_rise": max(0, _maxrss_bytes() - rss0), **extra}


# ------------------------------------------------------------------------------------ workers


def worker_export(name: str, out: Path, exporter: str) -> dict[str, Any]:
    import torch

    model, inputs = build(name)
    params = sum(p.numel() for p in model.parameters())
    if not out.exists():
        t0 = time.perf_counter()
        tmp = out.with_suffix(".tmp.onnx")
        kw: dict[str, Any] = {"input_names": list(inputs), "output_names": ["logits"], "opset_version": 18}
        if exporter == "dynamo":
            kw |= {"dynamo": True, "external_data": False}
        else:
            kw |= {"dynamo": False, "do_constant_folding": True}
        torch.onnx.export(model, tuple(inputs.values()), str(tmp), **kw)
        os.replace(tmp, out)
        seconds: float | None = time.perf_counter() - t0
    else:
        seconds = None  # cached
    return {"export_seconds": seconds, "params": params, "onnx_bytes": out.stat().st_size}


def worker_ours(path: Path, ratio: float, mode: str) -> dict[str, Any]:
    from pruning_core.api import prune

    spec: dict[str, Any] = {"target": {"channels": ratio}, "criterion": "l1", "scope": "global"}
    if mode == "core":
        spec |= {"verify": False, "measure": False}
    with tempfile.TemporaryDirectory() as out:

        def run() -> dict[str, Any]:
            r = prune(path, spec, out)
            rep = r.report
            return {
                "stages": rep.get("timings_s", {}),
                "macs": [rep["macs"]["before"], rep["macs"]["after"]],
                "params_after_before": [rep["params"]["before"], rep["params"]["after"]],
                "verify_max_error": rep["verify"].get("max_error"),
            }

        return measured(run)


QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def _attention_modules(model: Any) -> list[tuple[Any, tuple[Any, Any, Any]]]:
    """HF self-attention modules (BERT: query/key/value; ViT in transformers 5: q_proj/k_proj/v_proj)."""
    import torch

    found = []
    for m in model.modules():
        for names in QKV_NAMES:
            projs = tuple(getattr(m, a, None) for a in names)
            if all(isinstance(p, torch.nn.Linear) for p in projs) and hasattr(m, "num_attention_heads"):
                found.append((m, projs))
    return found


def _fix_head_sizes(attn: list[tuple[Any, tuple[Any, Any, Any]]]) -> None:
    """What the Torch-Pruning examples do for HF attention after pruning head dims."""
    for m, (q, _, _) in attn:
        size = q.out_features // m.num_attention_heads
        for a in ("attention_head_size", "head_dim"):
            if hasattr(m, a):
                setattr(m, a, size)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features


def worker_tp(name: str, ratio: float) -> dict[str, Any]:
    import torch
    import torch_pruning as tp

    model, inputs = build(name)
    example = tuple(inputs.values())
    params_before = sum(p.numel() for p in model.parameters())
    classifier = [
        m for n, m in model.named_modules() if n.endswith("classifier") or n.endswith("classifier.1")
    ]
    ignored = [m for m in classifier if isinstance(m, torch.nn.Linear)]
    attn = _attention_modules(model)
    num_heads = {p: m.num_attention_heads for m, projs in attn for p in projs}

    timings: dict[str, float] = {}

    def run() -> dict[str, Any]:
        t = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            num_heads=num_heads,
            prune_head_dims=True,
            prune_num_heads=False,
        )
        timings["graph"] = time.perf_counter() - t
        t = time.perf_counter()
        pruner.step()
        _fix_head_sizes(attn)
        timings["prune"] = time.perf_counter() - t
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            torch.save(model, Path(out) / "pruned.pt")
        timings["save"] = time.perf_counter() - t
        return {}

    res = measured(run)
    res["stages"] = {k: round(v, 4) for k, v in timings.items()}
    res["params_before_after"] = [params_before, sum(p.numel() for p in model.parameters())]
    try:
        with torch.no_grad():
            out = model(*example)
        res["forward_ok"] = tuple(out.shape) == (1, model.model.config.num_labels)
    except Exception as exc:  # the pruned model may not run: say so in the table
        res["forward_ok"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return res


# ------------------------------------------------------------------------------------ driver


def _spawn(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.prune_speed", "--worker", *args]
    p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {p.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (an error if any run failed); peak memory is the largest seen."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    ordered = sorted(runs, key=lambda r: r["seconds"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    out["peak_rss_rise"] = max(r["peak_rss_rise"] for r in runs)
    return out


def _markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import onnx

    try:
        tp_version = version("torch-pruning")
    except PackageNotFoundError:
        tp_version = "not installed"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Pruning speed and memory: pruning_core vs Torch-Pruning",
        "",
        f"Written by `python -m bench.prune_speed --markdown docs/speed.md` (see its docstring). Remove "
        f"{args.ratio:.0%} of channels, l1, global; ONNX from the `{args.exporter}` exporter; transformers configs at "
        "their defaults with random weights (ResNet-50, ViT-B/16 at 224x224, BERT-base at 128 tokens).",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, onnx {onnx.__version__}, Torch-Pruning {tp_version}; load average "
        f"after the run {load}. Each run is a fresh process; core and Torch-Pruning ran {args.repeat} times each, "
        "alternating: the median time and the largest peak are shown.",
        "",
        "- **core**: `prune(path, spec | {verify: false, measure: false})`: read the file, analyze, score, "
        "select, cut, write the file (+ the graph check). Torch-Pruning: `DependencyGraph` + `MetaPruner.step()` "
        "on the model already in memory, then `torch.save`.",
        "- **full**: the default run, which also verifies the result against the masked original on "
        "onnxruntime and measures params, MACs and the latency of both models.",
        "- **peak**: rise of the process's peak RSS over its RSS before the call; **size**: 4 bytes x parameters.",
        "",
        "| model | size MiB | core s | Torch-Pruning s | core / TP | core peak / size | TP peak / size "
        "| full s | full peak / size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        size = 4 * r["export"].get("params", 0)
        core, tpr, full = r.get("core", {}), r.get("tp", {}), r.get("full", {})
        lines.append(
            f"| {name} | {size / 2**20:.0f} | {core.get('seconds', 0):.2f} | {tpr.get('seconds', 0):.2f} | "
            f"{_ratio(core.get('seconds'), tpr.get('seconds')).strip()} | "
            f"{_ratio(core.get('peak_rss_rise'), size).strip()} | {_ratio(tpr.get('peak_rss_rise'), size).strip()} | "
            f"{full.get('seconds', 0):.2f} | {_ratio(full.get('peak_rss_rise'), size).strip()} |")
    lines += ["", "Stages of the median core run (s) and of Torch-Pruning's:", ""]
    for name, r in results.items():
        st = r.get("core", {}).get("stages", {})
        tps = r.get("tp", {}).get("stages", {})
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in st.items() if k not in ("measure",))
                     + "; Torch-Pruning: " + ", ".join(f"{k} {v:.3f}" for k, v in tps.items()))
    return "\n".join(lines) + "\n"


def _mb(x: float) -> str:
    return f"{x / 2**20:8.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}" if a and b else "     -"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prune_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--ratio", type=float, default=0.3, help="channel fraction to remove (both tools)")
    ap.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / ".zoo_cache" / "bench", help="ONNX export cache")
    ap.add_argument("--skip", choices=("ours", "tp"), action="append", default=[])
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--repeat", type=int, default=5, help="core and Torch-Pruning runs per model (median)")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown (docs/speed.md)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "export":
            res = worker_export(rest[0], Path(rest[1]), rest[2])
        elif kind == "ours":
            res = worker_ours(Path(rest[0]), float(rest[1]), rest[2])
        else:
            res = worker_tp(rest[0], float(rest[1]))
        print(json.dumps(res))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in args.models:
        path = args.work / f"{name}.{args.exporter}.onnx"
        r: dict[str, Any] = {"export": _spawn(["export", name, str(path), args.exporter], args.timeout)}
        print(f"{name}: export {r['export']}", flush=True)
        if "ours" not in args.skip and "error" not in r["export"]:
            r["full"] = _spawn(["ours", str(path), str(args.ratio), "full"], args.timeout)
            print(f"{name}: ours (full) {r['full']}", flush=True)
        # core and Torch-Pruning alternate, each run a fresh process; the median run counts
        runs: dict[str, list[dict[str, Any]]] = {"core": [], "tp": []}
        for _ in range(args.repeat):
            if "ours" not in args.skip and "error" not in r["export"]:
                runs["core"].append(_spawn(["ours", str(path), str(args.ratio), "core"], args.timeout))
                print(f"{name}: ours (core) {runs['core'][-1]}", flush=True)
            if "tp" not in args.skip:
                runs["tp"].append(_spawn(["tp", name, str(args.ratio)], args.timeout))
                print(f"{name}: tp {runs['tp'][-1]}", flush=True)
        for tool, rs in runs.items():
            if rs:
                r[tool] = _median_run(rs)
        results[name] = r

    print()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"channels {args.ratio}, l1, global; exporter {args.exporter}; times in s (wall), memory in MiB")
    print(f"{os.cpu_count()} CPUs, load average {load} (timings are only comparable on an idle machine)")
    head = (
        f"{'model':10s} {'size':>6s} {'export':>7s} {'full':>7s} {'core':>7s} {'TP':>7s} {'core/TP':>7s} "
        f"{'fullMem':>8s} {'coreMem':>8s} {'TPmem':>8s} {'full/size':>9s} {'core/size':>9s} TP ok"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        ex, full, core, tpr = r["export"], r.get("full", {}), r.get("core", {}), r.get("tp", {})
        size = 4 * ex.get("params", 0)
        f_s, c_s, t_s = full.get("seconds"), core.get("seconds"), tpr.get("seconds")
        f_m, c_m, t_m = full.get("peak_rss_rise"), core.get("peak_rss_rise"), tpr.get("peak_rss_rise")
        exp_s = ex.get("export_seconds")
        print(
            f"{name:10s} {_mb(size)[-6:]} {exp_s if exp_s is None else round(exp_s, 1)!s:>7s} "
            f"{f_s or 0:7.2f} {c_s or 0:7.2f} {t_s or 0:7.2f} {_ratio(c_s, t_s):>7s} "
            f"{_mb(f_m or 0)} {_mb(c_m or 0)} {_mb(t_m or 0)} {_ratio(f_m, size):>9s} {_ratio(c_m, size):>9s} "
            f"{tpr.get('forward_ok')}"
        )
        for tool in ("full", "core", "tp"):
            if "error" in r.get(tool, {}):
                print(f"  {tool} failed: {r[tool]['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(_markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
