"""`make demo`: the whole product in one run, on a fresh machine.

Trains a small CNN on scikit-learn's digits (upsampled to 16x16) for ~20 s, exports it to ONNX,
starts `spa serve` on a free loopback port in a temporary directory, uploads the model, submits a
50 % FLOPs reduction with the l1 criterion, waits with a progress bar, downloads the pruned model,
and prints parameters, MACs, onnxruntime latency and held-out accuracy before and after. A second
job does the same with the training digits uploaded as a dataset and a short distillation from the
original (``recover``), which wins back the accuracy that pruning without fine-tuning loses. The
server is always stopped, also on error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo_out"
SIZE = 16
TRAIN_SECONDS = float(os.environ.get("SPA_DEMO_TRAIN_S", "20"))
RECOVER_STEPS = int(os.environ.get("SPA_DEMO_RECOVER_STEPS", "100"))  # 0: skip the second job
SPEC = {"target": {"flops": 0.5}, "criterion": "l1"}


def load_digits_16() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return x_tr, x_te, y_tr.astype(np.int64), y_te.astype(np.int64)


def train(x_tr: np.ndarray, y_tr: np.ndarray, path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny batches: more threads only contend (and the server shares the box)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    # Small enough to train well on two CPU cores in the time budget; wide enough to prune.
    net = nn.Sequential(
        *block(1, 24), nn.MaxPool2d(2), *block(24, 48), nn.MaxPool2d(2), *block(48, 48),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    start, epoch = time.monotonic(), 0
    net.train()
    while time.monotonic() - start < TRAIN_SECONDS:
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
    net.eval()
    print(
        f"trained {epoch} epochs in {time.monotonic() - start:.0f} s (last loss {loss.item():.3f})",
        file=sys.stderr,
    )
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and still the robust one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (xs[:1],), str(path), input_names=["input"], output_names=["logits"], dynamo=False
        )


def evaluate(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, median latency in ms at batch 1, one thread) with onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(len(x)):
        (logits,) = sess.run(None, {name: x[i : i + 1]})
        correct += int(logits.argmax() == y[i])
    times = []
    for _ in range(300):
        t = time.perf_counter()
        sess.run(None, {name: x[:1]})
        times.append(time.perf_counter() - t)
    return correct / len(x), float(np.median(times) * 1000)


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

    OUT.mkdir(exist_ok=True)
    x_tr, x_te, y_tr, y_te = load_digits_16()
    model_path = OUT / "digits_cnn.onnx"
    train(x_tr, y_tr, model_path)

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
                final = run_job(client, model["id"], SPEC, OUT, "remove 50 % of FLOPs, criterion l1")
                recovered = None
                if final is not None and RECOVER_STEPS:
                    np.savez(OUT / "digits_train.npz", input=x_tr, labels=y_tr)
                    dataset = client.upload_dataset(OUT / "digits_train.npz", model_id=model["id"])
                    spec = {
                        **SPEC,
                        "recover": {
                            "method": "distill",
                            "steps": RECOVER_STEPS,
                            "batch_size": 32,
                            "lr": 1e-3,
                        },
                    }
                    recovered = run_job(
                        client, model["id"], spec, OUT / "recovered",
                        f"the same + {RECOVER_STEPS} distillation steps on the training digits",
                        dataset_id=dataset["id"],
                    )  # fmt: skip
                if final is None or (RECOVER_STEPS and recovered is None):
                    return 1
        except (SpaError, RuntimeError, TimeoutError) as e:
            print(f"demo failed: {e}", file=sys.stderr)
            return 1
        finally:
            stop_server(proc)

    s = final["summary"]
    acc_before, lat_before = evaluate(model_path, x_te, y_te)
    acc_after, lat_after = evaluate(OUT / "pruned.onnx", x_te, y_te)
    columns = ["before", "pruned"]
    rows = [
        ["parameters", f"{s['params_before']:,}", f"{s['params_after']:,}"],
        ["MACs", f"{s['macs_before']:,}", f"{s['macs_after']:,}"],
        ["latency (ms, ORT, 1 thread)", f"{lat_before:.3f}", f"{lat_after:.3f}"],
        ["accuracy (held-out digits)", f"{acc_before:.3f}", f"{acc_after:.3f}"],
    ]
    if recovered is not None:
        r = recovered["summary"]
        acc_rec, lat_rec = evaluate(OUT / "recovered" / "pruned.onnx", x_te, y_te)
        columns.append("pruned+distill")
        for row, value in zip(
            rows,
            (f"{r['params_after']:,}", f"{r['macs_after']:,}", f"{lat_rec:.3f}", f"{acc_rec:.3f}"),
            strict=True,
        ):
            row.append(value)
    print(f"\n{'':30}" + "".join(f"{c:>16}" for c in columns))
    for name, *values in rows:
        print(f"{name:30}" + "".join(f"{v:>16}" for v in values))
    print(
        f"\nFLOPs removed: {1 - s['macs_after'] / s['macs_before']:.1%}; verify max error {s.get('verify_max_error')}"
    )
    print(f"artifacts in {OUT}/ (pruned.onnx, report.json; recovered/ for the second job)")
    return 0


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
