"""Zip member checks shared by the API (reject at upload) and the worker (extract safely).

Pure standard library: reading a zip's central directory is not parsing a model.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

MAX_MEMBERS = 10_000


class UnsafeZip(ValueError):
    """A member would land outside the extraction dir, or the archive is a bomb / not a zip."""


def check_member_name(name: str) -> PurePosixPath:
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeZip(f"zip member {name!r} has an absolute path")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise UnsafeZip(f"zip member {name!r} points outside the archive ('..')")
    if "\x00" in name:
        raise UnsafeZip("zip member name holds a NUL byte")
    return path


def check_zip(zf: zipfile.ZipFile, *, max_unpacked: int) -> list[zipfile.ZipInfo]:
    """Validate every member of an open archive; returns the file members."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeZip(f"zip has {len(infos)} members (limit {MAX_MEMBERS})")
    total = 0
    files = []
    for info in infos:
        check_member_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeZip(f"zip member {info.filename!r} is a symbolic link")
        if info.is_dir():
            continue
        total += info.file_size
        if total > max_unpacked:
            raise UnsafeZip(f"zip unpacks to more than {max_unpacked} bytes")
        files.append(info)
    return files


def safe_extract(archive: Path, dest: Path, *, max_unpacked: int) -> list[Path]:
    """Extract with the checks above, and a final resolved-path check as a second fence."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise UnsafeZip(f"not a valid zip archive: {e}") from e
    with zf:
        files = check_zip(zf, max_unpacked=max_unpacked)
        root = dest.resolve()
        out: list[Path] = []
        for info in files:
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise UnsafeZip(f"zip member {info.filename!r} points outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(info) as src, target.open("wb") as dst:
                while chunk := src.read(1024 * 1024):
                    written += len(chunk)
                    if written > info.file_size:  # the directory lied about the size
                        raise UnsafeZip(f"zip member {info.filename!r} is larger than it declares")
                    dst.write(chunk)
            out.append(target)
        return out
