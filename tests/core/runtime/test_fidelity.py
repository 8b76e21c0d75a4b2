"""Fidelity where the user's task lives (pruning_core/runtime/fidelity.py, holdout.py): the
held-out split, eval data, top-1 agreement (per sample and per position), accuracy from labels,
the synthetic label without data, and one-sentence errors for bad data or splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from client.cli import main
from pruning_core import api
from pruning_core.errors import DataError
from pruning_core.ir import graph
from pruning_core.runtime import fidelity, holdout
from pruning_core.spec import PruneSpec
from tests.core.training.test_recover import accuracy, digits_model

# params targets: the latency refusal (slower than the original) does not apply to them, and the
# tiny digits net measures in microseconds
SPEC = {"target": {"params": 0.3}, "criterion": "l1"}


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    path, xtr, ytr, xte, yte = digits_model()
    d = tmp_path_factory.mktemp("digits")
    return {
        "model": path,
        "calib": _npz(d / "calib.npz", x=xtr[:300], labels=ytr[:300]),
        "test": _npz(d / "test.npz", x=xte, labels=yte),
        "big": _npz(d / "big.npz", x=np.concatenate([xtr, xte])[:1100]),
    }


def test_holdout_count_rule() -> None:
    assert holdout.holdout_count(None, None) == 0
    assert holdout.holdout_count(9, None) == 0  # small data: nothing held out by default
    assert holdout.holdout_count(10, None) == 2 and holdout.holdout_count(300, None) == 60
    assert holdout.holdout_count(300, 0.0) == 0 and holdout.holdout_count(3, 0.5) == 2
    assert holdout.holdout_count(300, None, separate_eval=True) == 0
    with pytest.raises(DataError, match="leaves no sample for calibration"):
        holdout.holdout_count(3, 0.9)
    with pytest.raises(DataError, match="no calibration data was given"):
        holdout.holdout_count(None, 0.3)
    with pytest.raises(DataError, match="not both"):
        holdout.holdout_count(100, 0.3, separate_eval=True)


def test_split_is_disjoint_and_seeded(digits: dict[str, Path]) -> None:
    g = graph.load(digits["model"])
    spec = PruneSpec.model_validate(SPEC)
    calib, labels, ev = fidelity.prepare(g, spec, digits["calib"])
    assert calib is not None and labels is not None
    assert len(calib["x"]) == len(labels) == 240 and len(ev.ev.feeds["x"]) == 60 and ev.ev.kind == "held-out data"
    full = np.load(digits["calib"])["x"]
    rows = {r.tobytes() for r in full}
    seen, held = {r.tobytes() for r in calib["x"]}, {r.tobytes() for r in ev.ev.feeds["x"]}
    assert not seen & held and seen | held == rows  # the criterion never sees a held-out sample
    again = fidelity.prepare(g, spec, digits["calib"])[2]
    assert np.array_equal(again.ev.feeds["x"], ev.ev.feeds["x"])


def test_held_out_fidelity_in_report(digits: dict[str, Path], tmp_path: Path) -> None:
    r = api.prune(digits["model"], SPEC, tmp_path / "o", data=digits["calib"])
    f = r.report["fidelity"]
    assert f["inputs"] == "held-out data (60 samples)" and f["samples"] == 60
    assert 0.9 < f["cosine"] <= 1.0 + 1e-9 and f["max_rel_error"] >= 0.0
    assert f["top1_output"] == "logits" and 0.0 <= f["top1_agreement"] <= 1.0
    assert f["accuracy"]["before"] > 0.8 and 0.0 <= f["accuracy"]["after"] <= 1.0
    assert r.report["fidelity_before_recovery"] is None


def test_eval_data_accuracy_matches_direct_evaluation(digits: dict[str, Path], tmp_path: Path) -> None:
    """Accuracy before / after on a separate eval set equals onnxruntime run by hand; the
    un-recovered model is measured on the same samples when recovery runs."""
    spec = {**SPEC, "recover": {"steps": 5, "batch_size": 16}}
    r = api.prune(digits["model"], spec, tmp_path / "o", data=digits["calib"], eval_data=digits["test"])
    f, pre = r.report["fidelity"], r.report["fidelity_before_recovery"]
    z = np.load(digits["test"])
    n = len(z["labels"])
    assert f["inputs"] == f"eval data ({n} samples)" and pre["inputs"] == f["inputs"] and pre["samples"] == n
    assert f["accuracy"]["before"] == pytest.approx(accuracy(digits["model"], z["x"], z["labels"], 1))
    assert f["accuracy"]["after"] == pytest.approx(accuracy(r.artifacts["pruned.onnx"], z["x"], z["labels"], 1))
    assert pre["accuracy"]["before"] == f["accuracy"]["before"]


def test_eval_set_is_capped_and_says_so(digits: dict[str, Path], tmp_path: Path) -> None:
    r = api.prune(digits["model"], SPEC, tmp_path / "o", eval_data=digits["big"])
    f = r.report["fidelity"]
    assert f["samples"] == holdout.MAX_EVAL_SAMPLES == 1024
    assert f["inputs"] == "eval data (1024 of 1100 samples)" and f["accuracy"] is None


def test_without_data_fidelity_is_labelled_synthetic(digits: dict[str, Path], tmp_path: Path) -> None:
    r = api.prune(digits["model"], SPEC, tmp_path / "o")
    f = r.report["fidelity"]
    assert f["inputs"] == "synthetic" and f["samples"] == 1 and f["accuracy"] is None
    assert {"cosine", "max_rel_error", "top1_agreement"} <= f.keys()
    off = api.prune(digits["model"], {**SPEC, "measure": False}, tmp_path / "off").report["fidelity"]
    assert off["cosine"] is None and off["inputs"] is None and off["samples"] == 0


def _token_model(path: Path, w: np.ndarray) -> Path:
    """y[N, T, C] = x[N, T, D] @ w: per-token class scores."""
    t, d = 4, w.shape[0]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, t, d])
    y = helper.make_tensor_value_info("token_logits", TensorProto.FLOAT, [2, t, w.shape[1]])
    node = helper.make_node("MatMul", ["x", "w"], ["token_logits"])
    g = helper.make_graph([node], "tok", [x], [y], [numpy_helper.from_array(w.astype(np.float32), "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_per_token_agreement_and_accuracy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5))
    w2 = w + 0.5 * rng.standard_normal(w.shape)
    ref, other = _token_model(tmp_path / "a.onnx", w), _token_model(tmp_path / "b.onnx", w2)
    x = rng.standard_normal((7, 4, 8)).astype(np.float32)  # 7 samples at batch 2: the last batch wraps
    labels = rng.integers(0, 5, (7, 4))
    labels[0, :2] = -100  # ignored positions
    g = graph.load(ref)
    spec = PruneSpec.model_validate({"calibration": {"eval_fraction": 0.0}})
    _, _, ev = fidelity.prepare(g, spec, None, _npz(tmp_path / "e.npz", x=x, labels=labels))
    same = ev.measure(ref)
    assert same["top1_agreement"] == 1.0 and same["cosine"] == pytest.approx(1.0)
    assert same["accuracy"]["before"] == same["accuracy"]["after"]
    got = ev.measure(other)
    a, b = (x.astype(np.float64) @ w).argmax(-1), (x.astype(np.float64) @ w2).argmax(-1)
    keep = labels != -100
    assert got["samples"] == 7 and got["top1_output"] == "token_logits"
    assert got["top1_agreement"] == pytest.approx((a == b).mean())
    assert got["accuracy"]["before"] == pytest.approx((a == labels)[keep].mean())
    assert got["accuracy"]["after"] == pytest.approx((b == labels)[keep].mean())
    ya, yb = x.astype(np.float64) @ w, x.astype(np.float64) @ w2
    cos = float((ya * yb).sum() / np.linalg.norm(ya) / np.linalg.norm(yb))
    assert got["cosine"] == pytest.approx(cos, rel=1e-5)


@pytest.mark.parametrize("case,match", [
    ("eval_names", "eval data e.npz"),
    ("eval_shape", "of the eval data e.npz has shape"),
    ("labels_range", "has 10 classes"),
    ("labels_shape", "needs labels of shape"),
    ("split_too_big", "leaves no sample for calibration"),
    ("fraction_no_data", "no calibration data was given"),
    ("fraction_and_eval", "not both"),
])
def test_bad_data_one_sentence_nothing_written(case: str, match: str, digits: dict[str, Path],
                                               tmp_path: Path) -> None:
    x = np.load(digits["test"])["x"][:20]
    data, eval_data, spec = None, None, dict(SPEC)
    if case == "eval_names":
        eval_data = _npz(tmp_path / "e.npz", pixels=x)
    elif case == "eval_shape":
        eval_data = _npz(tmp_path / "e.npz", x=x[:, :, :4])
    elif case == "labels_range":
        eval_data = _npz(tmp_path / "e.npz", x=x, labels=np.full(20, 12))
    elif case == "labels_shape":
        eval_data = _npz(tmp_path / "e.npz", x=x, labels=np.zeros((20, 3), np.int64))
    elif case == "split_too_big":
        data, spec = _npz(tmp_path / "d.npz", x=x[:3]), {**SPEC, "calibration": {"eval_fraction": 0.9}}
    elif case == "fraction_no_data":
        spec = {**SPEC, "calibration": {"eval_fraction": 0.3}}
    else:
        data, eval_data = _npz(tmp_path / "d.npz", x=x), _npz(tmp_path / "e.npz", x=x)
        spec = {**SPEC, "calibration": {"eval_fraction": 0.3}}
    with pytest.raises(DataError, match=match) as e:
        api.prune(digits["model"], spec, tmp_path / "out", data=data, eval_data=eval_data)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_eval_data_table_and_bad_split(digits: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main(["prune", str(digits["model"]), "-o", str(out), "--params", "0.3", "--data", str(digits["calib"]),
                 "--eval-data", str(digits["test"]), "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    n = len(np.load(digits["test"])["labels"])
    assert f"fidelity on eval data ({n} samples): output cosine" in text and "top-1 agreement" in text
    assert "accuracy" in text
    assert json.loads(rep.read_text())["fidelity"]["samples"] == n

    bad = tmp_path / "bad.onnx"
    code = main(["prune", str(digits["model"]), "-o", str(bad), "--params", "0.3",
                 "--data", str(_npz(tmp_path / "small.npz", x=np.load(digits["test"])["x"][:2])),
                 "--eval-fraction", "0.9"])
    err = capsys.readouterr().err
    assert code == 2 and "leaves no sample for calibration" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()
