"""`spa prune` and `spa analyze`: run the library on this machine, no server.

The library (pruning_core: onnx, onnxruntime, torch) comes with the ``worker`` extra; this module
imports it only when a command runs, and without it the command says so in one line (exit 2).
Bad input (missing / truncated / non-ONNX file, a target outside (0, 1), an unknown input name or
criterion) -> one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from client.cli import (  # one parser for fractions, runtime flags
    LIBRARY_MODULES,
    _fraction,
    add_runtime_arguments,
    default_target_note,
)


def _shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.partition("=")
    try:
        values = [int(d) for d in dims.split(",")]
    except ValueError:
        values = []
    if not sep or not name or not values or any(d <= 0 for d in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=D1,D2,... with positive dims")
    return name, values


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model file locally",
        description="Prune an ONNX model here and print a before/after table.",
    )
    p.add_argument("model", type=Path, help="input .onnx")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx (or a folder)")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--flops", type=_fraction, help="fraction of MACs to remove")
    tgt.add_argument("--params", type=_fraction, help="fraction of parameters to remove")
    tgt.add_argument("--channels", type=_fraction, help="fraction of prunable channels to remove")
    tgt.add_argument("--latency", type=_fraction, help="fraction of measured latency to remove (spec.runtime)")
    p.add_argument("--criterion", default="l1")
    p.add_argument("--scope", choices=["global", "local"], default="global")
    add_runtime_arguments(p, defaults=True)
    p.add_argument("--max-group-ratio", type=float, default=0.9)
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB")
    p.add_argument("--input-shape", action="append", default=[], type=_shape, metavar="NAME=D1,D2,...")
    p.add_argument("--data", type=Path, help="calibration data (.npz named after the inputs)")
    p.add_argument("--eval-data", type=Path,
                   help="evaluation data (.npz like --data): fidelity is measured on it, not on a split of --data")
    p.add_argument("--eval-fraction", type=_eval_fraction, metavar="F",
                   help="fraction of --data held out for fidelity (default 0.2 with >= 10 samples; 0: none)")
    p.add_argument("--approximate", action="store_true", help="also prune groups under LayerNorm")
    p.add_argument("--report", type=Path, help="write report.json here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prune)

    a = sub.add_parser(
        "analyze",
        help="list a model's dependency groups",
        description="Load an ONNX model and list its coupled channel groups.",
    )
    a.add_argument("model", type=Path)
    a.add_argument("--input-shape", action="append", default=[], type=_shape, metavar="NAME=D1,D2,...")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_analyze)


def _require_library() -> None:
    from client.cli import require_extra

    require_extra("worker", "local pruning", LIBRARY_MODULES)


def _usage(msg: str) -> Exception:
    from client.cli import UsageError

    return UsageError(msg)


def cmd_prune(args: argparse.Namespace) -> int:
    _require_library()
    from pydantic import ValidationError

    from pruning_core.errors import PruneError
    from pruning_core.spec import PruneSpec

    targets = {k: getattr(args, k) for k in ("flops", "params", "channels", "latency") if getattr(args, k) is not None}
    try:
        spec = PruneSpec(
            **({"target": targets} if targets else {}),  # none: the spec's default applies
            criterion=args.criterion,
            scope=args.scope,
            round_to=args.round_to,
            runtime={k: v for k, v in (("provider", args.provider), ("threads", args.threads),
                                       ("batch", args.batch)) if v is not None},
            max_group_ratio=args.max_group_ratio,
            ignore=args.ignore,
            seed=args.seed,
            approximate=args.approximate,
            input_shapes=dict(args.input_shape),
            calibration={"eval_fraction": args.eval_fraction},
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise _usage(f"bad spec: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if not args.model.is_file():
        raise _usage(f"model file not found: {args.model}")
    from pruning_core.api import prune

    def progress(stage: str, frac: float, msg: str | None) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{stage:<8} {frac:5.0%} {msg or '':<50.50}")

    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = prune(args.model, spec, tmp, data=args.data, eval_data=args.eval_data, progress=progress)
        except PruneError as e:
            raise _usage(str(e)) from None
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        out = args.output
        if out.suffix != ".onnx":
            out.mkdir(parents=True, exist_ok=True)
            out = out / "pruned.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(res.artifacts["pruned.onnx"]), out)
        extra = []
        for name in ("pruned.pt2", "plan.json"):  # PyTorch sources: the program and the plan
            if name in res.artifacts:
                shutil.move(str(res.artifacts[name]), out.parent / name)
                extra.append(out.parent / name)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(res.artifacts["report.json"]), args.report)
    if not targets:  # said with the result: an input error stays the one line on stderr
        print(default_target_note(spec.target.model_dump()), file=sys.stderr)
    for warning in res.report.get("warnings") or []:
        print(f"spa: warning: {warning}", file=sys.stderr)
    print(format_table(res.report))
    for path in [out, *extra]:
        print(f"wrote {path}")
    return 0


def format_table(rep: dict) -> str:
    def row(name: str, before: float, after: float, unit: str = "") -> str:
        change = (after / before - 1) if before else 0.0
        return f"{name:<12}{before:>16,.{2 if unit else 0}f}{after:>16,.{2 if unit else 0}f}{change:>+10.1%} {unit}"

    gs = rep["groups_summary"]
    lines = [
        f"{'':<12}{'before':>16}{'after':>16}{'change':>10}",
        row("params", rep["params"]["before"], rep["params"]["after"]),
        row("MACs", rep["macs"]["before"], rep["macs"]["after"]),
        *([row("latency", rep["latency_ms"]["before"], rep["latency_ms"]["after"], "ms"),
           _speed_line(rep)]
          if rep["latency_ms"]["before"] is not None else []),
        f"groups: {gs['total']} total, {gs['prunable']} prunable, {gs['pruned']} pruned; "
        f"channels removed {rep['channels']['removed']}/{rep['channels']['total']}",
        f"verify: max error {rep['verify'].get('max_error', float('nan')):.3g} "
        f"(tolerance {rep['verify'].get('tolerance', float('nan')):.3g})",
        *fidelity_lines(rep),
    ]
    return "\n".join(lines)


def _eval_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction from 0 (no split) up to, not including, 1")
    return value


def _fidelity_text(f: dict[str, Any]) -> str:
    parts = [f"output cosine {f['cosine']:.4f}", f"max rel error {f['max_rel_error']:.3g}"]
    if f.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {f['top1_agreement']:.1%}")
    acc = f.get("accuracy")
    if acc:
        parts.append(f"accuracy {acc['before']:.1%} -> {acc['after']:.1%}")
    return ", ".join(parts)


def fidelity_lines(rep: dict[str, Any]) -> list[str]:
    """Fidelity vs the original, on what it was measured (held-out data, eval data, synthetic);
    before and after recovery when recovery ran."""
    f = rep.get("fidelity") or {}
    if f.get("cosine") is None:
        return []
    on = f.get("inputs") or "synthetic"
    if on == "synthetic":
        on = f"synthetic inputs ({f.get('samples')} sample{'s' if f.get('samples') != 1 else ''}, no data given)"
    lines = [f"fidelity on {on}: {_fidelity_text(f)}"]
    pre = rep.get("fidelity_before_recovery")
    if pre and pre.get("cosine") is not None:
        lines[0] = lines[0].replace("fidelity on", "fidelity after recovery on", 1)
        lines.append(f"fidelity before recovery: {_fidelity_text(pre)}")
    return lines


def _speed_line(rep: dict) -> str:
    """Speed-up and efficiency (speed-up / MAC reduction), where and how it was measured."""
    lat, rt = rep["latency_ms"], rep.get("runtime") or {}
    spread = lat.get("spread", {}).get("after")
    where = (f"{rt.get('provider', 'cpu')}, {rt.get('threads')} threads, batch {rt.get('batch')}, "
             f"median of {lat['runs']} runs" + (f", quartiles {spread[0]:.3g}-{spread[1]:.3g} ms" if spread else ""))
    if lat.get("speedup") is None:
        return f"speed: not measured ({where})"
    line = f"speed-up {lat['speedup']:.2f}x, efficiency {lat['efficiency']:.2f} ({where})"
    tgt = rep.get("latency_target")
    if tgt:
        line += f"; latency target {tgt['goal']:.0%}: met in {len(tgt['tries'])} tries"
    return line


def cmd_analyze(args: argparse.Namespace) -> int:
    _require_library()
    from pruning_core.api import analyze
    from pruning_core.errors import PruneError

    if not args.model.is_file():
        raise _usage(f"model file not found: {args.model}")
    try:
        summary = analyze(args.model, dict(args.input_shape))
    except PruneError as e:
        raise _usage(str(e)) from None
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(
        f"{args.model.name}: {summary['params']:,} params, {summary['macs']:,} MACs, "
        f"{summary['groups_total']} groups ({summary['groups_prunable']} prunable)"
    )
    for gr in summary["groups"]:
        state = "prunable" if gr["prunable"] else "fixed"
        why = f"  <- {gr['reasons'][0]}" if gr["reasons"] else ""
        print(f"  #{gr['id']:<4}{gr['size']:>6} ch  {state:<9}{gr['name']}{why}")
    return 0
