"""PP-OCRv4 text detection and recognition and the PP-OCR text-orientation classifier, as shipped in
the ``rapidocr_onnxruntime`` wheel, on text rendered with Pillow.

- ``det`` (DBNet, PP-LCNetV3 backbone, ~1.2 M parameters, 2.3 GMACs at 640x640): pages of rendered
  text lines; metric: line-detection F-score (H-mean) at IoU >= 0.5 after the DB post-processing.
- ``rec`` (SVTR-LCNet, CTC over 6,625 characters): rendered words / short lines at 48x320; metric:
  character accuracy (1 - CER) of the greedy CTC decode with the character table stored in the
  model's own metadata.
- ``cls`` (MobileNetV3, 0 / 180 degrees): rendered lines upright and upside down at 48x192; metric:
  accuracy.

Inputs are normalized like rapidocr does ((x / 255 - 0.5) / 0.5, BGR order); words come from the
docstrings of the standard library (calibration and held-out halves from disjoint modules).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

from bench.real_models.base import Task, save_npz
from bench.real_models.common import (
    CALIB_MODULES,
    EVAL_MODULES,
    Prepared,
    Score,
    package_dir,
    run_batched,
    session,
    words,
)

DIST = "rapidocr_onnxruntime"


def _models() -> Path:
    return package_dir("rapidocr_onnxruntime") / "models"


def fonts() -> list[str]:
    """TrueType fonts to render with: Latin faces the system has (DejaVu, Liberation, ...) and
    Pillow's own bundled face, so the bench runs where no font package is installed."""
    found = sorted(p for p in glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True)
                   if any(k in p for k in ("DejaVu", "Liberation", "Noto")) and "Mono" not in p
                   and "ExtraLight" not in p)
    return found[:12] + [""]  # "" = Pillow's bundled font


def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def _normalize(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, BGR like cv2, (x / 255 - 0.5) / 0.5."""
    return ((rgb[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).copy()


def _colors(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if rng.random() < 0.8:  # dark text on a light background
        bg = tuple(int(v) for v in rng.integers(175, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 90, 3))
    else:
        bg = tuple(int(v) for v in rng.integers(0, 80, 3))
        fg = tuple(int(v) for v in rng.integers(190, 256, 3))
    return fg, bg


def _noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def render_line(text: str, rng: np.random.Generator, font_files: list[str], size: int) -> np.ndarray:
    """The line rendered tightly with a small random margin: HxWx3 uint8."""
    font = _font(font_files[rng.integers(len(font_files))], size)
    fg, bg = _colors(rng)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    mx, my = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    img = Image.new("RGB", (x1 - x0 + 2 * mx, y1 - y0 + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - x0, my - y0), text, font=font, fill=fg)
    return _noise(np.asarray(img), rng, float(rng.uniform(0, 8)))


def _fit(rgb: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """Resize to ``height`` keeping the aspect ratio (at most ``width``), normalize, pad with zeros on
    the right like rapidocr; returns the 3 x height x width array and the used width fraction."""
    h, w = rgb.shape[:2]
    new_w = min(width, max(1, int(np.ceil(height * w / h))))
    img = np.asarray(Image.fromarray(rgb).resize((new_w, height), Image.Resampling.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = _normalize(img)
    return out, new_w / width


def _phrase(pool: list[str], rng: np.random.Generator, max_words: int, max_chars: int) -> str:
    while True:
        n = int(rng.integers(1, max_words + 1))
        start = int(rng.integers(0, len(pool) - n))
        text = " ".join(pool[start:start + n])
        if len(text) <= max_chars:
            return text


# ------------------------------------------------------------------------------ recognition


def _charset(model: Path) -> list[str]:
    m = onnx.load(str(model), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC: arg-max per step, repeats merged, blanks (index 0) dropped."""
    out = []
    for seq in probs.argmax(-1):
        keep = np.ones(len(seq), bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append("".join(chars[i] for i in seq[keep] if i != 0 and i < len(chars)))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _batched(model: Path, x: np.ndarray, batch: int) -> np.ndarray:
    sess = session(model)
    return run_batched(sess, {sess.get_inputs()[0].name: x}, batch, [sess.get_outputs()[0].name])[0]


class OcrRec(Task):
    name = "rec"
    title = "PP-OCRv4 text recognizer (ch_PP-OCRv4_rec)"
    family = "CNN + SVTR attention neck, CTC head"
    dist = DIST
    file = "models/ch_PP-OCRv4_rec_infer.onnx"
    metric_name = "character accuracy (1 - CER)"
    inputs = ("words / short lines from stdlib docstrings rendered with Pillow (several fonts, sizes "
              "30-46 px, colors, noise), resized to 48 px high and padded to 48x320")
    HEIGHT, WIDTH, EVAL_N = 48, 320, 300

    def _samples(self, pool: list[str], n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        rng, ff = np.random.default_rng(seed), fonts()
        xs, texts = [], []
        while len(xs) < n:
            text = _phrase(pool, rng, 3, 24)
            x, frac = _fit(render_line(text, rng, ff, int(rng.integers(30, 47))), self.HEIGHT, self.WIDTH)
            if frac < 1.0:  # a line wider than 320 px at height 48 would be squeezed: draw another
                xs.append(x)
                texts.append(text)
        return np.stack(xs), texts

    def prepare(self, work: Path, samples: int) -> Prepared:
        d = work / self.name
        self.model = _models() / Path(self.file).name
        self.chars = _charset(self.model)
        ev = d / "eval.npz"
        if not ev.exists():
            x, texts = self._samples(words(EVAL_MODULES), self.EVAL_N, seed=2)
            save_npz(ev, {"x": x, "texts": np.array(texts)})
            xc, _ = self._samples(words(CALIB_MODULES), samples, seed=1)
            save_npz(d / "calib.npz", {"x": xc})
            save_npz(d / "fidelity.npz", {"x": x[:64]})
        with np.load(ev) as z:
            self.x, self.texts = z["x"], [str(t) for t in z["texts"]]
        return Prepared(self.model, {"x": [1, 3, self.HEIGHT, self.WIDTH]}, d / "calib.npz", d / "fidelity.npz",
                        recover_batch=16)

    def score(self, model: Path) -> Score:
        probs = _batched(model, self.x, 16)
        pred = ctc_decode(probs, self.chars)
        errs = sum(edit_distance(p, t) for p, t in zip(pred, self.texts, strict=True))
        total = sum(len(t) for t in self.texts)
        exact = float(np.mean([p == t for p, t in zip(pred, self.texts, strict=True)]))
        return Score(max(0.0, 1.0 - errs / total), probs, {"line_exact": exact})


# ------------------------------------------------------------------------------ orientation


class OcrCls(Task):
    name = "cls"
    title = "PP-OCR text-orientation classifier (ch_ppocr_mobile_v2.0_cls)"
    family = "MobileNetV3 image classifier (2 classes)"
    dist = DIST
    file = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    metric_name = "accuracy, 0 vs 180 degrees"
    inputs = ("rendered words / short lines, half of them turned 180 degrees, resized to 48 px high and "
              "padded to 48x192")
    HEIGHT, WIDTH, EVAL_N = 48, 192, 300

    def _samples(self, pool: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng, ff = np.random.default_rng(seed), fonts()
        xs, ys = [], []
        while len(xs) < n:
            text = _phrase(pool, rng, 3, 16)
            img = render_line(text, rng, ff, int(rng.integers(30, 47)))
            flip = len(xs) % 2
            if flip:
                img = img[::-1, ::-1]
            x, frac = _fit(np.ascontiguousarray(img), self.HEIGHT, self.WIDTH)
            if frac < 1.0:
                xs.append(x)
                ys.append(flip)
        return np.stack(xs), np.array(ys, np.int64)

    def prepare(self, work: Path, samples: int) -> Prepared:
        d = work / self.name
        shipped = _models() / Path(self.file).name
        ev = d / "eval.npz"
        if not ev.exists():
            x, y = self._samples(words(EVAL_MODULES), self.EVAL_N, seed=2)
            save_npz(ev, {"x": x, "y": y})
            xc, _ = self._samples(words(CALIB_MODULES), samples, seed=1)
            save_npz(d / "calib.npz", {"x": xc})
            save_npz(d / "fidelity.npz", {"x": x[:64]})
        with np.load(ev) as z:
            self.x, self.y = z["x"], z["y"]
        self.model, notes = shipped, []
        from pruning_core import api  # the parent checks the shipped file once (a second or so)

        try:
            api.analyze(shipped, {"x": [1, 3, self.HEIGHT, self.WIDTH]})
        except Exception as e:  # Paddle2ONNX's unknown dims: -1, and "?" on two axes at once
            self.model = d / "cls_symbolic_dims.onnx"
            m = onnx.load(str(shipped))
            for v in [*m.graph.input, *m.graph.output]:
                for i, dim in enumerate(v.type.tensor_type.shape.dim):
                    if (dim.HasField("dim_value") and dim.dim_value < 0) or dim.dim_param == "?":
                        dim.dim_param = f"{v.name.split('/')[0]}_dim{i}"
            onnx.save(m, str(self.model))
            notes.append(f"the file as shipped fails in `api.analyze`: `{type(e).__name__}: {str(e)[:160]}`; "
                         "its input and output declare unknown dims as `-1` (and `x` as `[-1, 3, ?, ?]`, one "
                         "name `?` for height and width, which the pruned file then pins both to 48); the runs "
                         "use a copy whose unknown dims get distinct symbolic names, weights and nodes unchanged")
        return Prepared(self.model, {"x": [1, 3, self.HEIGHT, self.WIDTH]}, d / "calib.npz",
                        d / "fidelity.npz", recover_batch=32, notes=notes)

    def score(self, model: Path) -> Score:
        probs = _batched(model, self.x, 32)
        return Score(float((probs.argmax(1) == self.y).mean()), probs)


# ------------------------------------------------------------------------------ detection


def _page(pool: list[str], rng: np.random.Generator, ff: list[str], size: int = 640,
          ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A page with 4-9 non-overlapping text lines; returns the image and the line boxes."""
    fg, bg = _colors(rng)
    base = np.empty((size, size, 3), np.float32)
    base[:] = bg
    ramp = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None] * rng.uniform(0, 25)
    img = Image.fromarray(np.clip(base + ramp, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(60):
        if len(boxes) >= int(rng.integers(4, 10)):
            break
        font = _font(ff[rng.integers(len(ff))], int(rng.integers(16, 45)))
        text = _phrase(pool, rng, 6, 40)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        w, h = x1 - x0, y1 - y0
        if w >= size - 20:
            continue
        px, py = int(rng.integers(10, size - 10 - w)), int(rng.integers(10, size - 10 - h))
        box = (px, py, px + w, py + h)
        if any(not (box[2] + 8 < b[0] or b[2] + 8 < box[0] or box[3] + 8 < b[1] or b[3] + 8 < box[1])
               for b in boxes):
            continue
        color = fg if rng.random() < 0.85 else tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(np.mean(color) - np.mean(bg)) < 80:
            color = fg
        draw.text((px - x0, py - y0), text, font=font, fill=color)
        boxes.append(box)
    return _noise(np.asarray(img), rng, float(rng.uniform(0, 6))), boxes


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.6,
             ) -> list[tuple[float, float, float, float]]:
    """DB post-processing on one probability map (axis-aligned): threshold, connected components,
    mean-score filter, unclip by area * ratio / perimeter."""
    from scipy import ndimage

    labels, n = ndimage.label(prob > thresh)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        ys, xs = sl
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < 3 or prob[sl][labels[sl] == i].mean() < box_thresh:
            continue
        d = h * w * unclip / (2 * (h + w))
        out.append((xs.start - d, ys.start - d, xs.stop + d, ys.stop + d))
    return out


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(pred: list[tuple[float, ...]], gt: list[tuple[float, ...]], iou: float = 0.5) -> int:
    """True positives of a greedy one-to-one matching by IoU."""
    pairs = sorted(((_iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt)), reverse=True)
    used_p, used_g, tp = set(), set(), 0
    for v, i, j in pairs:
        if v < iou:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            tp += 1
    return tp


class OcrDet(Task):
    name = "det"
    title = "PP-OCRv4 text detector (ch_PP-OCRv4_det)"
    family = "DBNet: PP-LCNetV3 CNN backbone, RSE-FPN, ConvTranspose head"
    dist = DIST
    file = "models/ch_PP-OCRv4_det_infer.onnx"
    metric_name = "line H-mean (F1) at IoU 0.5"
    inputs = ("640x640 pages with 4-9 rendered text lines (fonts 16-44 px, colors, gradients, noise) and "
              "their boxes")
    SIZE, EVAL_N = 640, 24

    def _samples(self, pool: list[str], n: int, seed: int) -> tuple[np.ndarray, list[list[tuple[int, ...]]]]:
        rng, ff = np.random.default_rng(seed), fonts()
        xs, boxes = [], []
        for _ in range(n):
            img, b = _page(pool, rng, ff, self.SIZE)
            xs.append(_normalize(img))
            boxes.append(b)
        return np.stack(xs), boxes

    def prepare(self, work: Path, samples: int) -> Prepared:
        d = work / self.name
        self.model = _models() / Path(self.file).name
        ev = d / "eval.npz"
        if not ev.exists():
            x, boxes = self._samples(words(EVAL_MODULES), self.EVAL_N, seed=2)
            flat = np.array([(i, *b) for i, bs in enumerate(boxes) for b in bs], np.int64)
            save_npz(ev, {"x": x, "boxes": flat})
            xc, _ = self._samples(words(CALIB_MODULES), samples, seed=1)
            save_npz(d / "calib.npz", {"x": xc})
            save_npz(d / "fidelity.npz", {"x": x[:8]})
        with np.load(ev) as z:
            self.x = z["x"]
            self.boxes = [[tuple(r[1:]) for r in z["boxes"] if r[0] == i] for i in range(len(self.x))]
        return Prepared(self.model, {"x": [1, 3, self.SIZE, self.SIZE]}, d / "calib.npz", d / "fidelity.npz",
                        recover_batch=2)

    def score(self, model: Path) -> Score:
        probs = _batched(model, self.x, 1)
        tp = npred = ngt = 0
        for p, gt in zip(probs, self.boxes, strict=True):
            pred = db_boxes(p[0])
            tp += match(pred, gt)
            npred += len(pred)
            ngt += len(gt)
        prec, rec = tp / max(npred, 1), tp / max(ngt, 1)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return Score(f1, probs, {"precision": prec, "recall": rec})
