"""API load figures with a loopback client (run by hand, not in CI):

    python -m bench.api_load                       # starts its own `spa serve` in a temp dir
    python -m bench.api_load --server URL --api-key KEY

Measures requests per second for job polling (GET /v1/jobs/{id}, several client threads) and
upload throughput (POST /v1/models of distinct random files, streamed to the blob store).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.demo import free_port, start_server, stop_server, wait_ready


def poll_rps(
    url: str, headers: dict[str, str], job_id: str, threads: int, seconds: float
) -> tuple[float, float, int]:
    counts = [0] * threads
    errors = [0] * threads
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.get(f"/v1/jobs/{job_id}")
                latencies.append(time.perf_counter() - t)
                if r.status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    return sum(counts) / seconds, p50, sum(errors)


def upload_mb_s(url: str, headers: dict[str, str], size_mb: int, count: int, tmp: Path) -> float:
    files = []
    for i in range(count):
        p = tmp / f"blob{i}.onnx"
        p.write_bytes(b"\x08\x07" + os.urandom(size_mb * 1024 * 1024))  # distinct: no dedup shortcut
        files.append(p)
    with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
        start = time.perf_counter()
        for p in files:
            with p.open("rb") as fh:
                r = c.post("/v1/models", files={"file": (p.name, fh)})
            r.raise_for_status()
        elapsed = time.perf_counter() - start
    return size_mb * count / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server")
    ap.add_argument("--api-key", default=os.environ.get("SPA_API_KEY", ""))
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--upload-mb", type=int, default=64)
    ap.add_argument("--uploads", type=int, default=4)
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    with tempfile.TemporaryDirectory(prefix="spa-load-") as tmp_s:
        tmp = Path(tmp_s)
        proc = None
        url = args.server
        if not url:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(tmp / "data", port, tmp / "serve.log")
        try:
            if proc is not None:
                wait_ready(url, proc, tmp / "serve.log")
            from tests.service.modelzoo import tiny_cnn

            model = tiny_cnn(tmp / "tiny.onnx")
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                with model.open("rb") as fh:
                    mid = c.post("/v1/models", files={"file": ("tiny.onnx", fh)}).json()["id"]
                job = c.post("/v1/jobs", json={"model_id": mid, "spec": {"target": {"flops": 0.5}}}).json()
            rps, p50, errors = poll_rps(url, headers, job["id"], args.threads, args.seconds)
            print(
                f"job polling: {rps:,.0f} requests/s with {args.threads} client threads, p50 {p50:.1f} ms, {errors} errors"
            )
            mbs = upload_mb_s(url, headers, args.upload_mb, args.uploads, tmp)
            print(f"upload: {mbs:,.0f} MB/s ({args.uploads} x {args.upload_mb} MB, one client)")
        finally:
            if proc is not None:
                stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
