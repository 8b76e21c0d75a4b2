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


def test_artifacts_come_from_the_bucket_with_presigned_urls(
    s3_endpoint: str, backend: Any, new_key: Any, zoo: dict[str, Path], tmp_path: Path
) -> None:
    """SPA_S3_PRESIGN_TTL_S > 0: a GET of an artifact is a 307 to a presigned URL (the bytes never
    pass through the API); the bucket serves them with the API's name and media type and honours a
    Range; HEAD and ?redirect=false still answer from the API; the Python client follows, and
    does not send its API key to the bucket."""
    import httpx
    import sqlalchemy as sa

    from app.core.db.models import Job
    from app.core.db.session import session_scope
    from client.http import SpaClient

    bucket = f"spa-presign-{os.urandom(4).hex()}"
    _bucket(s3_endpoint, bucket)
    settings = backend.settings("idle", storage="s3", s3_bucket=bucket, s3_endpoint_url=s3_endpoint,
                                s3_presign_ttl_s=300)
    auth = new_key("presign-user")
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "a").write_bytes(data)
    make_store(settings).put_file(tmp_path / "a", sha)
    with make_client(settings) as api:
        mid = upload(api, auth, zoo["tiny"]).json()["id"]
        job = api.post("/v1/jobs", headers=auth, json={"model_id": mid, "spec": {"target": {"flops": 0.3}}}).json()
        with session_scope(settings.database_url) as s:
            s.execute(sa.update(Job).where(Job.id == job["id"]).values(
                state="succeeded", artifacts={"pruned.onnx": {"sha256": sha, "size": len(data)},
                                              "report.json": {"sha256": sha, "size": len(data)}}))  # fmt: skip
        url = f"/v1/jobs/{job['id']}/artifacts/pruned.onnx"
        r = api.get(url, headers=auth, follow_redirects=False)
        assert r.status_code == 307 and r.content == b"", (r.status_code, r.text[:200])
        location = r.headers["location"]
        assert location.startswith(f"{s3_endpoint}/{bucket}/sha256/")
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
        assert r.headers["etag"] == f'"{sha}"'
        assert api.get(url, follow_redirects=False).status_code == 401  # no key, no URL

        got = httpx.get(location, timeout=30)
        assert got.status_code == 200 and got.content == data
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-disposition"] == 'attachment; filename="pruned.onnx"'
        part = httpx.get(location, headers={"Range": "bytes=100-199"}, timeout=30)
        assert part.status_code == 206 and part.content == data[100:200]
        report = api.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=auth, follow_redirects=False)
        assert "response-content-type=application%2Fjson" in report.headers["location"]

        head = api.head(url, headers=auth)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        streamed = api.get(url + "?redirect=false", headers=auth)
        assert streamed.status_code == 200 and streamed.content == data
        assert api.get(url, headers={**auth, "If-None-Match": f'"{sha}"'}, follow_redirects=False).status_code == 304

        # the client follows the 307; httpx strips Authorization when the origin changes
        sent: list[httpx.Request] = []
        transport = httpx.HTTPTransport()

        class Recording(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                sent.append(request)
                if request.url.host == "testserver":
                    r = api.request(request.method, str(request.url), headers=dict(request.headers),
                                    follow_redirects=False)
                    return httpx.Response(r.status_code, headers=r.headers, content=r.content)
                return transport.handle_request(request)

        with SpaClient("http://testserver", auth["Authorization"].split()[1],
                       http=httpx.Client(base_url="http://testserver", transport=Recording())) as client:
            [path] = client.download(job["id"], tmp_path / "out", names=["pruned.onnx"])
        assert path.read_bytes() == data
        to_bucket = [q for q in sent if q.url.host != "testserver"]
        assert to_bucket and all("authorization" not in q.headers for q in to_bucket)
    # the streaming default is unchanged
    with make_client(backend.settings("idle", storage="s3", s3_bucket=bucket, s3_endpoint_url=s3_endpoint)) as api:
        assert api.get(url, headers=auth, follow_redirects=False).status_code == 200


def test_presigned_urls_name_the_public_endpoint(s3_endpoint: str, tmp_path: Path) -> None:
    """Behind compose the API reaches MinIO as http://minio:9000, clients another way: the URL is
    signed for SPA_S3_PUBLIC_ENDPOINT_URL; with presigning off there is no URL at all."""
    common = {"endpoint_url": s3_endpoint, "region": "us-east-1", "prefix": "", "staging_dir": tmp_path}
    public = S3Store("b", presign_ttl_s=60, public_endpoint_url="https://files.example.test", **common)
    url = public.presigned_url("a" * 64, "pruned.onnx", "application/octet-stream")
    assert url is not None and url.startswith(f"https://files.example.test/b/{blob_key('a' * 64)}?")
    assert S3Store("b", **common).presigned_url("a" * 64, "x", "y") is None
    assert LocalStore(tmp_path / "blobs").presigned_url("a" * 64, "x", "y") is None
