"""The arrays of an .npz from its headers alone: names, shapes and dtypes, with the declared sizes
checked before anything is allocated. Used by the API (at upload) and by ``data.load_npz``.

numpy and the stdlib only; no pickle (object arrays are refused: loading them would unpickle).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from pruning_core.frontends.zipsafe import UnsafeZip, check_zip


class BadNpz(ValueError):
    """Not an .npz of plain numeric arrays, or one that declares more than it may."""


class _Counting:
    """A reader that counts what it hands out: the .npy header's length, for any header version."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.n = fh, 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.n += len(data)
        return data


def read_npz_header(
    path: Path, *, max_unpacked: int, max_ratio: float | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": [...], "dtype": "float32"}}`` of every array; BadNpz with the reason.

    Refused besides the zip checks: members that are not .npy, non-numeric dtypes, and an array
    whose declared shape x itemsize is above ``max_unpacked`` or more than its member holds."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError) as e:
        raise BadNpz(f"not an .npz file ({e})") from None
    arrays: dict[str, dict[str, Any]] = {}
    with zf:
        try:
            files = check_zip(zf, max_unpacked=max_unpacked, max_ratio=max_ratio)
        except UnsafeZip as e:
            raise BadNpz(str(e)) from None
        for info in files:
            if not info.filename.endswith(".npy"):
                raise BadNpz(f"member {info.filename!r} is not an .npy array")
            name = info.filename[: -len(".npy")]
            shape, dtype, header_len = _array_header(zf, info, name)
            if dtype.hasobject:
                raise BadNpz(f"array {name!r} holds Python objects; only numeric arrays are accepted")
            if dtype.kind not in "biufc":
                raise BadNpz(f"array {name!r} has non-numeric dtype {dtype}")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
            if declared > max_unpacked:
                raise BadNpz(
                    f"array {name!r} declares {declared} bytes, more than the limit of {max_unpacked}"
                )
            if declared > info.file_size - header_len:
                raise BadNpz(
                    f"array {name!r} declares {declared} bytes but its member holds "
                    f"{max(info.file_size - header_len, 0)}"
                )
            arrays[name] = {"shape": [int(d) for d in shape], "dtype": str(np.dtype(dtype))}
    if not arrays:
        raise BadNpz("the .npz holds no arrays")
    return arrays


def _array_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str
) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length in bytes) of one .npy member, reading only its header."""
    try:
        with zf.open(info) as raw:
            fh = _Counting(raw)
            version = npy_format.read_magic(fh)  # type: ignore[arg-type]
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)  # type: ignore[arg-type]
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(fh)  # type: ignore[arg-type]
            else:
                raise BadNpz(f"array {name!r}: unsupported .npy version {version}")
    except (ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
        if isinstance(e, BadNpz):
            raise
        raise BadNpz(f"array {name!r} has an unreadable .npy header ({e})") from None
    return tuple(shape), np.dtype(dtype), fh.n
