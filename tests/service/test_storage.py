"""The blob store contract, on a local directory and on S3 (moto's real HTTP server on loopback),
and the API storing uploads and artifacts in S3."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.storage import BlobStore, LocalStore, S3Store, StagedFile, TooLarge, blob_key, make_store
from tests.service.conftest import free_port, make_client, problem, upload


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(var, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"spa-{os.urandom(4).hex()}"
    _bucket(endpoint, bucket)
    return S3Store(
        bucket, endpoint_url=endpoint, region="us-east-1", prefix="p/", staging_dir=tmp_path / "staging"
    )


def _stage(store: BlobStore, data: bytes, limit: int = 1 << 20) -> tuple[StagedFile, str]:
    staged = store.stage(limit)
    for i in range(0, len(data), 7000):
        staged.write(data[i : i + 7000])
    return staged, staged.finish()


def test_store_contract(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    staged, sha = _stage(store, data)
    assert sha == hashlib.sha256(data).hexdigest() and staged.size == len(data)
    assert not store.exists(sha)
    store.put_file(staged.path, sha)
    assert not staged.path.exists()  # published, the staging copy is gone
    assert store.exists(sha) and store.size(sha) == len(data)
    assert b"".join(store.iter_bytes(sha)) == data
    # byte ranges (the artifact route's Range): a slice, most of it, to the end
    assert b"".join(store.iter_bytes(sha, 10, 20)) == data[10:30]
    assert b"".join(store.iter_bytes(sha, 5, 90_000)) == data[5:90_005]
    assert b"".join(store.iter_bytes(sha, 99_990)) == data[99_990:]
    store.fetch(sha, tmp_path / "copy" / "x.bin")
    assert (tmp_path / "copy" / "x.bin").read_bytes() == data
    again, sha2 = _stage(store, data)  # same bytes again: idempotent
    store.put_file(again.path, sha2)
    assert sha2 == sha and store.size(sha) == len(data)
    store.check()
    store.delete(sha)
    assert not store.exists(sha)
    with pytest.raises(FileNotFoundError):
        store.size(sha)


def test_staging_limit_and_discard(store: BlobStore) -> None:
    staged = store.stage(10)
    staged.write(b"12345")
    with pytest.raises(TooLarge):
        staged.write(b"678901")
    staged.discard()
    assert not staged.path.exists()


def test_keys_are_digests_only() -> None:
    assert blob_key("a" * 64) == f"sha256/aa/{'a' * 64}"
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, "model.onnx"):
        with pytest.raises(ValueError):
            blob_key(bad)


def test_api_on_s3(
    s3_endpoint: str, backend: Any, new_key: Any, zoo: dict[str, Path], tmp_path: Path
) -> None:
    import boto3

    bucket = f"spa-api-{os.urandom(4).hex()}"
    _bucket(s3_endpoint, bucket)
    settings = backend.settings(
        "idle", storage="s3", s3_bucket=bucket, s3_endpoint_url=s3_endpoint, max_upload_bytes=1_000_000
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    auth = new_key("s3-user")
    with make_client(settings) as api:
        r = upload(api, auth, zoo["tiny"])
        assert r.status_code == 201, r.text
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == [blob_key(r.json()["sha256"])]
        assert api.get("/readyz").json()["checks"]["storage"] == "ok"
        big = tmp_path / "big.onnx"
        big.write_bytes(b"\x08\x07" + b"\x00" * 1_100_000)
        problem(upload(api, auth, big), 413)
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == keys
    assert isinstance(make_store(Settings(**{**settings.model_dump(), "storage": "local"})), LocalStore)
