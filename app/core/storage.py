"""Content-addressed blob store: a blob's name is the sha256 of its bytes, never a client's file
name, so no upload can choose a path and identical uploads share one copy.

Two backends behind one interface: a local directory (embedded mode) and S3-compatible object
storage (production: AWS, MinIO; tested against moto's server). Uploads are first streamed to a
local staging file while hashing; only a complete, size-checked file is ever published, so a failed
or oversized upload leaves nothing behind.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from app.core.config import Settings

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TooLarge(Exception):
    """The stream went past the size limit."""


def blob_key(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"sha256/{sha256[:2]}/{sha256}"


class StagedFile:
    """A temporary file filled chunk by chunk, hashed on the way, with a hard size limit."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.head = b""  # first bytes, for the cheap format sniffing of uploads

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"upload larger than the limit of {self.limit} bytes")
        if len(self.head) < 64:
            self.head += chunk[: 64 - len(self.head)]
        self._hash.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> str:
        self._fh.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


class BlobStore(Protocol):
    staging_dir: Path

    def put_file(self, path: Path, sha256: str) -> None:
        """Publish a complete local file under its digest (moves it; idempotent)."""

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int: ...

    def fetch(self, sha256: str, dest: Path) -> None:
        """Copy the blob to a local path (the worker needs a real file)."""

    def iter_bytes(self, sha256: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The blob's bytes, or ``length`` of them from ``start`` (an HTTP Range)."""
        ...

    def delete(self, sha256: str) -> None: ...

    def presigned_url(self, sha256: str, filename: str, media_type: str) -> str | None:
        """A time-limited URL the client fetches the bytes from itself; None: stream them."""
        return None

    def check(self) -> None:
        """Raise when the store is not usable (readiness probe)."""

    def stage(self, limit: int) -> StagedFile:
        return StagedFile(self.staging_dir, limit)


class LocalStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging_dir = root / ".staging"  # same filesystem: publishing is an atomic rename

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def put_file(self, path: Path, sha256: str) -> None:
        dest = self._path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            path.unlink(missing_ok=True)
            return
        os.replace(path, dest)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self._path(sha256).stat().st_size

    def fetch(self, sha256: str, dest: Path) -> None:
        src = self._path(sha256)
        if not src.is_file():
            raise FileNotFoundError(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)  # no copy for multi-GB models; blobs are never modified in place
        except OSError:
            with src.open("rb") as fi, dest.open("wb") as fo:
                while chunk := fi.read(CHUNK):
                    fo.write(chunk)

    def iter_bytes(self, sha256: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        left = length
        with self._path(sha256).open("rb") as fh:
            fh.seek(start)
            while (left is None or left > 0) and (chunk := fh.read(CHUNK if left is None else min(CHUNK, left))):
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def check(self) -> None:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        probe = self.staging_dir / ".probe"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3Store(BlobStore):
    def __init__(
        self, bucket: str, *, endpoint_url: str | None, region: str, prefix: str, staging_dir: Path,
        presign_ttl_s: int = 0, public_endpoint_url: str | None = None,
    ) -> None:
        import boto3  # only needed in S3 deployments
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.staging_dir = staging_dir
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.presign_ttl_s = presign_ttl_s
        self._signer_args = {"endpoint_url": public_endpoint_url or endpoint_url, "region_name": region}

    def _key(self, sha256: str) -> str:
        return self.prefix + blob_key(sha256)

    def put_file(self, path: Path, sha256: str) -> None:
        try:
            if not self.exists(sha256):
                self.client.upload_file(str(path), self.bucket, self._key(sha256))
        finally:
            path.unlink(missing_ok=True)

    def _head(self, sha256: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(sha256)
        return int(head["ContentLength"])

    def fetch(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(sha256), str(dest))

    def iter_bytes(self, sha256: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        ranged = {} if start == 0 and length is None else {
            "Range": f"bytes={start}-{'' if length is None else start + length - 1}"
        }  # fmt: skip
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256), **ranged)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    @functools.cached_property
    def signer(self) -> Any:
        """A client only for signing, made on first use (a store is made per sweep and per task).
        A signature covers the host: URLs are signed for the endpoint clients reach, with SigV4,
        which every region and MinIO accept (boto3 may default presigning to SigV2)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                            **self._signer_args)

    def presigned_url(self, sha256: str, filename: str, media_type: str) -> str | None:
        if self.presign_ttl_s <= 0:
            return None
        # signing is local (no request); the bucket answers with the API's own name and media type
        return self.signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(sha256), "ResponseContentType": media_type,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'},
            ExpiresIn=self.presign_ttl_s,
        )

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def make_store(settings: Settings) -> BlobStore:
    assert settings.storage_dir is not None
    if settings.storage == "s3":
        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            staging_dir=settings.data_dir / "staging",
            presign_ttl_s=settings.s3_presign_ttl_s,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    return LocalStore(settings.storage_dir)
