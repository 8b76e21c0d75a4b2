"""Export zoo entries to ONNX with either torch exporter, with an on-disk cache.

The cache lives in $SPA_ZOO_CACHE, else `.zoo_cache/` under the repository root. An entry's key holds
its name, the exporter, the torch and transformers versions and a hash of the source that builds it,
so an edited builder or a new torch re-exports. A failed export is cached too (as its error), so a
test run does not pay for the same failure twice; `--force` retries.

    python -m tests.zoo.export --all [--exporter dynamo] [--force]
    python -m tests.zoo.export resnet bert --exporter torchscript
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from tests.zoo.models import EXPORTERS, ZOO, Built
from tests.zoo.registry import __file__ as REGISTRY_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
OPSET = 18

# "torchvision is not installed. Skipping torchvision::nms" etc., once per export
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ExportError(RuntimeError):
    """An entry could not be exported; the message says why (first line of the exporter's error)."""


def cache_dir() -> Path:
    env = os.environ.get("SPA_ZOO_CACHE")
    return Path(env) if env else REPO_ROOT / ".zoo_cache"


def source_hash(name: str) -> str:
    """Hash of the files that define the entry's export: its module, the registry and this file."""
    module_file = inspect.getsourcefile(ZOO[name].builder)
    h = hashlib.sha256()
    for f in sorted({str(module_file), str(REGISTRY_FILE), __file__}):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]


def cache_key(name: str, exporter: str) -> str:
    return f"{name}.{exporter}.torch{torch.__version__}.tf{transformers.__version__}.{source_hash(name)}"


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


def _torch_export(built: Built, exporter: str, path: Path) -> None:
    args = tuple(built.inputs[n] for n in built.input_names)
    common: dict[str, Any] = {
        "input_names": built.input_names,
        "output_names": built.output_names,
        "opset_version": OPSET,
    }
    if exporter == "dynamo":
        torch.onnx.export(
            built.model, args, str(path), dynamo=True, external_data=False, optimize=True, **common
        )
    elif exporter == "torchscript":
        torch.onnx.export(built.model, args, str(path), dynamo=False, do_constant_folding=True, **common)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")


@contextlib.contextmanager
def _quiet_torch_trace() -> Iterator[None]:
    """torch's structured-trace logger runs at DEBUG; under pytest's log capture that costs ~2x export time."""
    logger = logging.getLogger("torch.__trace")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _short_error(exc: BaseException) -> str:
    msgs = [f"{type(exc).__name__}: {str(exc).strip()}"]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(msgs) < 3:
        msgs.append(f"{type(cause).__name__}: {str(cause).strip()}")
        cause = cause.__cause__ or cause.__context__
    # the deepest cause is usually the informative one; keep each to its first line
    return " <- ".join(m.splitlines()[0][:300] for m in reversed(msgs))


def _quantize(path: Path, built: Built, how: str) -> list[Any]:
    """Quantize the export at ``path`` in place (onnxruntime.quantization, static, QDQ format),
    calibrated on the example inputs and noisy copies of the float ones; returns its outputs."""
    import onnxruntime as ort
    from onnxruntime import quantization as q

    base = {n: built.inputs[n].numpy() for n in built.input_names}
    rng = np.random.default_rng(0)
    feeds = [base] + [{n: (a + 0.3 * rng.standard_normal(a.shape).astype(a.dtype)
                           if np.issubdtype(a.dtype, np.floating) else a) for n, a in base.items()}
                      for _ in range(3)]

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    out = path.with_name("quantized.onnx")
    try:
        q.quantize_static(str(path), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=how == "qdq-per-channel", weight_type=q.QuantType.QInt8)
    except Exception as exc:
        raise ExportError(f"quantization failed: {_short_error(exc)}") from exc
    os.replace(out, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(built.output_names, base)]


def export(name: str, exporter: str, out_dir: Path | str) -> Path:
    """Export `name` with `exporter` into `out_dir` (no cache): writes NAME.EXPORTER.onnx,
    the example inputs and torch outputs (.npz) and metadata (.json). Raises ExportError."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo entry {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.{exporter}"
    built = ZOO[name].build()
    with torch.no_grad():
        expected = _flat_outputs(built.model(*(built.inputs[n] for n in built.input_names)))
    log = io.StringIO()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        try:
            with (
                contextlib.redirect_stdout(log),
                contextlib.redirect_stderr(log),
                warnings.catch_warnings(),
                _quiet_torch_trace(),
            ):
                warnings.simplefilter("ignore")
                _torch_export(built, exporter, tmp_path)
        except Exception as exc:
            raise ExportError(_short_error(exc)) from exc
        seconds = time.perf_counter() - t0
        if not tmp_path.exists():
            raise ExportError("exporter returned without writing a file")
        if ZOO[name].quantize:
            # the quantized graph is its own reference: its outputs, not torch's, are expected
            expected = _quantize(tmp_path, built, ZOO[name].quantize)
        arrays = {f"input:{n}": built.inputs[n].numpy() for n in built.input_names}
        arrays |= {f"output:{n}": t.numpy() for n, t in zip(built.output_names, expected, strict=True)}
        np.savez(Path(tmp) / "data.npz", **arrays)  # type: ignore[arg-type]
        meta = {
            "name": name,
            "exporter": exporter,
            "opset": OPSET,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "seconds": round(seconds, 3),
            "input_names": built.input_names,
            "output_names": built.output_names,
            "params": sum(p.numel() for p in built.model.parameters()),
        }
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=1))
        # atomic renames, the .onnx last: a present .onnx means a complete export
        os.replace(Path(tmp) / "data.npz", out_dir / f"{stem}.npz")
        os.replace(Path(tmp) / "meta.json", out_dir / f"{stem}.json")
        os.replace(tmp_path, out_dir / f"{stem}.onnx")
    return out_dir / f"{stem}.onnx"


def cached_export(name: str, exporter: str, *, force: bool = False) -> Path:
    """Export through the cache; returns the .onnx path. Raises ExportError (also for a cached failure)."""
    entry_dir = cache_dir() / cache_key(name, exporter)
    onnx_path = entry_dir / f"{name}.{exporter}.onnx"
    failure = entry_dir / "FAILED.txt"
    if not force:
        if onnx_path.exists():
            return onnx_path
        if failure.exists():
            raise ExportError(failure.read_text().strip())
    try:
        path = export(name, exporter, entry_dir)
    except ExportError as exc:
        failure.write_text(str(exc) + "\n")
        raise
    failure.unlink(missing_ok=True)
    return path


def meta_for(onnx_path: Path | str) -> dict[str, Any]:
    p = Path(onnx_path)
    return json.loads(p.with_suffix(".json").read_text())


def example_data(onnx_path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected torch outputs) saved beside an export, keyed by ONNX input/output name."""
    with np.load(Path(onnx_path).with_suffix(".npz")) as z:
        inputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
        outputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("output:")}
    return inputs, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.zoo.export", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="zoo entries (default with --all: every entry)")
    ap.add_argument("--all", action="store_true", help="export every entry")
    ap.add_argument("--exporter", choices=EXPORTERS, action="append", help="default: both")
    ap.add_argument("--force", action="store_true", help="ignore the cache (successes and failures)")
    ap.add_argument("--check", action="store_true", help="also run tests.zoo.check on each export")
    ap.add_argument("--traceback", action="store_true", help="print full tracebacks of failures")
    args = ap.parse_args(argv)
    names = list(ZOO) if args.all else args.names
    unknown = [n for n in names if n not in ZOO]
    if not names or unknown:
        ap.error(f"unknown entries {unknown}" if unknown else "name entries or pass --all")
    chosen = args.exporter or list(EXPORTERS)
    print(f"cache: {cache_dir()}")
    failed = 0
    t_all = time.perf_counter()
    for name in names:
        for exporter in [e for e in chosen if e in ZOO[name].exporters]:
            t0 = time.perf_counter()
            try:
                path = cached_export(name, exporter, force=args.force)
                status = f"ok      export {meta_for(path)['seconds']:6.2f}s"
                if args.check:
                    from tests.zoo.check import check_model

                    err = check_model(path)
                    status += f"  check max_rel_err={err:.1e}"
            except Exception as exc:
                failed += 1
                status = f"FAILED  {exc}"
                if args.traceback:
                    traceback.print_exc()
            print(f"{name:20s} {exporter:11s} {time.perf_counter() - t0:6.2f}s  {status}", flush=True)
    print(f"total {time.perf_counter() - t_all:.1f}s, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
