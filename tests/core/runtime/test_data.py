"""Data: .npz calibration files (clear errors for bad ones), data-free generation, batching and
activation capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pruning_core import api
from pruning_core.errors import DataError
from pruning_core.ir import graph
from pruning_core.runtime import calibration, data


@pytest.fixture(scope="module")
def g(attn_onnx: Path) -> graph.Graph:
    return graph.load(attn_onnx)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def _good(g: graph.Graph, n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *g.shape("x")[1:])).astype(np.float32)


def test_good_file_loads(g: graph.Graph, tmp_path: Path) -> None:
    arrays, labels = data.load_npz(_npz(tmp_path, x=_good(g), labels=np.arange(5)), g)
    assert arrays["x"].shape[0] == 5 and labels is not None and labels.shape == (5,)


@pytest.mark.parametrize("case,match", [
    ("wrong_name", "do not match the model inputs"),
    ("extra_name", "unexpected"),
    ("wrong_shape", "has shape"),
    ("wrong_rank", "has shape"),
    ("wrong_dtype", "dtype"),
    ("nan", "NaN"),
    ("inf", "NaN or infinite"),
    ("labels_len", "labels"),
    ("not_npz", "not a readable .npz"),
    ("missing", "not found"),
])
def test_bad_files_raise_data_error(case: str, match: str, g: graph.Graph, tmp_path: Path) -> None:
    x = _good(g)
    if case == "wrong_name":
        p = _npz(tmp_path, pixels=x)
    elif case == "extra_name":
        p = _npz(tmp_path, x=x, y=x)
    elif case == "wrong_shape":
        p = _npz(tmp_path, x=x[:, :, :5])
    elif case == "wrong_rank":
        p = _npz(tmp_path, x=x[..., None])
    elif case == "wrong_dtype":
        p = _npz(tmp_path, x=np.array([["a"] * x.shape[2]] * x.shape[1])[None].repeat(5, 0))
    elif case in ("nan", "inf"):
        x[2, 1, 0] = np.nan if case == "nan" else np.inf
        p = _npz(tmp_path, x=x)
    elif case == "labels_len":
        p = _npz(tmp_path, x=x, labels=np.zeros(3))
    elif case == "not_npz":
        p = tmp_path / "d.npz"
        p.write_bytes(b"this is not a zip file")
    else:
        p = tmp_path / "absent.npz"
    with pytest.raises(DataError, match=match):
        data.load_npz(p, g)


def test_prune_rejects_bad_data_before_work(attn_onnx: Path, tmp_path: Path) -> None:
    p = _npz(tmp_path, wrong=np.zeros((2, 6, 32), np.float32))
    with pytest.raises(DataError):
        api.prune(attn_onnx, {"criterion": "obspa"}, tmp_path / "out", data=p)
    assert not (tmp_path / "out" / "pruned.onnx").exists()


def test_prune_with_calibration_data(attn_onnx: Path, g: graph.Graph, tmp_path: Path) -> None:
    p = _npz(tmp_path, x=_good(g, 6), labels=np.arange(6) % 3)
    res = api.prune(attn_onnx, {"measure": False, "criterion": "obspa", "target": {"flops": 0.3}}, tmp_path / "o", data=p)
    assert res.report["verify"]["passed"]


# ------------------------------------------------------------------------------ data-free


def test_synthetic_inputs_seeded_and_batched(g: graph.Graph) -> None:
    a, b, c = (data.synthetic_inputs(g, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(a["x"], c["x"])
    assert data.synthetic_inputs(g, batch=3)["x"].shape[0] == 3


def test_token_ids_bounded_by_embedding_and_masks_are_ones() -> None:
    from onnx import TensorProto, helper, numpy_helper

    emb = numpy_helper.from_array(np.zeros((7, 4), np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "ax"], ["mu"]),
             helper.make_node("Mul", ["e", "mu"], ["y"])]
    gr = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 50]),
                                        helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 50])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 50, 4])],
                           [emb, numpy_helper.from_array(np.array([2], np.int64), "ax")])
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    feeds = data.synthetic_inputs(graph.load(m), seed=3)
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 7 and len(np.unique(feeds["ids"])) > 1
    assert (feeds["mask"] == 1).all()


def test_data_free_inputs_follow_the_models_normalization() -> None:
    """An input normalized inside the model, (x - mean) / std, is generated as mean + std * z."""
    from onnx import TensorProto, helper, numpy_helper

    mean = numpy_helper.from_array(np.array([100.0, -50.0], np.float32).reshape(1, 2, 1), "mean")
    std = numpy_helper.from_array(np.array([10.0, 2.0], np.float32).reshape(1, 2, 1), "std")
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"]), helper.make_node("Div", ["c", "std"], ["y"])]
    gr = helper.make_graph(nodes, "n", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 500])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2, 500])], [mean, std])
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    x = data.synthetic_inputs(graph.load(m), seed=0)["x"]
    y = (x - np.array([100.0, -50.0]).reshape(1, 2, 1)) / np.array([10.0, 2.0]).reshape(1, 2, 1)
    assert abs(y.mean()) < 0.1 and abs(y.std() - 1) < 0.1


# ------------------------------------------------------------------------------ batching, capture


def test_batches_at_model_batch_size(g: graph.Graph) -> None:
    bsz = calibration.model_batch(g)
    free = list(calibration.batches(g, samples=3 * bsz + 1, seed=0))
    assert len(free) == 4 and all(b.feeds["x"].shape[0] == bsz for b in free)
    assert not np.array_equal(free[0].feeds["x"], free[1].feeds["x"])
    x = _good(g, 2 * bsz + 1)
    got = list(calibration.batches(g, {"x": x}, np.arange(len(x)), samples=100))
    assert len(got) == 3 and all(b.feeds["x"].shape[0] == bsz for b in got)
    assert got[0].class_labels is not None and got[0].class_labels[0] == 0
    with pytest.raises(DataError):
        list(calibration.batches(g, {"y": x}))


def test_bn_matched_inputs_match_running_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data-free inputs for a BatchNorm model are optimized until every BN sees its running
    statistics: much closer to them than plain Gaussian inputs; cached per model file."""
    import warnings

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).eval()
    # running statistics of "real" data unlike the Gaussian: offset, scaled, spatially smooth
    real = 1.5 + 3 * torch.nn.functional.interpolate(torch.randn(64, 3, 4, 4), size=(8, 8), mode="bilinear")
    for bn in (net[1], net[4]):
        bn.momentum = None  # cumulative average: the statistics of exactly this data
    with torch.no_grad():
        net.train()(real)
    net.eval()
    path = tmp_path / "bn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(8, 3, 8, 8),), str(path), input_names=["x"], dynamo=False,
                          do_constant_folding=False)
    gr = graph.load(path)
    assert calibration.synthesizes(gr)
    bns = [n for n in gr.nodes if n.op_type == "BatchNormalization"]

    def stat_error(src: list[calibration.Batch]) -> float:
        err = 0.0
        for _, vals in calibration.capture(gr, [b.input[0] for b in bns], src):
            for b in bns:
                a = vals[b.input[0]]
                err += np.abs(a.mean((0, 2, 3)) - gr.inits[b.input[3]]).mean()
                err += np.abs(a.var((0, 2, 3)) - gr.inits[b.input[4]]).mean()
        return err

    gauss = [calibration.Batch(data.synthetic_inputs(gr, seed=1))]
    synth = calibration.bn_matched(gr, samples=8, seed=0, steps=25)
    assert synth is not None and synth[0].feeds["x"].shape == gr.shape("x")
    assert stat_error(synth) < 0.5 * stat_error(gauss), (stat_error(synth), stat_error(gauss))
    assert calibration.bn_matched(gr, samples=8, seed=0, steps=25) is synth  # cached
    monkeypatch.setattr(calibration, "SYNTH_STEPS", 25)
    got = list(calibration.batches(gr, samples=8, seed=0))  # the data-free default path
    assert len(got) == len(synth) and all(a is b for a, b in zip(got, synth, strict=True))


def test_capture_returns_intermediates(g: graph.Graph) -> None:
    relu = next(n for n in g.nodes if n.op_type == "Relu")
    src = list(calibration.batches(g, samples=2, seed=0))
    got = list(calibration.capture(g, [relu.output[0]], src))
    assert len(got) == len(src)
    for _, vals in got:
        v = vals[relu.output[0]]
        assert v.shape == g.shape(relu.output[0]) and (v >= 0).all()
