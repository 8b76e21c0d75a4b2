"""Zoo entries exported with a dynamic batch axis (every input and output), cached like the
static exports of tests.zoo.export (same cache folder, a key of its own).

The builders' example inputs have batch 1; the export traces at batch 2 (the same rows repeated),
since torch.export specializes a dim whose example size is 1. ``batch_inputs`` makes inputs of any
batch from the example row: distinct rows, values in the example's range.

    python -m tests.zoo.dynamic resnet bert [--exporter dynamo]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from tests.zoo.export import ExportError, _quiet_torch_trace, _short_error, cache_dir
from tests.zoo.export import __file__ as EXPORT_FILE
from tests.zoo.models import EXPORTERS, ZOO, Built
from tests.zoo.registry import __file__ as REGISTRY_FILE

OPSET = 18
BATCH = "batch"
TRACE_BATCH = 2


def _key(name: str, exporter: str) -> str:
    h = hashlib.sha256()
    for f in sorted({str(inspect.getsourcefile(ZOO[name].builder)), str(REGISTRY_FILE), str(EXPORT_FILE), __file__}):
        h.update(Path(f).read_bytes())
    return f"{name}.{exporter}.dynbatch.torch{torch.__version__}.tf{transformers.__version__}.{h.hexdigest()[:12]}"


def _export(built: Built, exporter: str, path: Path) -> None:
    args = tuple(torch.cat([built.inputs[n]] * TRACE_BATCH, 0) for n in built.input_names)
    common: dict[str, Any] = {"input_names": built.input_names, "output_names": built.output_names,
                              "opset_version": OPSET}
    if exporter == "dynamo":
        batch = torch.export.Dim(BATCH, max=4096)
        shapes: tuple[Any, ...] = tuple({0: batch} for _ in built.input_names)
        params = inspect.signature(built.model.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            shapes = (shapes,)  # forward(*args): one spec per tensor, inside the varargs' tuple
        torch.onnx.export(built.model, args, str(path), dynamo=True, external_data=False, optimize=True,
                          dynamic_shapes=shapes, **common)
    elif exporter == "torchscript":
        axes = {n: {0: BATCH} for n in built.input_names + built.output_names}
        torch.onnx.export(built.model, args, str(path), dynamo=False, do_constant_folding=True,
                          dynamic_axes=axes, **common)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")


def dynamic_export(name: str, exporter: str, *, force: bool = False) -> Path:
    """Path of NAME.EXPORTER.onnx with a dynamic batch axis (exported on a cache miss), with the
    batch-1 example inputs beside it (NAME.EXPORTER.npz). Raises ExportError (also when cached)."""
    entry = cache_dir() / _key(name, exporter)
    path = entry / f"{name}.{exporter}.onnx"
    failure = entry / "FAILED.txt"
    if not force:
        if path.exists():
            return path
        if failure.exists():
            raise ExportError(failure.read_text().strip())
    entry.mkdir(parents=True, exist_ok=True)
    built = ZOO[name].build()
    with tempfile.TemporaryDirectory(dir=entry) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings(), _quiet_torch_trace():
                warnings.simplefilter("ignore")
                _export(built, exporter, tmp_path)
        except Exception as exc:
            failure.write_text(_short_error(exc) + "\n")
            raise ExportError(_short_error(exc)) from exc
        np.savez(Path(tmp) / "inputs.npz", **{n: built.inputs[n].numpy() for n in built.input_names})
        os.replace(Path(tmp) / "inputs.npz", path.with_suffix(".npz"))
        os.replace(tmp_path, path)  # last: a present .onnx means a complete export
    failure.unlink(missing_ok=True)
    return path


def batch_inputs(path: Path | str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of batch ``batch``: the example row first, then rows with other values in the
    example's range (float: the row plus noise; integer: uniform between its min and max)."""
    rng = np.random.default_rng(seed)
    with np.load(Path(path).with_suffix(".npz")) as z:
        example = {k: z[k] for k in z.files}
    out = {}
    for name, row in example.items():
        rows = [row]
        for _ in range(batch - 1):
            if row.dtype.kind == "f":
                rows.append((row + rng.standard_normal(row.shape) * max(float(row.std()), 0.1)).astype(row.dtype))
            else:
                rows.append(rng.integers(int(row.min()), int(row.max()) + 1, row.shape).astype(row.dtype))
        out[name] = np.concatenate(rows, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zoo.dynamic", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="zoo entries (default: every entry)")
    ap.add_argument("--exporter", choices=EXPORTERS, action="append", help="default: both")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    failed = 0
    for name in args.names or list(ZOO):
        for exporter in args.exporter or list(EXPORTERS):
            t0 = time.perf_counter()
            try:
                dynamic_export(name, exporter, force=args.force)
                status = "ok"
            except ExportError as exc:
                failed += 1
                status = f"FAILED  {exc}"
            print(f"{name:20s} {exporter:11s} {time.perf_counter() - t0:6.2f}s  {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
