"""The pruned model keeps the original's signature, and says where it came from.

Analysis runs at concrete input shapes (a dynamic batch at 1) and folds shape computations at
them; ``pruning_core.ir.signature`` gives the saved ``pruned.onnx`` the original's inputs and
outputs back and makes the folded constants batch-agnostic again. Checked here:

- zoo nets exported with a dynamic batch axis (tests/zoo/dynamic.py), both exporters, pruned
  through ``api.prune``: same input / output names, dtypes and dims, and the result runs at batch
  1 and 7 and equals the masked original (the original file with the removed channels zeroed,
  built by ``verify.masked_model``) at both. The default run takes a representative subset
  (residual CNN, depthwise, concat / split, multi-input, U-Net, ViT, Swin (batch folded into
  windows), BERT, GPT-2, Llama): the dynamic exports cost ~4 s each, the whole zoo ~5 minutes on
  2 cores. ``SPA_SIGNATURE_ZOO=all`` runs every entry;
- a dynamic dim that cannot be restored (a folded position table of the sequence length) keeps
  the size analysis used, the batch stays dynamic; one that can (an ``arange`` index) stays dynamic;
- a dynamic-batch ``.pt2`` gives a dynamic-batch ``pruned.onnx`` (``pruned.pt2`` stays specialized);
- ``metadata_props``: the ``spa.*`` provenance entries, the user's own entries kept, stamping in
  place with external data.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pruning_core.analysis.groups import Analysis, analyze
from pruning_core.api import prune
from pruning_core.ir import graph as graph_mod
from pruning_core.ir import provenance
from pruning_core.verify import TOL, masked_model
from tests.zoo import EXPORTERS, ZOO
from tests.zoo.acceptance import SPEC as ZOO_SPEC
from tests.zoo.dynamic import batch_inputs, dynamic_export
from tests.zoo.export import ExportError

pytestmark = pytest.mark.timeout(300)

SPEC: dict[str, Any] = {**ZOO_SPEC, "round_to": 1, "measure": False}
SUBSET = ["resnet", "depthwise_separable", "concat_split", "multi_io", "unet", "vit", "swin", "bert", "gpt2",
          "llama"]
NAMES = list(ZOO) if os.environ.get("SPA_SIGNATURE_ZOO") == "all" else SUBSET
BATCHES = (1, 7)


# ------------------------------------------------------------------------------- helpers


def _signature(m: onnx.ModelProto) -> list[tuple[str, str, int, list[str | int] | None]]:
    def one(kind: str, vi: onnx.ValueInfoProto) -> tuple[str, str, int, list[str | int] | None]:
        tt = vi.type.tensor_type
        dims = [d.dim_param or d.dim_value or "?" for d in tt.shape.dim] if tt.HasField("shape") else None
        return kind, vi.name, tt.elem_type, dims

    return [one("in", i) for i in m.graph.input] + [one("out", o) for o in m.graph.output]


def _removed(an: Analysis, report: dict[str, Any]) -> np.ndarray:
    """The channels a prune removed, from its report (kept positions per group)."""
    removed = np.zeros(an.n_channels, dtype=bool)
    for grp, rep in zip(an.groups, report["groups"], strict=True):
        assert rep["id"] == grp.id
        if rep["kept_channels"] is not None:
            gone = np.ones(grp.size, dtype=bool)
            gone[rep["kept_channels"]] = False
            removed[grp.channels[gone]] = True
    assert int(removed.sum()) == report["channels"]["removed"]
    return removed


def _masked_original(path: Path, an: Analysis, removed: np.ndarray) -> onnx.ModelProto:
    """The original file (dynamic shapes, nothing folded) with the removed channels zeroed before
    every consumer: ``verify.masked_model`` on the file's own graph, its nodes named as
    ``graph.load`` names them (the analysis refers to them by name)."""
    m = onnx.load(str(path))
    graph_mod._name_nodes(m)
    names = {n.name for n in m.graph.node}
    missing = {node for node, _, _ in an.consumer_inputs} - names
    assert not missing, f"consumers not in the original graph: {sorted(missing)[:5]}"
    file_graph = types.SimpleNamespace(model=m, dtypes=an.graph.dtypes, inits={})
    assert not an.zeroed, "a recurrent op's gate rows would have to be zeroed in the file's weights"
    shim = types.SimpleNamespace(graph=file_graph, consumer_inputs=an.consumer_inputs, mask=an.mask, zeroed=[])
    return masked_model(shim, removed).proto  # type: ignore[arg-type]


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_equal(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"{what}: output {i} shape {g.shape} != {w.shape}"
        scale = max(1.0, float(np.abs(w).max()) if w.size else 0.0)
        err = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
        assert err <= TOL * scale, f"{what}: output {i} differs from the masked original by {err:.3g}"


def _check_pruned(original: Path, out: Path, report: dict[str, Any], feeds_at: Callable[[int], dict],
                  batches: tuple[int, ...] = BATCHES) -> onnx.ModelProto:
    """Signature as the original's; runs at every batch and equals the masked original there."""
    pruned_path = out / "pruned.onnx"
    pruned = onnx.load(str(pruned_path))
    onnx.checker.check_model(pruned, full_check=True)
    assert _signature(pruned) == _signature(onnx.load(str(original)))
    # no intermediate value info pins a concrete batch
    assert not [vi.name for vi in pruned.graph.value_info if vi.type.tensor_type.shape.dim
                and vi.type.tensor_type.shape.dim[0].HasField("dim_value")]
    an = analyze(graph_mod.load(original))
    masked = _masked_original(original, an, _removed(an, report))
    for b in batches:
        feeds = feeds_at(b)
        _assert_equal(_run(pruned_path, feeds), _run(masked, feeds), f"batch {b}")
    return pruned


# ------------------------------------------------------------------------------ the zoo


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_zoo_dynamic_batch_survives_pruning(name: str, exporter: str, tmp_path: Path) -> None:
    if exporter in ZOO[name].excused:
        pytest.skip(f"excused: {ZOO[name].excused[exporter]}")
    try:
        path = dynamic_export(name, exporter)
    except ExportError as exc:
        pytest.fail(f"{name} does not export with a dynamic batch ({exporter}): {exc}", pytrace=False)
    result = prune(path, SPEC, tmp_path)
    assert result.summary["channels_removed"] > 0
    pruned = _check_pruned(path, tmp_path, result.report, lambda b: batch_inputs(path, b))
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in pruned.graph.input)


# ------------------------------------------------------------------- other dynamic dims


def _seq_model(path: Path, table_rows: int) -> None:
    """x[batch, seq, 8] -> MatMul 8x16 -> Relu -> MatMul 16x8, plus a position table looked up
    with Range(0, seq). A small table is folded into a [seq, 8] constant (the sequence length
    cannot be restored); a large one is not (FOLD_MAX_WEIGHT_IN) and only the index is."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 8)), ("table", (table_rows, 8)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("one", 1), ("zero", 0))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Gather", ["table", "positions"], ["pos"], axis=0),
        helper.make_node("Add", ["y", "pos"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize(("table_rows", "seq_after"), [(32, 16), (1024, "seq")])
def test_a_dim_that_cannot_be_restored_keeps_its_size(tmp_path: Path, table_rows: int, seq_after: str | int) -> None:
    src = tmp_path / "seq.onnx"
    _seq_model(src, table_rows)
    result = prune(src, {**SPEC, "target": {"channels": 0.25}, "input_shapes": {"x": [1, 16, 8]}}, tmp_path / "out")
    pruned = onnx.load(str(tmp_path / "out" / "pruned.onnx"))
    assert _signature(pruned) == [("in", "x", TensorProto.FLOAT, ["batch", seq_after, 8]),
                                  ("out", "out", TensorProto.FLOAT, ["batch", seq_after, 8])]
    rng = np.random.default_rng(1)
    an = analyze(graph_mod.load(src, {"x": [1, 16, 8]}))
    masked = _masked_original(src, an, _removed(an, result.report))
    for b, s in [(1, 16), (7, 16)] + ([(3, 20)] if seq_after == "seq" else []):
        feeds = {"x": rng.standard_normal((b, s, 8)).astype(np.float32)}
        _assert_equal(_run(tmp_path / "out" / "pruned.onnx", feeds), _run(masked, feeds), f"batch {b}, seq {s}")


def test_pytorch_program_with_a_dynamic_batch(tmp_path: Path) -> None:
    import torch

    from tests.core.nets import MixNet

    torch.manual_seed(0)
    model = MixNet().eval()
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    result = prune(tmp_path / "model.pt2", {**SPEC, "target": {"flops": 0.3}}, tmp_path / "out")
    assert {"pruned.onnx", "pruned.pt2", "plan.json"} <= set(result.artifacts)
    sess = ort.InferenceSession(str(result.artifacts["pruned.onnx"]), providers=["CPUExecutionProvider"])
    assert [type(d) for d in sess.get_inputs()[0].shape] == [str, int, int, int]
    program = torch.export.load(str(result.artifacts["pruned.pt2"]))
    for b in BATCHES:
        xb = torch.randn(b, 3, 16, 16)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})
        assert got.shape == (b, 10)
        if b == 1:  # pruned.pt2 is specialized to the batch analysis used
            with torch.no_grad():
                want = program.module()(xb).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- provenance


def test_provenance_metadata(mixnet_onnx: Path, tmp_path: Path) -> None:
    src = tmp_path / "mine.onnx"
    m = onnx.load(str(mixnet_onnx))
    helper.set_model_props(m, {"author": "me", "license": "MIT", "spa.version": "0.0.0-stale"})
    onnx.save(m, str(src))
    result = prune(src, SPEC, tmp_path / "out")
    pruned = onnx.load(str(result.artifacts["pruned.onnx"]))
    onnx.checker.check_model(pruned, full_check=True)  # also refuses duplicate keys
    props = {p.key: p.value for p in pruned.metadata_props}
    assert [p.key for p in pruned.metadata_props].count("spa.version") == 1
    assert props["author"] == "me" and props["license"] == "MIT"
    assert props["spa.version"] == metadata.version("spa-service")
    assert json.loads(props["spa.spec"]) == result.report["spec"]
    assert props["spa.source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    s = result.summary
    assert json.loads(props["spa.figures"]) == {
        "params": {"before": s["params_before"], "after": s["params_after"]},
        "macs": {"before": s["macs_before"], "after": s["macs_after"]},
        "latency_ms": {"before": s["latency_ms_before"], "after": s["latency_ms_after"]},
        "verify_max_error": s["verify_max_error"],
    }
    assert provenance.read(result.artifacts["pruned.onnx"]) == props


def test_stamp_in_place_keeps_external_data(tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"mine": "kept"})
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = (tmp_path / "m.onnx.data").read_bytes()

    provenance.stamp(path, {"spa.a": "1", "spa.b": "2"})   # appended
    provenance.stamp(path, {"spa.b": "3", "spa.c": "4"})   # spa.b replaced
    assert (tmp_path / "m.onnx.data").read_bytes() == data
    assert provenance.read(path) == {"mine": "kept", "spa.a": "1", "spa.b": "3", "spa.c": "4"}
    onnx.checker.check_model(str(path), full_check=True)
    x = np.ones((3, 64), np.float32)
    (y,) = _run(path, {"x": x})
    np.testing.assert_allclose(y, x @ w, rtol=1e-5)
