"""`make demo`: the whole product in one run, on a fresh machine.

Trains a small residual CNN on scikit-learn's digits (upsampled to 32x32; about 47 M MACs, so that
onnxruntime latency is well above timer noise) for a fixed number of epochs, exports it to ONNX,
starts `spa serve` on a free loopback port in a temporary directory, uploads the model, the
training digits (calibration data) and the held-out digits (evaluation set), and submits jobs that
each remove 50 % of the FLOPs, for onnxruntime on one CPU thread at batch 1, none fine-tuned:

- ``l1``, data-free: the naive baseline (weight magnitude, no refit);
- ``obspa``, data-free: Optimal-Brain-Surgeon scores and a closed-form refit of the kept weights,
  on generated inputs;
- ``obspa`` calibrated on the training digits: the same on real inputs (the best here).

``SPA_DEMO_RECOVER_STEPS=N`` adds a job with N distillation steps after obspa (``recover``); off by
default: on this net it costs more time than the rest together and does not beat obspa alone.

It waits with a progress bar, downloads each pruned model and its report.json, stops the server
(always, also on error), and prints one row per model: parameters, MACs, latency (original and
pruned timed by the demo in turn, median, same thread count as the jobs), the speed-up it measured
and the one the job's report measured (with its efficiency: speed-up over the MAC reduction), and
accuracy on the held-out digits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo_out"
SIZE = 32
EPOCHS = int(os.environ.get("SPA_DEMO_EPOCHS", "6"))
RECOVER_STEPS = int(os.environ.get("SPA_DEMO_RECOVER_STEPS", "0"))  # N > 0: add a distillation job
# Where the pruned model will run: the jobs measure (and round widths) for it, and so does the demo.
RUNTIME = {"provider": "cpu", "threads": 1, "batch": 1}
TARGET = {"flops": 0.5}


@dataclass
class Row:
    """One model of the summary: the original, or a job's pruned result."""

    name: str
    path: Path
    report: dict[str, Any] = field(default_factory=dict)
    accuracy: float = 0.0
    latency_ms: float = 0.0


def load_digits(size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upsampled to ``size``, split 75 / 25 (stratified, seeded)."""
    import torch
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return x_tr, x_te, y_tr.astype(np.int64), y_te.astype(np.int64)


def build_net() -> Any:
    """A small ResNet-style CNN: 32x32 -> 16x16 (64 ch, one residual block) -> 8x8 (128 ch, one
    residual block) -> pooled logits. About 0.46 M parameters and 47 M MACs."""
    import torch
    from torch import nn

    def cbr(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                *cbr(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    return nn.Sequential(
        *cbr(1, 32), nn.MaxPool2d(2), *cbr(32, 64), Residual(64), nn.MaxPool2d(2), *cbr(64, 128), Residual(128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


def train(x_tr: np.ndarray, y_tr: np.ndarray, path: Path) -> None:
    """A fixed number of epochs with a one-cycle schedule (deterministic: the same accuracy on any
    machine, a slower machine only takes longer), then export to ONNX with a batch of 1."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(1)  # small batches; one thread is also what keeps the result reproducible
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    batch = 64
    steps = EPOCHS * ((len(xs) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.25)
    start = time.monotonic()
    net.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    print(
        f"trained {EPOCHS} epochs in {time.monotonic() - start:.0f} s (last loss {loss.item():.3f})",
        file=sys.stderr,
    )
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and still the robust one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (xs[:1],), str(path), input_names=["input"], output_names=["logits"], dynamo=False
        )


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(RUNTIME["threads"])
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure(rows: list[Row], x: np.ndarray, y: np.ndarray, rounds: int = 500) -> None:
    """Held-out accuracy of every model, and its latency at batch 1: all models timed in turn (one
    run of each per round, so a neighbour's load or turbo hits all alike), the median per model."""
    sessions = [ort_session(r.path) for r in rows]
    names = [s.get_inputs()[0].name for s in sessions]
    for row, sess, name in zip(rows, sessions, names, strict=True):
        hits = sum(int(sess.run(None, {name: x[i : i + 1]})[0].argmax() == y[i]) for i in range(len(x)))
        row.accuracy = hits / len(x)
    times: list[list[float]] = [[] for _ in rows]
    for r in range(rounds + 20):  # the first 20 rounds warm up
        for k, (sess, name) in enumerate(zip(sessions, names, strict=True)):
            t = time.perf_counter()
            sess.run(None, {name: x[r % len(x) : r % len(x) + 1]})
            if r >= 20:
                times[k].append(time.perf_counter() - t)
    for row, t in zip(rows, times, strict=True):
        row.latency_ms = float(np.median(t) * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPA_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spa serve exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"spa serve not ready after {timeout} s:\n{log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    from client import SpaClient, SpaError

    t0 = time.monotonic()
    OUT.mkdir(exist_ok=True)
    x_tr, x_te, y_tr, y_te = load_digits()
    model_path = OUT / "digits_cnn.onnx"
    train(x_tr, y_tr, model_path)
    np.savez(OUT / "digits_train.npz", input=x_tr, labels=y_tr)
    np.savez(OUT / "digits_test.npz", input=x_te, labels=y_te)

    rows = [Row("original", model_path)]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="spa-demo-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = OUT / "serve.log"
        proc = start_server(Path(tmp) / "data", port, log)
        try:
            wait_ready(url, proc, log)
            print(f"spa serve is up on {url} (log: {log})", file=sys.stderr)
            with SpaClient(url, api_key="") as client:
                model = client.upload_model(model_path)
                train_set = client.upload_dataset(OUT / "digits_train.npz", model_id=model["id"])
                # every job measures its fidelity (output cosine, accuracy before/after) on the held-out digits
                test_set = client.upload_dataset(OUT / "digits_test.npz", model_id=model["id"])
                base = {
                    "target": TARGET,
                    "runtime": RUNTIME,
                    "calibration": {"eval_dataset_id": test_set["id"]},
                }
                jobs: list[tuple[str, str, dict[str, Any], str | None]] = [
                    ("l1, no data", "l1, data-free", {**base, "criterion": "l1"}, None),
                    ("obspa, no data", "obspa, data-free", {**base, "criterion": "obspa"}, None),
                    ("obspa, train digits", "obspa, calibrated on the training digits",
                     {**base, "criterion": "obspa"}, train_set["id"]),
                ]  # fmt: skip
                if RECOVER_STEPS:
                    recover = {"method": "distill", "steps": RECOVER_STEPS, "batch_size": 32, "lr": 1e-3}
                    jobs.append((
                        f"  + {RECOVER_STEPS} distill steps", f"the same + {RECOVER_STEPS} distillation steps",
                        {**base, "criterion": "obspa", "recover": recover}, train_set["id"],
                    ))  # fmt: skip
                for k, (name, what, spec, dataset_id) in enumerate(jobs, 1):
                    out = OUT / f"job{k}"
                    final = run_job(client, model["id"], spec, out, what, dataset_id)
                    if final is None:
                        failed += 1
                        continue
                    report = json.loads((out / "report.json").read_text())
                    rows.append(Row(name, out / "pruned.onnx", report))
        except (SpaError, RuntimeError, TimeoutError) as e:
            print(f"demo failed: {e}", file=sys.stderr)
            return 1
        finally:
            stop_server(proc)

    measure(rows, x_te, y_te)
    print_table(rows, len(x_te))
    print(
        f"artifacts in {OUT}/ (job<N>/pruned.onnx, report.json, and report.html to open in a browser); demo took {time.monotonic() - t0:.0f} s"
    )
    return 1 if failed else 0


def print_table(rows: list[Row], n_test: int) -> None:
    original = rows[0]
    first = next((r.report for r in rows[1:]), None)
    if first is None:
        return
    params0, macs0 = first["params"]["before"], first["macs"]["before"]
    threads = RUNTIME["threads"]
    print(
        f"\n{TARGET['flops']:.0%} of the FLOPs removed; latency: onnxruntime CPU, {threads} thread, batch 1, "
        f"median, timed here in turn (report: the job's own measurement); accuracy on {n_test} held-out digits"
    )
    head = ["params", "MACs", "ms", "speed-up", "report", "eff.", "accuracy"]
    print(f"{'':22}" + "".join(f"{h:>11}" for h in head))
    for r in rows:
        rep = r.report
        params = rep["params"]["after"] if rep else params0
        macs = rep["macs"]["after"] if rep else macs0
        lat = rep.get("latency_ms") or {}
        cells = [
            f"{params:,}",
            f"{macs / 1e6:.1f} M",
            f"{r.latency_ms:.3f}",
            f"{original.latency_ms / r.latency_ms:.2f}x" if rep else "",
            f"{lat['speedup']:.2f}x" if lat.get("speedup") else "",
            f"{lat['efficiency']:.2f}" if lat.get("efficiency") else "",
            f"{r.accuracy:.3f}",
        ]
        print(f"{r.name:22}" + "".join(f"{c:>11}" for c in cells))
    print()
    for r in rows[1:]:
        rep = r.report
        fid = rep.get("fidelity") or {}
        line = f"{r.name}: MACs -{rep['macs']['removed_fraction']:.1%}, verify max error {rep['verify'].get('max_error'):.2g}"
        if fid.get("cosine") is not None:
            line += f"; the job's fidelity on {fid['inputs']}: output cosine {fid['cosine']:.4f}"
            if fid.get("top1_agreement") is not None:
                line += f", top-1 agreement {fid['top1_agreement']:.1%}"
        before = (rep.get("fidelity_before_recovery") or {}).get("accuracy")
        if before:
            line += f", accuracy before distillation {before['after']:.3f}"
        print(line)


def run_job(
    client: Any, model_id: str, spec: dict[str, Any], out: Path, what: str, dataset_id: str | None = None
) -> dict[str, Any] | None:
    """Submit, wait with a progress bar, download; None (with the reason printed) when it failed."""
    from client.progress import ProgressBar

    job = client.submit(model_id, spec, dataset_id=dataset_id)
    print(f"job {job['id']}: {what}", file=sys.stderr)
    final = client.wait(job["id"], timeout=900, on_update=ProgressBar().update)
    if final["state"] != "succeeded":
        print(f"job {final['state']}: {final.get('error')}", file=sys.stderr)
        return None
    client.download(job["id"], out)
    return final


if __name__ == "__main__":
    raise SystemExit(main())
