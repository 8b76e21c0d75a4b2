"""The latency model: what a layer costs on the runtime the user runs, measured, not guessed.

MACs say little about speed: a depthwise conv is memory-bound, a width of 35 leaves vector lanes
idle, attention matmuls cost more per MAC than projections. So every costly node (Conv,
ConvTranspose, Gemm, MatMul) is timed on onnxruntime as a one-node model, with the execution
provider, thread count and batch of ``spec.runtime``, at its shapes before pruning and at the
widths a selection picks. Identical nodes (the repeated blocks of a ResNet or a BERT) share one
measurement; measurements are cached on disk by the worker (``SPA_LATENCY_CACHE``), keyed by
the node, the runtime and the machine.

Selection uses the table as a per-node linear model (a node's time scales with its MACs, the rest
of the graph with the activations of the costly nodes), HALP-style: the importance lost per
millisecond saved ranks removals for a latency target, and breaks ties for the other targets.
The linear model is only the guide: a latency target is met on the whole pruned model, measured
(``pruning_core.latency_target``), and the kernels' preferred widths come from ``auto_step``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from pruning_core.errors import SpecError
from pruning_core.ir.graph import Graph
from pruning_core.runtime.metrics import node_macs

COSTLY = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class RuntimeConfig:
    provider: str = "cpu"
    threads: int = 2
    batch: int | None = None

    @classmethod
    def from_spec(cls, rt: Any) -> RuntimeConfig:
        return cls(rt.provider, int(rt.threads), rt.batch)

    def providers(self) -> list[str]:
        """onnxruntime providers for this runtime; a provider this machine lacks is the user's
        error (a spec asking for CUDA on a CPU-only worker), said in a sentence."""
        import onnxruntime as ort

        want = PROVIDERS[self.provider]
        have = ort.get_available_providers()
        if want not in have:
            names = ", ".join(p.removesuffix("ExecutionProvider") for p in have)
            raise SpecError(f"runtime.provider {self.provider!r} is not available on this worker "
                            f"(onnxruntime here has: {names})")
        return [want] if want == "CPUExecutionProvider" else [want, "CPUExecutionProvider"]

    def describe(self) -> dict[str, Any]:
        return {"provider": self.provider, "threads": self.threads, "batch": self.batch}


def session(model: Any, rt: RuntimeConfig):
    """A timing session: constant weights (so onnxruntime prepacks them), all graph
    optimizations, ``rt.threads`` intra-op threads that sleep when idle."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = rt.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Sessions are timed in turn (the original and a candidate, one-node models): a pool thread
    # left spinning after one session's run steals a core from the next one's, and on a small
    # machine the two-thread timings then say more about the order than about the models.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, opts, providers=rt.providers())


# A model served repeatedly runs with its weights and buffers warm in the caches. Timed in turn one
# run at a time, each run follows another model's and starts partly cold, which costs a small
# model more in proportion than a large one: MobileNetV2 pruned to half its MACs measured 1.79x
# faster that way at 2 threads, and 1.88x with two untimed runs before each model's timed ones.
# So each model's turn is a short slice: SETTLE untimed runs, then BLOCK timed ones. A run longer
# than SLICE_MS streams far more than any cache holds and gets one timed run per turn.
SETTLE, BLOCK, SLICE_MS = 2, 3, 50.0


def time_in_turn(sessions: list[Any], inputs: list[dict[str, np.ndarray]], budget_s: float = 3.0,
                 max_rounds: int = 50, min_runs: int = 5, warmup: int = 2) -> list[dict[str, float]]:
    """Latency of several sessions, timed in turn (one slice of each per round, the order
    rotating) so that drift of the machine (turbo, a neighbour's load) hits all alike, each slice
    warm as in serving (``SETTLE``). Median, quartiles and spread in ms of at least ``min_runs``
    timed runs each."""
    slow = []
    for s, x in zip(sessions, inputs, strict=True):
        t0 = time.perf_counter()
        for _ in range(warmup):
            s.run(None, x)
        slow.append((time.perf_counter() - t0) * 1e3 / max(warmup, 1) > SLICE_MS)
    times: list[list[float]] = [[] for _ in sessions]
    t_start = time.perf_counter()
    rounds = 0
    n = len(sessions)
    while rounds < max_rounds and (min(map(len, times)) < min_runs or time.perf_counter() - t_start < budget_s):
        for j in range(n):
            i = (j + rounds) % n
            times[i] += timed_slice(sessions[i], inputs[i], slow[i], alone=n == 1)
        rounds += 1
    return [stats(t) for t in times]


def timed_slice(sess: Any, x: dict[str, np.ndarray], slow: bool, alone: bool = False) -> list[float]:
    """One model's turn: ``SETTLE`` untimed runs (none when it is timed alone: it stays warm),
    then ``BLOCK`` timed ones (ms); a single timed run when one run takes over ``SLICE_MS``."""
    settle, block = (0, 1) if slow else (0 if alone else SETTLE, BLOCK)
    for _ in range(settle):
        sess.run(None, x)
    out = []
    for _ in range(block):
        t0 = time.perf_counter()
        sess.run(None, x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def stats(times: list[float]) -> dict[str, float]:
    q = np.percentile(times, [25, 50, 75])
    med = float(statistics.median(times))
    return {"median_ms": med, "p25_ms": float(q[0]), "p75_ms": float(q[2]),
            "spread": float((q[2] - q[0]) / med) if med > 0 else 0.0, "runs": len(times)}


def auto_step(rt: RuntimeConfig) -> int:
    """The width step the kernels want. onnxruntime's CPU convolutions work on channel blocks of
    the vector width (NCHWc: 16 floats with AVX-512, 8 with AVX2/NEON) and its GEMMs pack
    panels of the same width; CUDA tensor cores want multiples of 8."""
    if rt.provider == "cuda":
        return 8
    return 16 if "avx512f" in _cpu_flags() else 8


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}|{os.cpu_count()}"


class NodeTimer:
    """Times one-node models; one measurement per distinct (node, shapes, runtime), cached in
    memory and, when ``cache_dir`` is writable, on disk."""

    def __init__(self, g: Graph, rt: RuntimeConfig, cache_dir: Path | None = None,
                 budget_s: float = 0.15) -> None:
        import onnxruntime as ort

        self.g, self.rt, self.budget_s = g, rt, budget_s
        self.memo: dict[str, float] = {}
        self.measured = 0
        self.salt = json.dumps([ort.__version__, _machine(), rt.describe(), g.opset])
        self.cache_file = None
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                self.cache_file = cache_dir / f"{hashlib.sha256(self.salt.encode()).hexdigest()[:24]}.json"
                if self.cache_file.is_file():
                    self.memo.update(json.loads(self.cache_file.read_text()))
            except (OSError, ValueError):  # a cache is an optimization: never a failure
                self.cache_file = None

    def save(self) -> None:
        if self.cache_file is None or not self.measured:
            return
        try:
            tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.memo))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass

    def key(self, node: Any, shape: Callable[[str], tuple[int, ...]]) -> str:
        attrs = sorted((a.name, helper.get_attribute_value(a)) for a in node.attribute)
        ins = [(n, tuple(shape(n)) if n else None, n in self.g.inits) for n in node.input]
        sig = [node.op_type, repr(attrs), [(s, c) for _, s, c in ins], tuple(shape(node.output[0])),
               int(self.g.dtypes.get(node.input[0], TensorProto.FLOAT))]
        return hashlib.sha256(repr(sig).encode()).hexdigest()[:32]

    def ms(self, node: Any, shape: Callable[[str], tuple[int, ...]]) -> float:
        k = self.key(node, shape)
        if k not in self.memo:
            self.memo[k] = self._measure(node, shape)
            self.measured += 1
        return self.memo[k]

    def _measure(self, node: Any, shape: Callable[[str], tuple[int, ...]]) -> float:
        sess, feeds = self._one_node(node, shape)
        for _ in range(2):
            sess.run(None, feeds)
        times = []
        t_start = time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - t_start < self.budget_s and len(times) < 50):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(statistics.median(times))

    def compare(self, node: Any, shapes: list[Callable[[str], tuple[int, ...]]]) -> list[float]:
        """The node at several shapes, timed in turn now (for the report's before/after: table
        entries may come from another moment or the disk cache)."""
        built = [self._one_node(node, sh) for sh in shapes]
        res = time_in_turn([s for s, _ in built], [f for _, f in built], budget_s=2 * self.budget_s,
                           max_rounds=30, min_runs=5)
        return [r["median_ms"] for r in res]

    def _one_node(self, node: Any, shape: Callable[[str], tuple[int, ...]]) -> tuple[Any, dict[str, np.ndarray]]:
        g = self.g
        dtype = g.dtypes.get(node.input[0], TensorProto.FLOAT)
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        rng = np.random.default_rng(0)
        inits, inputs, feeds = [], [], {}
        names = []
        for i, name in enumerate(node.input):
            if not name:
                names.append("")
                continue
            local = f"x{i}"
            names.append(local)
            arr = (rng.standard_normal(shape(name)) * 0.1).astype(np_dtype)
            if name in g.inits:  # weights stay constants: onnxruntime prepacks them
                inits.append(helper.make_tensor(local, dtype, arr.shape, arr.tobytes(), raw=True))
            else:
                inputs.append(helper.make_tensor_value_info(local, dtype, arr.shape))
                feeds[local] = arr
        out = helper.make_tensor_value_info("y", dtype, None)
        one = helper.make_node(node.op_type, names, ["y"], domain=node.domain)
        one.attribute.extend(a for a in node.attribute if a.name != "group")
        group = _group_after(node, g, shape)
        if group is not None:
            one.attribute.append(helper.make_attribute("group", group))
        m = helper.make_model(helper.make_graph([one], "one", inputs, [out], inits),
                              opset_imports=[helper.make_opsetid("", g.opset)], ir_version=g.model.ir_version)
        return session(m, self.rt), feeds


def _group_after(node: Any, g: Graph, shape: Callable[[str], tuple[int, ...]]) -> int | None:
    """A grouped conv's group count at these shapes (surgery's rule: a depthwise conv stays
    depthwise; otherwise channels per group are kept)."""
    from pruning_core.ir.graph import attr

    group = int(attr(node, "group", 1))
    if group == 1 or node.op_type not in ("Conv", "ConvTranspose"):
        return group if node.op_type in ("Conv", "ConvTranspose") else None
    c_in = shape(node.input[0])[1]
    if node.op_type == "Conv":
        return max(1, c_in // max(1, shape(node.input[1])[1]))
    return c_in if group == g.shape(node.input[0])[1] else group


class LatencyTable:
    """Measured latency of every costly node at the original shapes, and the linear model
    selection ranks with (see the module docstring)."""

    def __init__(self, an: Any, rt: RuntimeConfig, cache_dir: Path | None = None,
                 whole_ms: float | None = None,
                 progress: Callable[[float, str], None] | None = None) -> None:
        self.an, self.rt = an, rt
        g = an.graph
        self.timer = NodeTimer(g, rt, cache_dir)
        self.nodes = [n for n in g.nodes if n.op_type in COSTLY and node_macs(n, g.shape) > 0]
        self.macs0 = np.array([node_macs(n, g.shape) for n in self.nodes], np.float64)
        self.acts0 = np.array([float(np.prod(g.shape(n.output[0]))) for n in self.nodes], np.float64)
        self.ms0 = np.zeros(len(self.nodes))
        for i, n in enumerate(self.nodes):
            self.ms0[i] = self.timer.ms(n, g.shape)
            if progress is not None and (i % 8 == 0 or i == len(self.nodes) - 1):
                progress((i + 1) / max(1, len(self.nodes)), f"latency table {i + 1}/{len(self.nodes)} layers")
        self.timer.save()
        layers = float(self.ms0.sum())
        # what the costly nodes do not explain (elementwise ops, norms, copies): scaled with
        # their activations; a whole-model time below the layers' sum (fusion) leaves no rest
        self.rest_ms = max(0.0, (whole_ms or layers) - layers)
        self.base = self.predict(None)
        self._saved: dict[int, tuple[int, float, float]] = {}

    def predict(self, removed: np.ndarray | None) -> float:
        """Predicted whole-model latency (ms) once ``removed`` channels are gone."""
        if removed is None or not removed.any():
            return float(self.ms0.sum() + self.rest_ms)
        return self._predict(*self._after(removed))

    def _predict(self, macs: np.ndarray, acts: np.ndarray) -> float:
        node = self.ms0 * np.divide(macs, self.macs0, out=np.ones_like(macs), where=self.macs0 > 0)
        rest = self.rest_ms * (acts.sum() / self.acts0.sum() if self.acts0.sum() else 1.0)
        return float(node.sum() + rest)

    def _after(self, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def shape(t: str) -> tuple[int, ...]:
            return self.an.shape_after(t, removed)
        macs = np.array([node_macs(n, shape) for n in self.nodes], np.float64)
        acts = np.array([float(np.prod(shape(n.output[0]))) for n in self.nodes], np.float64)
        return macs, acts

    def removed_fraction(self, removed: np.ndarray) -> float:
        return 1.0 - self.predict(removed) / self.base if self.base > 0 else 0.0

    def _savings(self, grp: Any) -> tuple[int, float, float]:
        """(channels, predicted ms saved, costly-node MACs saved) when all of ``grp``'s removable
        channels go; computed once per group (selection asks for it per target try)."""
        if grp.id not in self._saved:
            r = np.zeros(self.an.n_channels, dtype=bool)
            r[grp.channels[grp.removable]] = True
            n = int(r.sum())
            if not n:
                self._saved[grp.id] = (0, 0.0, 0.0)
            else:
                macs, acts = self._after(r)
                self._saved[grp.id] = (n, max(0.0, self.base - self._predict(macs, acts)),
                                       float(self.macs0.sum() - macs.sum()))
        return self._saved[grp.id]

    def ms_per_channel(self, groups: Iterable[Any]) -> dict[int, float]:
        """Predicted milliseconds saved per removed channel of each group (all of its removable
        channels removed, averaged): the denominator of importance-per-millisecond."""
        out = {}
        for grp in groups:
            n, ms, _ = self._savings(grp)
            out[grp.id] = ms / n if n else 0.0
        return out

    def leverage(self, groups: Iterable[Any]) -> dict[int, float]:
        """Per group: the share of the model's predicted time its removable channels save over the
        share of its MACs they save (> 1: a MAC there costs more time than the average MAC)."""
        out = {}
        for grp in groups:
            n, ms, macs = self._savings(grp)
            if n:
                out[grp.id] = (ms / self.base) / (macs / self.macs0.sum()) if macs > 0 else 1.0
        return out

    def layers(self, removed: np.ndarray) -> list[dict[str, Any]]:
        """Per costly node: MACs, parameters (its weight and bias), and one-node latency at the
        original and the chosen shapes, timed in turn on the same runtime (identical pairs measured
        once)."""
        def shape(t: str) -> tuple[int, ...]:
            return self.an.shape_after(t, removed)
        g = self.an.graph
        pairs: dict[tuple[str, str], list[float]] = {}
        rows = []
        for i, n in enumerate(self.nodes):
            macs_after = node_macs(n, shape)
            k = (self.timer.key(n, g.shape), self.timer.key(n, shape))
            if k not in pairs:
                pairs[k] = self.timer.compare(n, [g.shape, shape]) if macs_after else [self.ms0[i], 0.0]
            before, after = pairs[k]
            weights = [t for t in n.input[1:] if t and t in g.inits]
            rows.append({"node": n.name, "op": n.op_type, "macs_before": int(self.macs0[i]),
                         "macs_after": int(macs_after), "latency_ms_before": round(float(before), 5),
                         "latency_ms_after": round(float(after), 5),
                         "params_before": int(sum(np.prod(g.shape(t), dtype=np.int64) for t in weights)),
                         "params_after": int(sum(np.prod(self.an.shape_after(t, removed), dtype=np.int64)
                                                 for t in weights))})
        return rows


def cache_dir_from_env() -> Path | None:
    v = os.environ.get("SPA_LATENCY_CACHE")
    if v == "":
        return None
    return Path(v) if v else Path.home() / ".cache" / "spa" / "latency"


class Stopwatch:
    """The original model's timing session, kept open while candidates are timed against it in
    turn (a latency target's tries, then the result). Models whose weights exceed
    ``pair_limit_bytes`` are timed one after the other instead, so two copies never coexist."""

    def __init__(self, g: Graph, path: Path, rt: RuntimeConfig, inputs: dict[str, np.ndarray],
                 pair_limit_bytes: int = 1 << 30) -> None:
        from pruning_core.ir.signature import restore

        self.path, self.rt, self.inputs = path, rt, inputs
        # with the original's signature (its dynamic dims), like every candidate timed against it:
        # what the user runs; a graph with every shape static optimizes differently
        restore(g.light(), g).save(path)
        self.big = sum(a.nbytes for a in g.inits.values()) > pair_limit_bytes
        self.sess = None if self.big else session(path, rt)

    def _original(self):
        return self.sess if self.sess is not None else session(self.path, self.rt)

    def alone(self, budget_s: float = 1.5) -> dict[str, float]:
        return time_in_turn([self._original()], [self.inputs], budget_s)[0]

    def pair(self, candidate: Path, budget_s: float = 3.0) -> tuple[dict[str, float], dict[str, float], Any, Any]:
        """(before, after) latency stats and the two sessions' outputs on the inputs."""
        if self.big:
            s0 = session(self.path, self.rt)
            before = time_in_turn([s0], [self.inputs], budget_s / 2)[0]
            ref = s0.run(None, self.inputs)
            del s0
            s1 = session(candidate, self.rt)
            after = time_in_turn([s1], [self.inputs], budget_s / 2)[0]
            return before, after, ref, s1.run(None, self.inputs)
        s1 = session(candidate, self.rt)
        before, after = time_in_turn([self.sess, s1], [self.inputs, self.inputs], budget_s)
        return before, after, self.sess.run(None, self.inputs), s1.run(None, self.inputs)

    def close(self) -> None:
        self.sess = None
        self.path.unlink(missing_ok=True)
