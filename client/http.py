"""SpaClient: a small synchronous HTTP client for the SPA service (httpx)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_SERVER = "http://127.0.0.1:8000"


class SpaError(Exception):
    """An error answer from the service (problem+json), or no answer at all (status 0)."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, body: dict[str, Any] | None = None
    ) -> None:
        # status 0: no answer from the service, nothing to number
        super().__init__((f"{status} " if status else "") + title + (f": {detail}" if detail else ""))
        self.status, self.title, self.detail, self.body = status, title, detail, body or {}


class SpaClient:
    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.server = (server or os.environ.get("SPA_SERVER") or DEFAULT_SERVER).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("SPA_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if http is None:
            http = httpx.Client(base_url=self.server, timeout=timeout, headers=headers)
        else:
            http.headers.update(headers)
        self.http = http

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SpaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise SpaError(0, "cannot reach the server", f"{self.server}: {e}") from e
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise SpaError(
                response.status_code,
                body.get("title") or response.reason_phrase,
                body.get("detail") or (response.text[:200] if not body else None),
                body,
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _upload(self, path: str, file: Path, fields: dict[str, str] | None = None) -> dict[str, Any]:
        with file.open("rb") as fh:
            return self._json(
                "POST", path, data=fields or {}, files={"file": (file.name, fh, "application/octet-stream")}
            )

    # -- resources ----------------------------------------------------------------------------

    def upload_model(self, file: str | Path) -> dict[str, Any]:
        """An .onnx whose weights live in external-data files is sent zipped with them
        (``client.bundle``); .zip / .pt2 files as they are."""
        from client.bundle import BundleError, bundle

        with tempfile.TemporaryDirectory(prefix="spa-upload-") as tmp:
            try:
                sent = bundle(Path(file), Path(tmp))
            except BundleError as e:
                raise SpaError(0, "cannot send the model", str(e)) from None
            return self._upload("/v1/models", sent)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}")

    def model_groups(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}/groups")

    def list_models(self, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/models", params=_drop_none(limit=limit, cursor=cursor))

    def list_datasets(self, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/datasets", params=_drop_none(limit=limit, cursor=cursor))

    def upload_dataset(self, file: str | Path, model_id: str | None = None) -> dict[str, Any]:
        return self._upload("/v1/datasets", Path(file), {"model_id": model_id} if model_id else None)

    def submit(
        self,
        model_id: str,
        spec: dict[str, Any] | None = None,
        *,
        dataset_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _drop_none(model_id=model_id, spec=spec or {}, dataset_id=dataset_id)
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(
        self, limit: int = 50, cursor: str | None = None, state: str | None = None
    ) -> dict[str, Any]:
        return self._json("GET", "/v1/jobs", params=_drop_none(limit=limit, cursor=cursor, state=state))

    def iter_jobs(self, state: str | None = None) -> Iterator[dict[str, Any]]:
        cursor = None
        while True:
            page = self.list_jobs(limit=200, cursor=cursor, state=state)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def events(self, job_id: str, after: int = 0) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}/events", params={"after": after})

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is final; returns the final job. TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll)

    def download(self, job_id: str, dest_dir: str | Path, names: list[str] | None = None) -> list[Path]:
        """Download the job's artifacts (all, or ``names``) into ``dest_dir``; returns the paths."""
        job = self.get_job(job_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for art in job["artifacts"]:
            if names and art["name"] not in names:
                continue
            target = dest / Path(art["name"]).name  # the server checks names; never trust a path
            part = target.with_name(target.name + ".part")
            try:
                # a 307 to a presigned S3 URL: httpx drops the Authorization header on another origin
                with self.http.stream("GET", art["url"], follow_redirects=True) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise SpaError(response.status_code, response.reason_phrase, response.text[:200])
                    with part.open("wb") as fh:
                        for chunk in response.iter_bytes(1024 * 1024):
                            fh.write(chunk)
            except httpx.HTTPError as e:
                part.unlink(missing_ok=True)
                raise SpaError(0, "download failed", str(e)) from e
            part.replace(target)
            out.append(target)
        return out

    def ready(self) -> dict[str, Any]:
        return self._json("GET", "/readyz")


def _drop_none(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}
