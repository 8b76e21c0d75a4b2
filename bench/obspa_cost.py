"""OBSPA's cost beside l1's on OCR-sized models: wall time and peak memory of ``api.prune``.

Run by hand, not in CI:

    python -m bench.obspa_cost [--models det rec ppocr_det ppocr_rec ppocr_cls] [--criteria l1 obspa]
                               [--flops 0.3] [--timeout 900] [--work DIR] [--real DIR] [--json out.json]

Models, all built or read without a download:

- ``det``: a DBNet-style text detector built here (a depthwise-separable backbone with strides 2-32,
  an FPN: lateral 1x1 convs, top-down upsample + add, 3x3 smoothing, upsample and concat at 1/4,
  a head of a 3x3 conv and two transposed convs), about 1.2 M parameters and 2 GMACs at 640x640;
- ``rec``: a CRNN-style text recognizer built here (a conv backbone that pools the height away,
  a sequence neck of one self-attention and two MLP blocks over the 80 columns, a CTC head of
  6625 classes), about 2.7 M parameters at 48x320;
- ``ppocr_det`` / ``ppocr_rec`` / ``ppocr_cls``: the real pretrained PP-OCRv4 detector, recognizer
  and the mobile v2.0 orientation classifier that the ``rapidocr-onnxruntime`` wheel ships
  (``pip download --no-deps rapidocr-onnxruntime``, unzip ``rapidocr_onnxruntime/models/*.onnx``
  into ``--real``; rows whose file is missing are skipped).

Every (model, criterion) runs ``pruning_core.api.prune(model, {target: {flops: F}, criterion},
out)`` data-free in a fresh subprocess; the row is its wall time (the whole prune: load, analyze,
score, select, surgery, verify, compensate, save, measure) and the child's peak RSS
(``ru_maxrss`` from ``os.wait4``), with the time per stage and the criterion's stats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"det": [1, 3, 640, 640], "rec": [1, 3, 48, 320], "ppocr_det": [1, 3, 640, 640],
          "ppocr_rec": [1, 3, 48, 320], "ppocr_cls": [1, 3, 48, 192]}
REAL = {"ppocr_det": "ch_PP-OCRv4_det_infer.onnx", "ppocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
        "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


# ------------------------------------------------------------------------------ models


def build(name: str) -> tuple[Any, Any]:
    """(eval model, example input) for ``det`` or ``rec``; seeded random weights, BN statistics
    from a few training-mode forwards so they are not the identity."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def cbr(cin: int, cout: int, k: int = 3, s: Any = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    def dws(cin: int, cout: int, s: Any = 1) -> nn.Sequential:
        return nn.Sequential(cbr(cin, cin, 3, s, groups=cin), cbr(cin, cout, 1))

    class Det(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, 24, 3, 2)                                                      # 1/2
            self.s1 = nn.Sequential(dws(24, 48, 2), dws(48, 48))                              # 1/4
            self.s2 = nn.Sequential(dws(48, 96, 2), dws(96, 96))                              # 1/8
            self.s3 = nn.Sequential(dws(96, 256, 2), dws(256, 256), dws(256, 256), dws(256, 256))  # 1/16
            self.s4 = nn.Sequential(dws(256, 512, 2), dws(512, 512), dws(512, 640))           # 1/32
            self.lat = nn.ModuleList(nn.Conv2d(c, 80, 1, bias=False) for c in (48, 96, 256, 640))
            self.smooth = nn.ModuleList(nn.Conv2d(80, 20, 3, padding=1, bias=False) for _ in range(4))
            self.head = nn.Sequential(cbr(80, 20, 3), nn.ConvTranspose2d(20, 20, 2, 2), nn.BatchNorm2d(20),
                                      nn.ReLU(), nn.ConvTranspose2d(20, 1, 2, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c1 = self.s1(self.stem(x))
            c2 = self.s2(c1)
            c3 = self.s3(c2)
            c4 = self.s4(c3)
            p = [lat(c) for lat, c in zip(self.lat, (c1, c2, c3, c4), strict=True)]
            for i in (2, 1, 0):  # top-down
                p[i] = p[i] + F.interpolate(p[i + 1], scale_factor=2.0, mode="nearest")
            outs = [F.interpolate(sm(q), scale_factor=2.0 ** i, mode="nearest") if i else sm(q)
                    for i, (sm, q) in enumerate(zip(self.smooth, p, strict=True))]
            return torch.sigmoid(self.head(torch.cat(outs, 1)))

    class Rec(nn.Module):
        def __init__(self, classes: int = 6625, d: int = 224) -> None:
            super().__init__()
            self.backbone = nn.Sequential(
                cbr(3, 32, 3, 2), dws(32, 64), dws(64, 128, 2), dws(128, 128),   # 12 x 80
                dws(128, 256, (2, 1)), dws(256, 256), dws(256, 256),              # 6 x 80
                dws(256, 384, (2, 1)), dws(384, 384))                             # 3 x 80
            self.neck = cbr(384, d, 1)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
                                     for _ in range(2))
            self.norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
            self.heads, self.fc = 4, nn.Linear(d, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.neck(self.backbone(x).mean(2, keepdim=True))       # [B, d, 1, W]
            s = f.flatten(2).transpose(1, 2)                             # [B, W, d]
            b, w, d = s.shape
            h = self.norm[0](s)
            q, k, v = self.qkv(h).reshape(b, w, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
            s = s + self.proj((a @ v).transpose(1, 2).reshape(b, w, d))
            for norm, mlp in zip(self.norm[1:], self.mlp, strict=True):
                s = s + mlp(norm(s))
            return self.fc(s)                                            # [B, W, classes] (CTC logits)

    torch.manual_seed(0)
    model: nn.Module = Det() if name == "det" else Rec()
    shape = SHAPES[name]
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, *shape[1:], generator=g))
    model.eval()
    return model, torch.randn(*shape, generator=g)


def count(model: Any, x: Any) -> tuple[int, int]:
    """(parameters, MACs of the convolutions and linear layers) at input ``x``."""
    import torch
    import torch.nn as nn

    macs = [0]

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            macs[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            macs[0] += inp[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs[0]


def export(name: str, work: Path) -> Path:
    """``det`` / ``rec`` to ONNX (torchscript exporter, BatchNorm kept as its own node, like
    ``bench.accuracy``), cached in ``work``."""
    import torch

    path = work / f"{name}.onnx"
    if path.exists():
        return path
    model, x = build(name)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17, do_constant_folding=False)
    tmp.rename(path)
    return path


def prepare_real(src: Path, work: Path) -> Path:
    """A copy of a paddle2onnx model whose dims declared as a literal -1 (ppocr_cls's output
    [-1, 2], which shape inference then keeps) or as one shared name (its input [-1, 3, ?, ?]:
    the saved pruned model could not tell H from W) get a name of their own."""
    import onnx

    m = onnx.load(str(src))
    for v in [*m.graph.input, *m.graph.output]:
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if (d.HasField("dim_value") and d.dim_value < 0) or d.dim_param == "?":
                d.dim_param = f"{v.name}_{i}"
    path = work / src.name
    onnx.save(m, str(path))
    return path


# ------------------------------------------------------------------------------ one run (child)


def child(model: str, criterion: str, shape: list[int], flops: float, out: str, measure: bool = True) -> None:
    """Prune once and print one JSON line: seconds, per-stage seconds and peak RSS so far."""
    from pruning_core import api

    t0 = time.perf_counter()
    stages: dict[str, dict[str, float]] = {}
    last = [None]

    def progress(stage: str, frac: float, msg: str | None) -> None:
        now = time.perf_counter() - t0
        if stage != last[0]:
            stages[stage] = {"start": round(now, 2)}
            last[0] = stage
        st = stages[stage]
        st["end"] = round(now, 2)
        st["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    spec = {"target": {"flops": flops}, "criterion": criterion, "input_shapes": {"x": shape}, "measure": measure}
    r = api.prune(model, spec, out, progress=progress)
    secs = time.perf_counter() - t0
    print(json.dumps({
        "seconds": round(secs, 2), "stages": stages,
        "macs_removed": r.report["macs"]["removed_fraction"],
        "params": [r.summary["params_before"], r.summary["params_after"]],
        "macs": [r.summary["macs_before"], r.summary["macs_after"]],
        "verify_max_error": r.summary["verify_max_error"],
        "fidelity": r.report.get("fidelity"), "criterion_stats": r.report.get("criterion_stats"),
    }, default=str))


# ------------------------------------------------------------------------------ the OCR task


FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
WORDS = ["Invoice", "TOTAL", "2024-07-15", "Berlin", "Straße", "No. 4711", "price", "EUR 12.90", "receipt",
         "Hello", "world", "Quantity", "ID 93817", "Tel +49 30", "www.example.com", "Paid", "cash",
         "Order", "#A-209", "thank you", "VAT 19%", "Subtotal", "Card", "Station", "Date"]


def _text(rng: Any) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))


def _line(text: str, height: int, width: int, flip: bool = False) -> Any:
    """A rendered text line as the PP-OCR rec / cls preprocessing gives it: [3, height, width],
    (x / 255 - 0.5) / 0.5, resized to the height keeping the ratio, zero-padded on the right."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 32)
    w = int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font)) + 16
    img = Image.new("RGB", (w, 44), "white")
    ImageDraw.Draw(img).text((8, 4), text, fill="black", font=font)
    if flip:
        img = img.rotate(180)
    new_w = min(width, max(1, round(img.width * height / img.height)))
    x = np.asarray(img.resize((new_w, height)), np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = (x - 0.5) / 0.5
    return out


def _page(rng: Any) -> Any:
    """A 640x640 page with a dozen text lines at random places and sizes, normalized for det."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (640, 640), "white")
    d = ImageDraw.Draw(img)
    for _ in range(12):
        font = ImageFont.truetype(FONT, int(rng.integers(18, 40)))
        d.text((int(rng.integers(0, 400)), int(rng.integers(0, 600))), _text(rng), fill="black", font=font)
    x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return (x - 0.5) / 0.5


def task(name: str, original: str, pruned: str, n: int = 16) -> dict[str, Any]:
    """How far the pruned OCR model still does the original's job on rendered text (no labels:
    the original's own answers are the reference). rec: CTC greedy decodes equal (and the mean
    share of agreeing positions); cls: 0/180 decisions equal; det: IoU of the text maps at 0.3."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    sess = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in (original, pruned)]
    res: dict[str, Any] = {}
    if name == "ppocr_det":
        ious = []
        for _ in range(n // 4):
            x = _page(rng)[None]
            a, b = (s.run(None, {"x": x})[0] > 0.3 for s in sess)
            ious.append(float((a & b).sum() / max(1, (a | b).sum())))
        res = {"text_map_iou": round(float(np.mean(ious)), 4), "text_pixels": float(a.mean())}
    elif name == "ppocr_rec":
        same, pos = [], []
        for _ in range(n):
            x = _line(_text(rng), 48, 320)[None]
            ya, yb = (s.run(None, {"x": x})[0][0].argmax(-1) for s in sess)

            def decode(y: Any) -> list[int]:
                return [int(c) for i, c in enumerate(y) if c != 0 and (i == 0 or c != y[i - 1])]

            same.append(decode(ya) == decode(yb))
            pos.append(float((ya == yb).mean()))
        res = {"decode_equal": round(float(np.mean(same)), 4), "positions_equal": round(float(np.mean(pos)), 4)}
    elif name == "ppocr_cls":
        agree = []
        for i in range(n):
            x = _line(_text(rng), 48, 192, flip=bool(i % 2))[None]
            ya, yb = (int(s.run(None, {"x": x})[0].argmax()) for s in sess)
            agree.append(ya == yb)
        res = {"decision_equal": round(float(np.mean(agree)), 4)}
    return res


def run_one(model: Path, criterion: str, shape: list[int], flops: float, timeout: float,
            measure: bool = True, name: str = "") -> dict[str, Any]:
    """``child`` in a fresh interpreter; wall time and peak RSS (``os.wait4``) of that process.
    For the real OCR models, ``task`` on the result in one more process (not timed)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "bench.obspa_cost", "--child", str(model), criterion,
               json.dumps(shape), str(flops), out, str(int(measure))]
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            p = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=so, stderr=se)
            status, ru = 0, None
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - t0 > timeout:
                    p.kill()
                    _, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.2)
            p.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            so.seek(0)
            se.seek(0)
            lines = [ln for ln in so.read().splitlines() if ln.startswith("{")]
            err = se.read()
        res: dict[str, Any] = {"wall_s": round(wall, 1), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}
        if wall > timeout:
            res["error"] = f"timeout after {timeout:.0f} s"
        elif p.returncode != 0 or not lines:
            res["error"] = (err.strip().splitlines() or ["no output"])[-1][:300]
        else:
            res.update(json.loads(lines[-1]))
            if name in REAL:
                t = subprocess.run([sys.executable, "-m", "bench.obspa_cost", "--task", name, str(model),
                                    str(Path(out) / "pruned.onnx")], cwd=REPO_ROOT, capture_output=True, text=True)
                got = [ln for ln in t.stdout.splitlines() if ln.startswith("{")]
                res["task"] = json.loads(got[-1]) if got else {"error": (t.stderr.strip().splitlines() or ["?"])[-1]}
    return res


# ------------------------------------------------------------------------------ main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, crit, shape, flops, out, measure = sys.argv[2:8]
        child(model, crit, json.loads(shape), float(flops), out, measure == "1")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--task":
        print(json.dumps(task(*sys.argv[2:5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["det", "rec", "ppocr_det", "ppocr_rec", "ppocr_cls"])
    ap.add_argument("--criteria", nargs="+", default=["l1", "obspa"])
    ap.add_argument("--flops", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--work", default=None, help="keep the built models here (default: a temporary folder)")
    ap.add_argument("--real", default="/tmp/obspa_models", help="folder of the rapidocr .onnx files")
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--no-measure", action="store_true", help="spec measure: false (no latency / fidelity)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in args.models:
            if name in REAL:
                src = Path(args.real) / REAL[name]
                if not src.exists():
                    print(f"{name}: {src} missing, skipped", flush=True)
                    continue
                path, info = prepare_real(src, work), ""
            else:
                model, x = build(name)
                params, macs = count(model, x)
                info = f"{params / 1e6:.2f} M params, {macs / 1e9:.2f} GMACs"
                path = export(name, work)
            size = f"{path.stat().st_size / 2**20:.1f} MiB"
            for crit in args.criteria:
                r = run_one(path, crit, SHAPES[name], args.flops, args.timeout, not args.no_measure, name)
                r.update(model=name, criterion=crit, size=size, info=info, shape=SHAPES[name])
                rows.append(r)
                print(json.dumps(r, default=str), flush=True)
        print("\n| model | size | criterion | time (s) | peak RSS (MiB) | MACs removed | task kept | note |")
        print("|---|---|---|---:|---:|---:|---|---|")
        for r in rows:
            print(f"| {r['model']} {r['info']} | {r['size']} | {r['criterion']} | {r['wall_s']} | "
                  f"{r['peak_rss_mib']} | {r.get('macs_removed', '–')} | {json.dumps(r.get('task', ''))} | "
                  f"{r.get('error', '')} |")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
