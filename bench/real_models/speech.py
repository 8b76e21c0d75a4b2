"""Silero VAD (v6, 16 kHz), as shipped in the ``silero-vad`` wheel, on speech synthesized by espeak-ng.

The wheel's ``silero_vad_16k_sequence.onnx`` runs a whole sequence of 32 ms windows at once: each
row of ``input`` is 64 samples of context and 512 new samples; a Conv STFT, four Conv encoder
layers, an LSTM over the rows and a Conv decoder give one speech probability per window.

Its LSTM state comes in as inputs ``h`` and ``c`` of shape [1, 1, 128], without the sample axis the
calibration .npz format slices (every array of a .npz must have the samples first), so the bench
prunes a copy whose ``h`` and ``c`` are constant zeros: the state at the start of a stream, which
is how every held-out clip is run here. Nodes and weights are unchanged.

Clips: 8 s at 16 kHz of noise / silence segments and utterances of stdlib docstring sentences
(espeak-ng voices, speeds, pitches, gains), over background noise at 10-30 dB SNR; each window is
labeled speech when most of its samples lie inside an utterance (leading / trailing silence of
each utterance trimmed). Metric: frame accuracy of ``p > 0.5`` against those labels.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bench.real_models.base import Task, save_npz
from bench.real_models.common import (
    CALIB_MODULES,
    EVAL_MODULES,
    Prepared,
    Score,
    Unavailable,
    docstrings,
    package_dir,
    run_batched,
    sentences,
    session,
)

SR, HOP, CONTEXT, ROWS = 16000, 512, 64, 64  # ROWS windows (2.05 s) per model batch
VOICES = ["en", "en-us", "en-gb-x-rp", "en+m3", "en+f2", "en-us+f4", "en+m7", "en-gb-scotland"]


def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise Unavailable("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    wav = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True, timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    g = np.gcd(SR, rate)
    return resample_poly(x, SR // g, rate // g).astype(np.float32)


def _trim(x: np.ndarray) -> np.ndarray:
    loud = np.nonzero(np.abs(x) > 0.02 * np.abs(x).max())[0]
    return x[loud[0]:loud[-1] + 1] if len(loud) else x[:0]


def _noise(n: int, rng: np.random.Generator, kind: int) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    if kind == 0:
        return white
    if kind == 1:  # brown-ish: integrated white, high-passed by removing the running mean
        b = np.cumsum(white)
        return (b - np.convolve(b, np.ones(801) / 801, mode="same")).astype(np.float32)
    t = np.arange(n) / SR  # hum with harmonics
    f = rng.uniform(50, 120)
    return (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) + 0.1 * white).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-8)


def clip(texts: list[str], rng: np.random.Generator, seconds: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """(audio, per-sample speech mask) of one clip."""
    n = int(seconds * SR)
    audio, mask = np.zeros(n, np.float32), np.zeros(n, bool)
    pos = int(rng.uniform(0.2, 1.2) * SR)
    while texts and pos < n - SR:
        voice = VOICES[int(rng.integers(len(VOICES)))]
        speech = _trim(espeak(texts.pop(), voice, int(rng.integers(130, 200)), int(rng.integers(25, 75))))
        speech = speech[: n - pos]
        audio[pos:pos + len(speech)] += speech * rng.uniform(0.3, 1.0) / max(np.abs(speech).max(), 1e-6)
        mask[pos:pos + len(speech)] = True
        gap = int(rng.uniform(0.8, 2.6) * SR)
        if rng.random() < 0.6:  # a louder non-speech event in the gap
            a, b = pos + len(speech) + gap // 4, min(n, pos + len(speech) + 3 * gap // 4)
            if b > a:
                audio[a:b] += _unit(_noise(b - a, rng, int(rng.integers(3)))) * rng.uniform(0.01, 0.08)
        pos += len(speech) + gap
    speech_rms = float(np.sqrt(np.mean(audio[mask] ** 2))) if mask.any() else 0.1
    snr_db = rng.uniform(10, 30)
    audio += _unit(_noise(n, rng, int(rng.integers(2)))) * speech_rms * 10 ** (-snr_db / 20)
    return np.clip(audio, -1, 1), mask


def windows(audio: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of [64 context + 512 new samples] and their labels, padded to a multiple of ROWS rows."""
    n = len(audio) // HOP
    n_pad = -(-n // ROWS) * ROWS
    a = np.concatenate([np.zeros(CONTEXT, np.float32), audio[: n * HOP], np.zeros((n_pad - n) * HOP, np.float32)])
    m = np.concatenate([mask[: n * HOP], np.zeros((n_pad - n) * HOP, bool)])
    rows = np.stack([a[i * HOP: i * HOP + CONTEXT + HOP] for i in range(n_pad)])
    labels = m.reshape(n_pad, HOP).mean(1) > 0.5
    return rows.astype(np.float32), labels


def _clips(modules: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = [s for doc in docstrings(modules) for s in sentences(doc, 3, 16)]
    rng.shuffle(pool)
    rows, labels = [], []
    for i in range(n):
        texts = pool[i * 3:(i + 1) * 3][::-1]
        r, lab = windows(*clip(list(texts), rng))
        rows.append(r)
        labels.append(lab)
    return np.stack(rows), np.stack(labels)  # [clips, windows, 576], [clips, windows]


def frozen_state(src: Path, dst: Path) -> Path:
    """The model with its LSTM state inputs ``h`` / ``c`` turned into zero constants."""
    m = onnx.load(str(src))
    for name in ("h", "c"):
        inp = next(i for i in m.graph.input if i.name == name)
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        m.graph.initializer.append(numpy_helper.from_array(np.zeros(dims, np.float32), name))
        m.graph.input.remove(inp)
    m.producer_name = (m.producer_name or "") + "+bench-frozen-state"
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


class SileroVad(Task):
    name = "vad"
    title = "Silero VAD v6, 16 kHz (silero_vad_16k_sequence)"
    family = "speech: Conv STFT + Conv encoder + LSTM + Conv decoder"
    dist = "silero-vad"
    file = "silero_vad/data/silero_vad_16k_sequence.onnx"
    metric_name = "frame accuracy vs known speech segments"
    inputs = ("8 s clips at 16 kHz: espeak-ng utterances of stdlib docstring sentences (8 voices, speeds, "
              "pitches, gains), silence, noise / hum events, background noise at 10-30 dB SNR")
    EVAL_CLIPS = 24

    def prepare(self, work: Path, samples: int) -> Prepared:
        d = work / self.name
        d.mkdir(parents=True, exist_ok=True)
        ev = d / "eval.npz"
        if not ev.exists():
            x, y = _clips(EVAL_MODULES, self.EVAL_CLIPS, seed=2)
            save_npz(ev, {"x": x, "y": y})
            n_clips = -(-samples // ROWS)
            xc, _ = _clips(CALIB_MODULES, n_clips, seed=1)
            # ``samples`` windows: the first ROWS windows (2 s, in order) of each calibration clip
            save_npz(d / "calib.npz", {"input": xc[:, :ROWS].reshape(-1, CONTEXT + HOP)[:samples]})
            save_npz(d / "fidelity.npz", {"input": x[:4, :ROWS].reshape(-1, CONTEXT + HOP)})
        with np.load(ev) as z:
            self.x, self.y = z["x"], z["y"]
        self.model = frozen_state(package_dir("silero_vad") / "data" / Path(self.file).name,
                                  d / "silero_vad_16k_sequence_zero_state.onnx")
        note = ("LSTM state inputs `h`, `c` ([1, 1, 128], no sample axis, so no .npz can feed them) "
                "frozen to zeros, the state at a stream's start; nodes and weights unchanged")
        return Prepared(self.model, {"input": [ROWS, CONTEXT + HOP]}, d / "calib.npz", d / "fidelity.npz",
                        recover_batch=ROWS, notes=[note])

    def score(self, model: Path) -> Score:
        sess = session(model)
        out = [sess.get_outputs()[0].name]
        # each clip in chunks of ROWS windows (a multiple of ROWS per clip), the state from zero each time
        p = np.stack([run_batched(sess, {"input": rows}, ROWS, out)[0].reshape(-1) for rows in self.x])
        acc = float(((p > 0.5) == self.y).mean())
        speech = self.y.mean()
        return Score(acc, p, {"speech_fraction": float(speech)})

