"""Runtime speed of pruned models: how much faster they run on onnxruntime than the original, next to
Torch-Pruning at the same MACs. ``docs/speed.md`` (``bench.prune_speed``) is the time pruning takes;
this is the speed of what comes out.

Run by hand on a quiet machine, not in CI:

    python -m bench.runtime_speed [--models resnet50 mobilenet_v2 vit_b16 bert_base yolov8]
        [--batches 1 8] [--threads 1 2] [--budget S] [--work DIR] [--out docs/runtime_speed.md] [--reuse]

Models (``bench.models_speed``): ResNet-50, MobileNetV2, ViT-B/16, BERT-base (128 tokens) from
transformers configs at their defaults, and a hand-written YOLOv8s-style detector at 640x640; random
seeded weights, nothing downloaded. Each is exported once (TorchScript exporter, opset 17, a dynamic
batch axis) and cached under ``--work``. Then, each in a fresh subprocess:

- **ours −MACs**: ``pruning_core.api.prune(source, {"target": {"flops": F}})``, the default spec
  otherwise (l1, global, ``round_to: "auto"``, runtime cpu / 2 threads).
- **ours latency**: ``{"target": {"latency": L}, "runtime": {"provider": "cpu", "threads": 2, "batch": 1}}``.
- **Torch-Pruning**: ``MetaPruner`` with L1 group magnitude, global, max ratio 0.9 (ours' default
  ``max_group_ratio``), classifier / detector output convs ignored, attention head dims pruned (as in
  ``bench.prune_speed``), stepped 1 % of the channels at a time until its own MAC count
  (``tp.utils.count_ops_and_params``) is at most (1 − F) of the original's; then exported exactly like
  the source (TorchScript, opset 17, dynamic batch). For the detector it prunes the equivalent model
  whose C2f blocks use two convolutions instead of a split, as Torch-Pruning's YOLOv8 example does.

Pruned models are cached by their configuration; ``--reuse`` keeps them (only the timing runs again).

Timing (one subprocess per model): onnxruntime sessions with ``intra_op_num_threads`` = 1 or 2,
``inter_op_num_threads`` = 1, all graph optimizations; per (batch, threads) the original and the
pruned models are timed in turn, one slice of each per round (the order rotating), after warm-up runs,
for ``--budget`` seconds (default 8 s at batch 1, 20 s at larger batches) and at least 5 timed runs each;
a slice is 2 untimed runs and 3 timed ones, or one timed run where a run takes over 50 ms (a model
served repeatedly runs warm; one run at a time after another model's starts partly cold, which
penalizes small models: see ``pruning_core.runtime.latency.time_in_turn``). The median per model counts. MACs of every file are counted the same way (pruning_core's counter on the
ONNX graph, batch 1), so **MAC ratio** = original MACs / pruned MACs, **speed-up** = original median /
pruned median, **efficiency** = speed-up / MAC ratio. With an onnxruntime that has the
CUDAExecutionProvider (``--cuda``, on by default where it exists) the same models are also timed on
CUDA, and a latency-target model is pruned for ``{"provider": "cuda", "batch": 1}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# each model's turn is pruning_core.runtime.latency.timed_slice (the comment there says why)
from pruning_core.runtime.latency import BLOCK, SETTLE, SLICE_MS

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50", "mobilenet_v2", "vit_b16", "bert_base", "yolov8")
CNNS = ("resnet50", "mobilenet_v2", "yolov8")
EFFICIENCY_GOAL = {"cnn": 0.95, "transformer": 0.9}
LATENCY_TOLERANCE = 0.05       # of the target latency, as pruning_core.latency_target
LATENCY_RUNTIME = {"provider": "cpu", "threads": 2, "batch": 1}
TP_STEPS, TP_MAX_RATIO = 90, 0.9   # 1 % of the channels per step, up to 90 %
VARIANTS = ("ours_flops", "ours_latency", "tp")
CUDA_VARIANT = "ours_latency_cuda"


def _kind(name: str) -> str:
    return "cnn" if name in CNNS else "transformer"


# ------------------------------------------------------------------------------------ workers


def _macs(path: Path) -> int:
    """MACs of an ONNX file at batch 1, by pruning_core's counter (the same yardstick for every file)."""
    from pruning_core.ir import graph as graph_mod
    from pruning_core.runtime import metrics

    return metrics.count_macs(graph_mod.load(path))


def _batch_axis(path: Path) -> list[str]:
    """The first dim of each input and output: a name when dynamic, a number when fixed."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return [(v.type.tensor_type.shape.dim[0].dim_param or str(v.type.tensor_type.shape.dim[0].dim_value))
            for v in (*m.graph.input, *m.graph.output) if v.type.tensor_type.shape.dim]


def worker_export(name: str, out: Path) -> dict[str, Any]:
    from bench.models_speed import build, export

    model, inputs, outs = build(name)
    t0 = time.perf_counter()
    tmp = out.with_suffix(".tmp.onnx")
    export(model, inputs, outs, str(tmp))
    os.replace(tmp, out)
    return {"export_seconds": round(time.perf_counter() - t0, 2),
            "params": sum(p.numel() for p in model.parameters()), "macs": _macs(out)}


def worker_ours(source: Path, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from pruning_core.api import prune

    t0 = time.perf_counter()
    r = prune(source, spec, out)
    rep = r.report
    return {"seconds": round(time.perf_counter() - t0, 2), "macs": _macs(out / "pruned.onnx"),
            "report": {k: rep.get(k) for k in ("macs", "params", "latency_ms", "runtime", "latency_target",
                                                "timings_s")},
            "verify_max_error": rep.get("verify", {}).get("max_error"),
            "batch_axis": _batch_axis(out / "pruned.onnx")}


def worker_tp(name: str, fraction: float, out: Path, round_to: int | None) -> dict[str, Any]:
    import torch
    import torch_pruning as tp

    from bench.models_speed import attention_modules, export, fix_head_sizes, tp_model

    model, inputs, outs, kw = tp_model(name)
    example = tuple(inputs.values())
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    goal = (1 - fraction) * macs0
    attn = attention_modules(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=TP_MAX_RATIO, max_pruning_ratio=TP_MAX_RATIO, iterative_steps=TP_STEPS,
        round_to=round_to, **kw)
    macs = macs0
    steps = 0
    for steps in range(1, TP_STEPS + 1):   # noqa: B007 (the last step is reported)
        pruner.step()
        fix_head_sizes(attn)
        macs, params = tp.utils.count_ops_and_params(model, example)
        if macs <= goal:
            break
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        model(*example)  # a pruned model that does not run fails here, before the export
    tmp = out.with_suffix(".tmp.onnx")
    export(model, inputs, outs, str(tmp))
    os.replace(tmp, out)
    return {"seconds": round(seconds, 2), "steps": steps, "tp_macs": [int(macs0), int(macs)],
            "tp_params": [int(params0), int(params)], "macs": _macs(out), "batch_axis": _batch_axis(out)}


def _feeds(sess: Any, batch: int) -> dict[str, Any]:
    """Inputs at ``batch``: Gaussian images, token ids in BERT's vocabulary (seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch, *(d if isinstance(d, int) else 1 for d in i.shape[1:])]
        if "int" in i.type:
            feeds[i.name] = rng.integers(3, 30000, shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _session(path: str, provider: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # models are timed in turn: a pool thread left spinning after one model's run would steal a
    # core from the next model's run (as in pruning_core.runtime.latency.session)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(path, opts, providers=providers)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def worker_time(plan_file: Path) -> dict[str, Any]:
    """Time the original and its pruned models in turn at every config of the plan:
    ``{"files": {label: path}, "configs": [{provider, batch, threads, budget, variants}], warmup, min_rounds}``."""
    import numpy as np

    from pruning_core.runtime.latency import timed_slice

    plan = json.loads(plan_file.read_text())
    rows = []
    sessions: dict[tuple[str, int], dict[str, Any]] = {}
    for cfg in plan["configs"]:
        key = (cfg["provider"], cfg["threads"])
        if key not in sessions:
            sessions.clear()  # one runtime's sessions at a time
            made: dict[str, Any] = {}
            for label, path in plan["files"].items():
                try:
                    made[label] = _session(path, *key)
                except Exception as exc:
                    made[label] = exc
            sessions[key] = made
        made = sessions[key]
        labels = ["orig", *[v for v in cfg["variants"] if v in plan["files"]]]
        row: dict[str, Any] = {**{k: cfg[k] for k in ("provider", "batch", "threads", "budget")},
                               "errors": {}, "stats": {}}
        live, feeds = [], []
        for label in labels:
            s = made.get(label)
            if isinstance(s, Exception):
                row["errors"][label] = f"session: {_short(s)}"
                continue
            x = _feeds(s, cfg["batch"])
            try:
                out = s.run(None, x)
                if any(o.shape[0] != cfg["batch"] for o in out if getattr(o, "ndim", 0)):
                    raise ValueError(f"output batch {[o.shape for o in out]} for an input batch of {cfg['batch']}")
            except Exception as exc:  # e.g. a pruned model whose batch axis got fixed
                row["errors"][label] = f"batch {cfg['batch']}: {_short(exc)}"
                continue
            live.append(label)
            feeds.append((s, x))
        slow = []
        for s, x in feeds:
            t0 = time.perf_counter()
            for _ in range(plan["warmup"]):
                s.run(None, x)
            slow.append((time.perf_counter() - t0) * 1e3 / plan["warmup"] > SLICE_MS)
        times: list[list[float]] = [[] for _ in live]
        t_start, rounds = time.perf_counter(), 0
        while live and (min(map(len, times)) < plan["min_rounds"] or time.perf_counter() - t_start < cfg["budget"]):
            for j in range(len(live)):
                i = (j + rounds) % len(live)   # rotate who goes first
                times[i] += timed_slice(*feeds[i], slow[i])   # a warm slice, as served
            rounds += 1
        row["rounds"] = rounds
        row["seconds"] = round(time.perf_counter() - t_start, 2)
        for label, t in zip(live, times, strict=True):
            q25, q50, q75 = (float(v) for v in np.percentile(t, [25, 50, 75]))
            row["stats"][label] = {"median_ms": float(np.median(t)), "p25_ms": q25, "p75_ms": q75,
                                   "spread": (q75 - q25) / q50 if q50 > 0 else 0.0, "runs": len(t)}
        rows.append(row)
        print(f"  timed {cfg['provider']} batch {cfg['batch']} threads {cfg['threads']}: {rounds} rounds, "
              + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in row["stats"].items())
              + "".join(f"; {k} failed ({v})" for k, v in row["errors"].items()), file=sys.stderr, flush=True)
    return {"rows": rows}


# ------------------------------------------------------------------------------------ driver


def _spawn(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.runtime_speed", "--worker", *args]
    try:
        p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for ln in p.stderr.splitlines():
        if ln.startswith("  timed "):
            print(ln, flush=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and not ln.startswith("  timed ")]
        return {"error": f"exit {p.returncode}: {(err or ['no output'])[-1][:300]}"}
    return json.loads(lines[-1])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "torch-pruning", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _variant_specs(args: argparse.Namespace, cuda: bool) -> dict[str, dict[str, Any]]:
    """What each variant is: a spec for ours, the target and options for Torch-Pruning."""
    specs: dict[str, dict[str, Any]] = {
        "ours_flops": {"tool": "ours", "spec": {"target": {"flops": args.flops}}},
        "ours_latency": {"tool": "ours", "spec": {"target": {"latency": args.latency}, "runtime": LATENCY_RUNTIME}},
        "tp": {"tool": "tp", "fraction": args.flops, "round_to": args.tp_round_to, "steps": TP_STEPS,
               "max_ratio": TP_MAX_RATIO},
    }
    if cuda:
        specs[CUDA_VARIANT] = {"tool": "ours", "spec": {"target": {"latency": args.latency},
                                                        "runtime": {"provider": "cuda", "batch": 1}}}
    return specs


def _prepare(name: str, args: argparse.Namespace, specs: dict[str, dict[str, Any]],
             versions: dict[str, str]) -> dict[str, Any]:
    """Export (cached) and prune (cached by configuration with --reuse) one model."""
    src_key = _digest((REPO_ROOT / "bench" / "models_speed.py").read_text(), versions.get("torch"),
                      versions.get("transformers"))
    mdir = args.work / f"{name}-{src_key}"
    mdir.mkdir(parents=True, exist_ok=True)
    source = mdir / "source.onnx"
    info_file = mdir / "source.json"
    if source.exists() and info_file.exists():
        export = json.loads(info_file.read_text()) | {"cached": True}
    else:
        export = _spawn(["export", name, str(source)], args.timeout)
        if "error" not in export:
            info_file.write_text(json.dumps(export))
    print(f"{name}: export {export}", flush=True)
    r: dict[str, Any] = {"export": export, "source": str(source), "variants": {}}
    if "error" in export:
        return r
    for variant, spec in specs.items():
        if variant in args.skip:
            continue
        vdir = mdir / f"{variant}-{_digest(spec, versions)}"
        result_file = vdir / "result.json"
        cached = json.loads(result_file.read_text()) if args.reuse and result_file.exists() else None
        if cached is not None and "error" not in cached:
            res = cached | {"cached": True}
        else:
            shutil.rmtree(vdir, ignore_errors=True)
            vdir.mkdir(parents=True)
            if spec["tool"] == "ours":
                res = _spawn(["ours", str(source), json.dumps(spec["spec"]), str(vdir)], args.timeout)
                path = vdir / "pruned.onnx"
            else:
                path = vdir / "tp.onnx"
                res = _spawn(["tp", name, str(spec["fraction"]), str(path), str(spec["round_to"] or 0)],
                             args.timeout)
            res["path"] = str(path)
            res["spec"] = spec
            result_file.write_text(json.dumps(res, indent=1))
        r["variants"][variant] = res
        short = {k: v for k, v in res.items() if k in ("error", "seconds", "macs", "steps", "batch_axis", "cached")}
        if "report" in res:
            lt = res["report"].get("latency_target")
            if lt:
                short["latency_target_met"] = lt.get("met")
        print(f"{name}: {variant} {short}", flush=True)
    return r


def _configs(args: argparse.Namespace, cuda: bool, variants: list[str]) -> list[dict[str, Any]]:
    cpu_variants = [v for v in variants if v != CUDA_VARIANT]
    out = []
    for threads in args.threads:
        for batch in args.batches:
            out.append({"provider": "cpu", "batch": batch, "threads": threads, "variants": cpu_variants,
                        "budget": args.budget if args.budget is not None else (8.0 if batch == 1 else 20.0)})
    if cuda:
        gpu_variants = [v if v != "ours_latency" else CUDA_VARIANT for v in cpu_variants]
        for batch in args.batches:
            out.append({"provider": "cuda", "batch": batch, "threads": 1,
                        "variants": [v for v in gpu_variants if v in variants],
                        "budget": args.budget if args.budget is not None else (4.0 if batch == 1 else 8.0)})
    return out


def _time(name: str, r: dict[str, Any], args: argparse.Namespace, cuda: bool) -> None:
    files = {"orig": r["source"]}
    files |= {v: res["path"] for v, res in r["variants"].items() if "error" not in res}
    plan = {"files": files, "configs": _configs(args, cuda, list(files)), "warmup": args.warmup,
            "min_rounds": args.min_rounds}
    plan_file = Path(r["source"]).with_name("timing-plan.json")
    plan_file.write_text(json.dumps(plan, indent=1))
    res = _spawn(["time", str(plan_file)], args.timeout)
    r["timing"] = res.get("rows", [])
    if "error" in res:
        r["timing_error"] = res["error"]
        print(f"{name}: timing failed: {res['error']}", flush=True)


# ------------------------------------------------------------------------------------ figures


def _row_figures(r: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Per variant at one config: median ms, speed-up, MAC ratio, efficiency, latency removed."""
    st = row["stats"]
    macs0 = r["export"].get("macs")
    out: dict[str, Any] = {}
    orig = st.get("orig", {}).get("median_ms")
    for v, res in r["variants"].items():
        s = st.get(v)
        if s is None or not orig or "error" in res:
            continue
        mac_ratio = macs0 / res["macs"] if macs0 and res.get("macs") else None
        speedup = orig / s["median_ms"]
        out[v] = {"ms": s["median_ms"], "speedup": speedup, "mac_ratio": mac_ratio,
                  "efficiency": speedup / mac_ratio if mac_ratio else None,
                  "latency_removed": 1 - s["median_ms"] / orig, "spread": s["spread"]}
    return out


def _is_latency_runtime(row: dict[str, Any]) -> bool:
    if row["provider"] == "cuda":
        return row["batch"] == 1
    return row["threads"] == LATENCY_RUNTIME["threads"] and row["batch"] == LATENCY_RUNTIME["batch"]


def _latency_variant(row: dict[str, Any]) -> str:
    return CUDA_VARIANT if row["provider"] == "cuda" else "ours_latency"


def _in_band(removed: float, goal: float) -> bool:
    after = 1 - removed
    want = 1 - goal
    return abs(after - want) <= LATENCY_TOLERANCE * want


def _summary(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """One line per done-when criterion, pass / fail computed from the figures."""
    lines = []
    # 1. efficiency of ours at -MACs, CPU rows, every batch and thread count
    fails, worst, missing = [], {}, []
    for name, r in results.items():
        goal = EFFICIENCY_GOAL[_kind(name)]
        effs = []
        for row in r.get("timing", []):
            if row["provider"] != "cpu":
                continue
            f = _row_figures(r, row).get("ours_flops")
            if f is None or f["efficiency"] is None:
                missing.append(f"{name} b{row['batch']} t{row['threads']}")
                continue
            effs.append(f["efficiency"])
            if f["efficiency"] < goal:
                fails.append(f"{name} b{row['batch']} t{row['threads']} {f['efficiency']:.2f}")
        if not r.get("timing"):
            missing.append(name)
        if effs:
            worst[name] = min(effs)
    ok = not fails and not missing and worst
    lines.append(
        f"- **Efficiency** (ours at −{args.flops:.0%} MACs, speed-up ÷ MAC ratio ≥ {EFFICIENCY_GOAL['cnn']} on the "
        f"CNNs, ≥ {EFFICIENCY_GOAL['transformer']} on the transformers, every CPU row): **{'PASS' if ok else 'FAIL'}**. "
        "Lowest per model: " + (", ".join(f"{n} {e:.2f}" for n, e in worst.items()) or "none")
        + (f". Below the goal: {'; '.join(fails)}" if fails else "")
        + (f". Not measured: {', '.join(missing)}" if missing else "") + ".")
    # 2. latency target met within 5 % at the runtime it was pruned for
    fails, got, missing = [], [], []
    for name, r in results.items():
        res = r["variants"].get("ours_latency")
        if res is None or "error" in res:
            missing.append(f"{name} ({(res or {}).get('error', 'not pruned')})")
            continue
        rows = [row for row in r.get("timing", []) if row["provider"] == "cpu" and _is_latency_runtime(row)]
        f = _row_figures(r, rows[0]).get("ours_latency") if rows else None
        own = (res.get("report", {}).get("latency_target") or {}).get("met")
        if f is None:
            missing.append(f"{name} (not timed at threads {LATENCY_RUNTIME['threads']}, batch 1)")
            continue
        inside = _in_band(f["latency_removed"], args.latency)
        got.append(f"{name} {f['latency_removed']:.1%}{'' if inside else ' ✗'} (prune's own check: "
                   f"{'met' if own else 'missed'})")
        if not inside:
            fails.append(name)
    ok = not fails and not missing
    lo, hi = (1 - args.latency) * (1 - LATENCY_TOLERANCE), (1 - args.latency) * (1 + LATENCY_TOLERANCE)
    lines.append(
        f"- **Latency target** (`latency: {args.latency}` met within {LATENCY_TOLERANCE:.0%}: after / before in "
        f"[{lo:.3f}, {hi:.3f}], timed here at threads {LATENCY_RUNTIME['threads']}, batch 1, where it was pruned "
        f"for): **{'PASS' if ok else 'FAIL'}**. Removed: " + ("; ".join(got) or "none")
        + (f". Missing: {'; '.join(missing)}" if missing else "") + ".")
    # 3. no pruned model of ours slower than its original, anywhere
    slower, tp_slower, count, missing = [], [], 0, []
    for name, r in results.items():
        for row in r.get("timing", []):
            missing += [f"{name} {v} {row['provider']} b{row['batch']} t{row['threads']}"
                        for v in row["errors"] if v != "tp"]
            for v, f in _row_figures(r, row).items():
                where = f"{name} {v} {row['provider']} b{row['batch']} t{row['threads']} ×{f['speedup']:.2f}"
                if v == "tp":
                    if f["speedup"] < 1:
                        tp_slower.append(where)
                    continue
                count += 1
                if f["speedup"] < 1:
                    slower.append(where)
    ok = not slower and not missing and count > 0
    lines.append(
        f"- **Never slower** (every pruned model of ours, every row, speed-up ≥ 1.00): **{'PASS' if ok else 'FAIL'}** "
        f"({count} measurements" + (f"; slower: {'; '.join(slower)}" if slower else "")
        + (f"; did not run: {'; '.join(missing)}" if missing else "") + ")"
        + (f". Torch-Pruning slower than the original: {'; '.join(tp_slower)}" if tp_slower else "") + ".")
    # 4. Torch-Pruning beside ours
    missing = [name for name, r in results.items()
               if not any("tp" in _row_figures(r, row) for row in r.get("timing", []))]
    why = {name: results[name]["variants"].get("tp", {}).get("error", "not timed") for name in missing}
    lines.append(
        f"- **Torch-Pruning beside ours** (a timed row for every model): **{'PASS' if not missing else 'FAIL'}**"
        + (". Missing: " + "; ".join(f"{n} ({w})" for n, w in why.items()) if missing else "") + ".")
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _x(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    v = meta["versions"]
    budget = (f"{args.budget:g} s" if args.budget is not None else "8 s at batch 1, 20 s at larger batches"
              + (" (CUDA: 4 s / 8 s)" if meta["cuda"] else ""))
    cmd = " ".join(["python -m bench.runtime_speed", *meta["argv"]])
    lines = [
        "# Runtime speed of pruned models: pruning_core vs Torch-Pruning",
        "",
        f"Written by `{cmd}` (`bench/runtime_speed.py`, see its docstring; the time pruning takes is in "
        "`docs/speed.md`). Models: ResNet-50, MobileNetV2, ViT-B/16 (224x224, 1000 classes), BERT-base "
        "(128 tokens) from transformers configs at their defaults, and a hand-written YOLOv8s-style detector "
        "(C2f blocks with Split, SPPF, PAN neck, decoupled head; 640x640); random seeded weights. Each is "
        "exported once (TorchScript exporter, opset 17, dynamic batch axis).",
        "",
        f"Machine: {meta['cpu']}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime "
        f"{v.get('onnxruntime-gpu', v.get('onnxruntime', '?'))} ({', '.join(meta['providers'])}), torch "
        f"{v.get('torch')}, transformers {v.get('transformers')}, Torch-Pruning {v.get('torch-pruning', '-')}; "
        f"load average {meta['load_before']} before the run, {meta['load_after']} after.",
        "",
        f"- **ours −{args.flops:.0%} MACs**: `prune(source, {{\"target\": {{\"flops\": {args.flops}}}}})`, the "
        "default spec otherwise (l1, global, `round_to: \"auto\"`).",
        f"- **ours latency {args.latency}**: `{{\"target\": {{\"latency\": {args.latency}}}, \"runtime\": "
        f"{json.dumps(LATENCY_RUNTIME)}}}`: remove {args.latency:.0%} of the latency measured at 2 threads, "
        "batch 1 (**bold** rows); the other rows show what the same model does elsewhere"
        + ("; CUDA rows show a model pruned for `{\"provider\": \"cuda\", \"batch\": 1}`" if meta["cuda"] else "")
        + ".",
        f"- **TP**: Torch-Pruning {v.get('torch-pruning', '')} `MetaPruner`, L1 group magnitude, global, max ratio "
        f"{TP_MAX_RATIO}, classifier / detector output convolutions ignored, attention head dims pruned, "
        f"stepped {1 / TP_STEPS * TP_MAX_RATIO:.0%} of the channels at a time until its own MAC count is at most "
        f"{1 - args.flops:.0%} of the original's"
        + (f", `round_to={args.tp_round_to}`" if args.tp_round_to else "")
        + "; then exported like the source. For the detector it prunes the equivalent model with two "
        "convolutions in place of each C2f split, as Torch-Pruning's YOLOv8 example does.",
        f"- Timing: onnxruntime, `intra_op_num_threads` = threads, `inter_op_num_threads` = 1, no spinning of idle pool threads (models are timed in turn), all graph "
        f"optimizations; the original and the pruned models timed in turn (one slice of each per round, the order "
        f"rotating: {SETTLE} untimed runs then {BLOCK} timed ones, warm as in serving; one timed run where a run takes over "
        f"{SLICE_MS:.0f} ms) after {args.warmup} warm-up runs each, for {budget} per row and at least {args.min_rounds} "
        "timed runs each; medians. **noise**: the largest interquartile range / median among the row's models.",
        "- **speed-up** = original median / pruned median; **MAC ratio** = original MACs / pruned MACs (every "
        "file counted by pruning_core's counter at batch 1); **eff.** = speed-up / MAC ratio; **lat. removed** "
        f"= 1 − pruned / original (the target: {args.latency:.0%} ± {LATENCY_TOLERANCE * (1 - args.latency):.1%});"
        " **ours / TP** = our speed-up / Torch-Pruning's at the same MACs.",
        "",
        "## Done when",
        "",
        *_summary(results, args),
        "",
        "## Pruned models",
        "",
        "| model | GMACs | ours −MACs: MAC ratio | ours latency: MAC ratio, prune's own check | TP: MAC ratio "
        "(TP's count), steps | prune s: ours −MACs / ours latency / TP |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        macs0 = r["export"].get("macs")
        vs = r["variants"]

        def ratio(res: dict[str, Any] | None, macs0: int | None = macs0) -> str:
            if not res:
                return "-"
            if "error" in res:
                return f"failed: {res['error']}"
            return _x(macs0 / res["macs"]) if macs0 and res.get("macs") else "-"

        lat = vs.get("ours_latency")
        lt = ((lat or {}).get("report") or {}).get("latency_target") or {}
        tries = lt.get("tries") or []
        best = min(tries, key=lambda t: abs(t["removed_fraction"] - lt.get("goal", 0))) if tries else None
        own = (f", {'met' if lt.get('met') else 'missed'} ({_pct(best['removed_fraction'])} in {len(tries)} "
               f"tries)" if best else "")
        tp = vs.get("tp") or {}
        tpc = (f" ({tp['tp_macs'][0] / tp['tp_macs'][1]:.2f}), {tp.get('steps')}" if tp.get("tp_macs") else "")
        secs = " / ".join(_x((vs.get(k) or {}).get("seconds"), 1) for k in ("ours_flops", "ours_latency", "tp"))
        lines.append(f"| {name} | {_x(macs0 / 1e9 if macs0 else None)} | {ratio(vs.get('ours_flops'))} | "
                     f"{ratio(lat)}{own if lat and 'error' not in lat else ''} | {ratio(vs.get('tp'))}"
                     f"{tpc if 'error' not in tp else ''} | {secs} |")
    fixed = [f"{name} {v}: {res['batch_axis']}" for name, r in results.items() for v, res in r["variants"].items()
             if "error" not in res and any(d.isdigit() for d in res.get("batch_axis", []))]
    if fixed:
        lines += ["", "Pruned models whose batch axis is fixed (the source's is dynamic; first dim of each input "
                  "and output): " + "; ".join(fixed) + "."]
    lines += [
        "",
        "## Speed",
        "",
        f"| model | EP | batch | threads | orig ms | ours −{args.flops:.0%} MACs: speed-up | eff. | "
        f"ours latency {args.latency}: speed-up | lat. removed | TP: speed-up | TP eff. | ours / TP | noise |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for row in r.get("timing", []):
            f = _row_figures(r, row)
            orig = row["stats"].get("orig", {}).get("median_ms")
            ours, tp = f.get("ours_flops", {}), f.get("tp", {})
            lat = f.get(_latency_variant(row), {})
            target_row = _is_latency_runtime(row) and lat
            removed = _pct(lat.get("latency_removed"))
            if target_row:
                removed = f"**{removed}** {'✓' if _in_band(lat['latency_removed'], args.latency) else '✗'}"
            vs_tp = (ours["speedup"] / tp["speedup"]) if ours and tp else None
            noise = max([s["spread"] for s in row["stats"].values()], default=None)
            def speed(v: str, f: dict[str, Any], row: dict[str, Any] = row) -> str:
                return "did not run" if v in row["errors"] else _x(f.get("speedup"))

            cells = [name, row["provider"], str(row["batch"]), str(row["threads"]) if row["provider"] == "cpu" else "-",
                     _x(orig), speed("ours_flops", ours), _x(ours.get("efficiency")),
                     speed(_latency_variant(row), lat), removed, speed("tp", tp), _x(tp.get("efficiency")),
                     _x(vs_tp), _pct(noise)]
            if target_row:
                cells[:4] = [f"**{c}**" for c in cells[:4]]
            lines.append("| " + " | ".join(cells) + " |")
    failed = [(n, r["timing_error"]) for n, r in results.items() if r.get("timing_error")]
    if failed:
        lines += ["", "Timing failures: " + "; ".join(f"{n}: {e}" for n, e in failed)]
    errors = [f"{n} {row['provider']} b{row['batch']} t{row['threads']} {k}: {e}"
              for n, r in results.items() for row in r.get("timing", []) for k, e in row["errors"].items()]
    if errors:
        lines += ["", "Did not run:", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def _console(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    head = (f"{'model':13s} {'EP':4s} {'b':>2s} {'t':>2s} {'orig ms':>9s} {'ours x':>7s} {'eff':>5s} "
            f"{'lat x':>6s} {'lat rm':>7s} {'TP x':>6s} {'TP eff':>6s} {'noise':>6s}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        for row in r.get("timing", []):
            f = _row_figures(r, row)
            ours, tp, lat = f.get("ours_flops", {}), f.get("tp", {}), f.get(_latency_variant(row), {})
            noise = max([s["spread"] for s in row["stats"].values()], default=None)
            print(f"{name:13s} {row['provider']:4s} {row['batch']:2d} {row['threads']:2d} "
                  f"{_x(row['stats'].get('orig', {}).get('median_ms')):>9s} {_x(ours.get('speedup')):>7s} "
                  f"{_x(ours.get('efficiency')):>5s} {_x(lat.get('speedup')):>6s} {_pct(lat.get('latency_removed')):>7s} "
                  f"{_x(tp.get('speedup')):>6s} {_x(tp.get('efficiency')):>6s} {_pct(noise):>6s}"
                  + (f"  errors: {row['errors']}" if row["errors"] else ""))
    print()
    for line in _summary(results, args):
        print(line.replace("**", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.runtime_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--budget", type=float, help="seconds of timing per model and row (default: 8 at batch 1, "
                    "20 at larger batches)")
    ap.add_argument("--flops", type=float, default=0.5, help="MAC fraction to remove (ours and Torch-Pruning)")
    ap.add_argument("--latency", type=float, default=0.5, help="latency fraction to remove (ours)")
    ap.add_argument("--tp-round-to", type=int, default=None, help="Torch-Pruning's round_to (default: none)")
    ap.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=None,
                    help="CUDA rows (default: when onnxruntime has the CUDAExecutionProvider)")
    ap.add_argument("--skip", choices=VARIANTS, action="append", default=[], help="leave a variant out")
    ap.add_argument("--reuse", action="store_true", help="keep pruned models cached with the same configuration (failed ones are pruned again)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-rounds", type=int, default=5, help="timed runs per model at least")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / ".zoo_cache" / "runtime_speed",
                    help="exports, pruned models, timing plans")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "runtime_speed.md",
                    help="the markdown report ('-': none)")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--timeout", type=float, default=3600, help="per subprocess")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "export":
            res = worker_export(rest[0], Path(rest[1]))
        elif kind == "ours":
            res = worker_ours(Path(rest[0]), json.loads(rest[1]), Path(rest[2]))
        elif kind == "tp":
            res = worker_tp(rest[0], float(rest[1]), Path(rest[2]), int(rest[3]) or None)
        elif kind == "time":
            res = worker_time(Path(rest[0]))
        else:
            raise SystemExit(f"unknown worker {kind!r}")
        print(json.dumps(res))
        return 0

    has_cuda = _has_cuda()
    if args.cuda and not has_cuda:
        print("--cuda: onnxruntime here has no CUDAExecutionProvider; no CUDA rows", file=sys.stderr)
    cuda = bool(has_cuda if args.cuda is None else args.cuda and has_cuda)
    versions = _versions()
    import onnxruntime as ort

    meta: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv, "versions": versions, "cpu": _cpu_model(),
        "providers": [p.removesuffix("ExecutionProvider") for p in ort.get_available_providers()],
        "cuda": cuda, "load_before": ", ".join(f"{x:.1f}" for x in os.getloadavg())}
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SPA_LATENCY_CACHE", str(args.work / "latency-cache"))
    specs = _variant_specs(args, cuda)
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name in args.models:
        r = _prepare(name, args, specs, versions)
        if "error" not in r["export"]:
            _time(name, r, args, cuda)
        results[name] = r
    meta["load_after"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    print()
    print(f"{meta['cpu']}, {os.cpu_count()} cores; load average {meta['load_before']} -> {meta['load_after']}; "
          f"{meta['seconds']} s in all")
    _console(results, args)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if str(args.out) != "-":
        args.out.write_text(_markdown(results, args, meta))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
