"""Read the array names, shapes and dtypes of an .npz from its headers, without loading data and
without pickle (object arrays are refused: loading them would unpickle)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from app.zipcheck import UnsafeZip, check_zip

NAME_OK = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")


class BadNpz(ValueError):
    pass


def read_npz_header(path: Path, *, max_unpacked: int) -> dict[str, dict[str, Any]]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise BadNpz(f"not an .npz file: {e}") from e
    arrays: dict[str, dict[str, Any]] = {}
    with zf:
        try:
            files = check_zip(zf, max_unpacked=max_unpacked)
        except UnsafeZip as e:
            raise BadNpz(str(e)) from e
        for info in files:
            if not info.filename.endswith(".npy"):
                raise BadNpz(f"member {info.filename!r} is not an .npy array")
            name = info.filename[: -len(".npy")]
            if not NAME_OK.match(name):
                raise BadNpz(f"array name {name!r} is not allowed")
            with zf.open(info) as fh:
                try:
                    version = npy_format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = npy_format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = npy_format.read_array_header_2_0(fh)
                    else:
                        raise BadNpz(f"array {name!r}: unsupported .npy version {version}")
                except ValueError as e:
                    raise BadNpz(f"array {name!r}: {e}") from e
            if dtype.hasobject:
                raise BadNpz(f"array {name!r} holds Python objects; only numeric arrays are accepted")
            if dtype.kind not in "biufc":
                raise BadNpz(f"array {name!r} has non-numeric dtype {dtype}")
            arrays[name] = {"shape": [int(d) for d in shape], "dtype": str(np.dtype(dtype))}
    if not arrays:
        raise BadNpz("the .npz holds no arrays")
    return arrays


def check_names(arrays: dict[str, Any], model_summary: dict[str, Any] | None) -> None:
    """The arrays must be named after the model's inputs (plus optional 'labels')."""
    if not model_summary or not model_summary.get("inputs"):
        return
    inputs = {i["name"] for i in model_summary["inputs"]}
    missing = sorted(inputs - arrays.keys())
    unknown = sorted(arrays.keys() - inputs - {"labels"})
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing arrays for model inputs {missing}")
        if unknown:
            parts.append(f"arrays {unknown} match no model input (allowed extra: 'labels')")
        raise BadNpz("; ".join(parts))
