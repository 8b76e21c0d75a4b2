"""An ONNX model with its external-data files, as one upload.

torch 2.x's ``torch.onnx.export`` writes the weights beside the graph (``model.onnx.data``).
Uploading the graph alone fails on the worker ("external data file ... is missing"), so the
client sends ``model.onnx`` and every data file it names, zipped. The base install has no onnx
package: the locations are found by their protobuf encoding. Each external tensor carries an entry
``{key: "location", value: <path>}``, a fixed byte pattern followed by a length-prefixed string.
A match inside weight bytes could only add a name that is not a file next to the model, and such
a name is ignored. The paths are checked as the worker checks them: relative, inside the model's
folder."""

from __future__ import annotations

import mmap
import os
import tempfile
import zipfile
from pathlib import Path

# StringStringEntryProto: field 1 (key, length 8) "location", then field 2 (value, length-delimited)
_LOCATION = b"\x0a\x08location\x12"


class BundleError(Exception):
    """The model names data files that cannot be sent (outside its folder, missing)."""


def _varint(buf: mmap.mmap | bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(buf) and shift < 64:
        b = buf[at]
        value |= (b & 0x7F) << shift
        at += 1
        if not b & 0x80:
            return value, at
        shift += 7
    raise ValueError("truncated varint")


def data_files(model: Path) -> list[str]:
    """Relative paths of the external-data files ``model`` names, in first-seen order."""
    if model.suffix.lower() != ".onnx" or not model.is_file() or model.stat().st_size == 0:
        return []
    found: list[str] = []
    with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        at = mm.find(_LOCATION)
        while at >= 0:
            try:
                n, start = _varint(mm, at + len(_LOCATION))
                loc = mm[start:start + n].decode("utf-8") if 0 < n <= 4096 else ""
            except (ValueError, UnicodeDecodeError):
                loc = ""
            if loc and loc not in found:
                found.append(loc)
            at = mm.find(_LOCATION, at + 1)
    base = model.resolve().parent
    out = []
    for loc in found:
        target = (base / loc).resolve()
        if os.path.isabs(loc) or ".." in Path(loc).parts or base not in target.parents:
            raise BundleError(f"{model.name} names external data {loc!r} outside its folder; "
                              "move the data file next to the model and re-export")
        if target.is_file():
            out.append(loc)
        elif loc.endswith((".data", ".bin", ".weights")) or "." not in Path(loc).name:
            raise BundleError(f"{model.name} keeps its weights in {loc!r}, which is not next to it; "
                              "put the data file beside the model and try again")
    return out


def bundle(model: Path, workdir: Path | None = None) -> Path:
    """``model`` itself when it has no external data; else a .zip of it and its data files
    (stored, not compressed: weights do not compress), in ``workdir`` (a new temp folder)."""
    files = data_files(model)
    if not files:
        return model
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="spa-upload-"))
    out = folder / (model.stem + ".zip")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        z.write(model, model.name)
        for loc in files:
            z.write(model.parent / loc, Path(loc).as_posix())
    return out
