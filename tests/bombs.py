"""Hostile archives for the bounded-input tests (core and service): cheap to build, they declare
or unpack to far more than they weigh."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from numpy.lib import format as npy_format

MiB = 1024**2


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def lie_about_sizes(archive: bytes, sizes: dict[str, int]) -> bytes:
    """Rewrite the uncompressed sizes the central directory declares (the local headers keep theirs)."""
    buf = bytearray(archive)
    eocd = buf.rfind(b"PK\x05\x06")
    count = int.from_bytes(buf[eocd + 10 : eocd + 12], "little")
    pos = int.from_bytes(buf[eocd + 16 : eocd + 20], "little")
    for _ in range(count):
        assert buf[pos : pos + 4] == b"PK\x01\x02"
        n, m, k = (int.from_bytes(buf[pos + o : pos + o + 2], "little") for o in (28, 30, 32))
        name = bytes(buf[pos + 46 : pos + 46 + n]).decode()
        if name in sizes:
            buf[pos + 24 : pos + 28] = sizes[name].to_bytes(4, "little")
        pos += 46 + n + m + k
    return bytes(buf)


def declared_4gib_zip() -> bytes:
    """A 4 MiB archive whose directory declares 4 GiB (a model.onnx and two weight files)."""
    raw = zip_bytes({"model.onnx": b"\x08\x07", "a.bin": b"\x01" * (2 * MiB), "b.bin": b"\x02" * (2 * MiB)})
    return lie_about_sizes(raw, {"a.bin": 0xF000_0000, "b.bin": 0x1000_0000})


def zeros_bomb(path: Path, unpacked: int) -> Path:
    """A real deflate bomb, streamed 1 MiB at a time (zeros compress ~1000x)."""
    chunk = bytes(MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", b"\x08\x07")
        with zf.open("weights.bin", "w", force_zip64=True) as fh:
            for _ in range(unpacked // MiB):
                fh.write(chunk)
    return path


def lying_npz(path: Path, shape: tuple[int, ...], name: str = "x") -> Path:
    """An .npz whose one array header declares ``shape`` float32, followed by 16 bytes of data."""
    npy = io.BytesIO()
    npy_format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": shape})
    npy.write(bytes(16))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", npy.getvalue())
    return path
