"""User zip archives: checked from the central directory, extracted with hard limits.

The one zip module of the project: the API refuses bad archives at upload (``check_zip``), the
worker and the CLI extract with ``safe_extract``. Stdlib only: reading a zip's directory is not
parsing a model. The directory can lie, so extraction also counts the bytes it really writes.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pruning_core.ir import limits

MAX_MEMBERS = 10_000
CHUNK = 1024 * 1024
# Errors zipfile raises on a corrupt member (bad CRC, bad deflate data, unknown compression method).
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


class UnsafeZip(ValueError):
    """Not a zip, a member that would land outside the target, or a bomb (too big, too packed)."""


def check_member_name(name: str) -> PurePosixPath:
    if "\x00" in name:
        raise UnsafeZip("a zip member name holds a NUL byte")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeZip(f"zip member {name!r} has an unsafe path (it is absolute)")
    if "\\" in name:  # a Windows separator: where it lands depends on the extracting OS
        raise UnsafeZip(f"zip member {name!r} has an unsafe path (it holds a backslash)")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeZip(f"zip member {name!r} has an unsafe path (it climbs out with '..')")
    return path


def archive_size(zf: zipfile.ZipFile) -> int:
    """Size in bytes of the archive behind an open ZipFile (a file or an in-memory buffer)."""
    fp = zf.fp
    assert fp is not None, "the ZipFile is closed"
    try:
        return os.fstat(fp.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pos = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(pos)
        return end


def check_zip(
    zf: zipfile.ZipFile, *, max_unpacked: int, max_ratio: float | None = None, packed: int | None = None
) -> list[zipfile.ZipInfo]:
    """Validate every member of an open archive from its directory; returns the file members.

    Refused: too many members, unsafe names, symbolic links, encrypted members, a declared total
    above ``max_unpacked``, and (above ``limits.RATIO_FLOOR``) a declared total more than
    ``max_ratio`` times the archive's size: a few MB must not cost the worker gigabytes.
    """
    ratio = limits.max_zip_ratio() if max_ratio is None else max_ratio
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeZip(f"the zip has {len(infos)} members, more than the limit of {MAX_MEMBERS}")
    total = 0
    files = []
    for info in infos:
        check_member_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeZip(f"zip member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise UnsafeZip(f"zip member {info.filename!r} is encrypted")
        if info.is_dir():
            continue
        total += info.file_size
        files.append(info)
    if total > max_unpacked:
        raise UnsafeZip(f"the zip unpacks to {total} bytes, more than the limit of {max_unpacked} bytes")
    size = archive_size(zf) if packed is None else packed
    if total > limits.RATIO_FLOOR and total > ratio * max(size, 1):
        raise UnsafeZip(
            f"the zip unpacks to {total} bytes from {size}, a compression ratio above the limit of {ratio:g}"
        )
    return files


def safe_extract(
    archive: Path, dest: Path, *, max_unpacked: int | None = None, max_ratio: float | None = None
) -> list[Path]:
    """Extract the file members of ``archive`` under ``dest`` after ``check_zip``; returns their paths.

    Limits default to ``pruning_core.ir.limits`` (SPA_MAX_UNPACKED_BYTES, SPA_MAX_ZIP_RATIO). Whatever
    the directory declares, no member is written past its declared size and the archive past its
    declared total; a refused member's partial file is removed.
    """
    cap = limits.max_unpacked_bytes() if max_unpacked is None else max_unpacked
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, ValueError) as e:
        raise UnsafeZip(f"{archive.name} is not a valid zip archive ({e})") from None
    with zf:
        files = check_zip(zf, max_unpacked=cap, max_ratio=max_ratio, packed=os.path.getsize(archive))
        budget = sum(i.file_size for i in files)  # <= cap: checked above
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        out: list[Path] = []
        for info in files:
            target = (root / info.filename).resolve()
            if target == root or not target.is_relative_to(root):  # second fence after the name check
                raise UnsafeZip(f"zip member {info.filename!r} has an unsafe path (it leaves the target)")
            budget -= _write_member(zf, info, target, budget)
            out.append(target)
        return out


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copy one member, counting real bytes; returns how many were written."""
    allowed = min(info.file_size, budget)
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as dst:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > allowed:
                    raise UnsafeZip(f"zip member {info.filename!r} is larger than its declared size")
                dst.write(chunk)
    except UnsafeZip:
        target.unlink(missing_ok=True)
        raise
    except _CORRUPT as e:
        target.unlink(missing_ok=True)
        raise UnsafeZip(f"zip member {info.filename!r} is corrupt ({e})") from None
    except (FileExistsError, IsADirectoryError, NotADirectoryError):  # "a" and "a/b" both members
        raise UnsafeZip(f"zip member {info.filename!r} clashes with another member's path") from None
    return written
