"""Provenance of a result: ``metadata_props`` entries stamped into the saved ``pruned.onnx``.

``spa.version`` (the package), ``spa.spec`` (the spec, JSON), ``spa.source_sha256`` (of the file
the user gave), ``spa.figures`` (params, MACs, latency before / after, the verification error,
JSON). The model's own entries are kept; earlier ``spa.*`` values (a pruned model pruned again)
are replaced.

:func:`stamp` edits the file in place without parsing its graph or reading its weights: a
ModelProto is a sequence of top-level fields, and a repeated field written after the others is
appended by every protobuf parser. Entries to replace are cut out by copying the file's other
top-level fields byte for byte. External data (``pruned.onnx.data``) is never touched.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from onnx import ModelProto, StringStringEntryProto

from pruning_core.ir.weights import LEN, _fields

PACKAGE = "spa-service"
MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props
PREFIX = "spa."


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def props(spec: Any, source: str | os.PathLike[str], summary: Mapping[str, Any]) -> dict[str, str]:
    """The entries for a result: ``spec`` a PruneSpec (or a dict), ``source`` the file the user
    gave, ``summary`` the figures of :class:`pruning_core.api.PruneResult`."""
    spec_json = spec.model_dump_json() if hasattr(spec, "model_dump_json") else json.dumps(spec, sort_keys=True)
    figures = {
        "params": {"before": summary.get("params_before"), "after": summary.get("params_after")},
        "macs": {"before": summary.get("macs_before"), "after": summary.get("macs_after")},
        "latency_ms": {"before": summary.get("latency_ms_before"), "after": summary.get("latency_ms_after")},
        "verify_max_error": summary.get("verify_max_error"),
    }
    return {f"{PREFIX}version": version(), f"{PREFIX}spec": spec_json,
            f"{PREFIX}source_sha256": sha256(source), f"{PREFIX}figures": json.dumps(figures)}


def read(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without parsing its graph."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return {e.key: e.value for _, e in _entries(mm)}


def stamp(path: str | os.PathLike[str], entries: Mapping[str, str]) -> None:
    """Set ``entries`` in the ``metadata_props`` of the ONNX file at ``path``, in place; other
    entries are kept. Neither the graph nor the weights are parsed or loaded."""
    path = Path(path)
    tail = ModelProto()
    for k, v in entries.items():
        tail.metadata_props.add(key=k, value=v)
    new = tail.SerializeToString()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            stale = [(fs, fe) for (fs, fe), e in _entries(mm) if e.key in entries]
            if not stale:
                cut = None
            else:  # copy every top-level field but the stale entries, then append the new ones
                cut = path.with_name(path.name + ".stamp")
                try:
                    with open(cut, "wb") as out:
                        pos = 0
                        for fs, fe in stale:
                            _copy(mm, pos, fs, out)
                            pos = fe
                        _copy(mm, pos, size, out)
                        out.write(new)
                except BaseException:
                    cut.unlink(missing_ok=True)
                    raise
    if cut is not None:
        os.replace(cut, path)
    else:
        with open(path, "ab") as f:
            f.write(new)


def _entries(mm: mmap.mmap):
    """((field start, field end), entry) of every top-level metadata_props field."""
    if not len(mm):
        return
    for field, wt, fs, ps, fe in _fields(mm, 0, len(mm)):
        if field == MODEL_METADATA_PROPS and wt == LEN:
            yield (fs, fe), StringStringEntryProto.FromString(mm[ps:fe])


def _copy(mm: mmap.mmap, start: int, end: int, out) -> None:
    step = 1 << 24
    for pos in range(start, end, step):
        out.write(mm[pos:min(end, pos + step)])
