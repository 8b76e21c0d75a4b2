"""Recovery by distillation (pruning_core/training/recovery.py) on a tiny CNN trained on scikit-learn digits."""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError

from pruning_core import api
from pruning_core.spec import PruneSpec


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@functools.cache
def digits_model() -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(onnx path, x_train, y_train, x_test, y_test): a TinyCNN trained for a few seconds, exported
    with a dynamic batch axis. Cached for the session (test_autobot uses it too)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    x = (x - x.mean()) / x.std()
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and fair to a shared machine
    try:
        for _ in range(4):  # ~1 s on one idle core
            order = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                idx = order[i:i + 64]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = Path(tempfile.mkdtemp(prefix="digits-")) / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.from_numpy(x[:1]), str(path), input_names=["x"], output_names=["logits"],
                          dynamo=False, opset_version=17, dynamic_axes={"x": {0: "batch"}})
    return path, x[tr], y[tr], x[te], y[te]


def accuracy(model: Path | onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 32) -> float:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pad = (-len(x)) % batch
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    preds = np.concatenate([sess.run(None, {name: xp[i:i + batch]})[0].argmax(1)
                            for i in range(0, len(xp), batch)])[: len(x)]
    return float((preds == y).mean())


def test_recovery_raises_heldout_accuracy_of_l1_pruned_model(tmp_path: Path) -> None:
    path, xtr, ytr, xte, yte = digits_model()
    np.savez(tmp_path / "train.npz", x=xtr, labels=ytr)
    base = accuracy(path, xte, yte)
    assert base > 0.9
    spec = {"measure": False, "target": {"flops": 0.6}, "criterion": "l1", "input_shapes": {"x": [32, 1, 8, 8]}}
    plain = api.prune(path, spec, tmp_path / "plain")
    before = accuracy(plain.artifacts["pruned.onnx"], xte, yte)

    events: list[tuple[float, str | None]] = []

    def progress(stage: str, frac: float, msg: str | None) -> None:
        if stage == "recover":
            events.append((frac, msg))

    spec_r = {**spec, "recover": {"steps": 20, "lr": 3e-3, "batch_size": 32}}
    rec = api.prune(path, spec_r, tmp_path / "rec", data=tmp_path / "train.npz", progress=progress)
    after = accuracy(rec.artifacts["pruned.onnx"], xte, yte)
    assert rec.report["macs"]["after"] == plain.report["macs"]["after"]  # same channels removed
    assert after > before + 0.02, (before, after, base)
    # one progress event per step (plus the stage start), ending at 1.0
    steps = [f for f, m in events if m and m.startswith("step ")]
    assert len(steps) == 20 and steps[-1] == pytest.approx(1.0)
    onnx.checker.check_model(str(rec.artifacts["pruned.onnx"]), full_check=True)


def test_recovery_data_free_keeps_graph_and_finite_weights(tmp_path: Path) -> None:
    from pruning_core.analysis.groups import analyze
    from pruning_core.importance import ScoreContext, score
    from pruning_core.ir import graph as graph_mod
    from pruning_core.selection import SelectOptions, select
    from pruning_core.surgery import apply
    from pruning_core.training.recovery import recover

    path, *_ = digits_model()
    spec = PruneSpec.model_validate({"target": {"flops": 0.5}, "input_shapes": {"x": [4, 1, 8, 8]},
                                     "recover": {"steps": 5, "lr": 1e-3, "batch_size": 8}})
    g = graph_mod.load(path, spec.input_shapes)
    an = analyze(g)
    removed = select(an, score(ScoreContext(an, spec)), SelectOptions("flops", 0.5))
    pruned = apply(an, removed)
    out = recover(g.full_model(), pruned, spec, None, None)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in pruned.graph.node]
    onnx.checker.check_model(out, full_check=True)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)})[0]
    assert np.isfinite(y).all()
    changed = [i.name for i, j in zip(out.graph.initializer, pruned.graph.initializer, strict=True)
               if not np.array_equal(onnx.numpy_helper.to_array(i), onnx.numpy_helper.to_array(j))]
    assert changed  # weights were trained


@pytest.mark.parametrize("bad, field", [
    ({"lr": -1e-3}, "recover.lr"), ({"lr": 0.0}, "recover.lr"), ({"steps": 0}, "recover.steps"),
    ({"batch_size": 0}, "recover.batch_size"), ({"method": "magic"}, "recover.method"),
])
def test_bad_recover_values_rejected(bad: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        PruneSpec.model_validate({"recover": bad})
    assert field in str(e.value)


def test_fixed_batch_graph_trains_on_stacked_batches(attn_onnx: Path) -> None:
    # exported at batch 1, reshape targets folded to [1, 6, 4, 8]: a bigger batch cannot run in
    # one pass, so batches are cut into model batches and run vectorized (vmap), same outputs
    from pruning_core.ir import graph as graph_mod
    from pruning_core.training import BatchSource, to_torch
    from pruning_core.twin.executor import OnnxTwin

    g = graph_mod.load(attn_onnx)
    twin = OnnxTwin(g.full_model())

    def run(f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return twin(**f)

    cpu = torch.device("cpu")
    src = BatchSource(g, None, None, seed=0)
    assert src.probe([run], cpu) == "vmap"
    chunks = src.draw(6, np.random.default_rng(0))
    assert len(chunks) == 6
    passes = src.passes(chunks, cpu)
    assert len(passes) == 1 and passes[0].stacked
    with torch.no_grad():
        stacked = src.call(run, passes[0])[0]
        one_by_one = torch.cat([run(to_torch(c.feeds, cpu))[0] for c in chunks])
    torch.testing.assert_close(stacked, one_by_one, rtol=1e-5, atol=1e-5)


def test_recovered_transformer_keeps_its_dynamic_dims(tmp_path: Path) -> None:
    """A BERT exported without token_type_ids and a dynamic batch: normalization folds the
    token-type embedding row expanded to [batch, seq, hidden] into a constant. Recovery must leave such constants alone
    (trained, they differ at every position and batch and sequence length would be pinned in the
    saved model), and train only the model's own weights."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=128)  # a table not folded
    model = transformers.BertModel._from_config(cfg, attn_implementation="eager").eval()

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(5, 300, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    src = tmp_path / "bert.onnx"
    dyn = {"batch": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(), (ids, mask), str(src), input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], dynamo=False, opset_version=17,
                          dynamic_axes={"input_ids": {v: k for k, v in dyn.items()},
                                        "attention_mask": {v: k for k, v in dyn.items()},
                                        "hidden": {0: "batch"}})
    spec = {"target": {"flops": 0.3}, "input_shapes": {"input_ids": [2, 16], "attention_mask": [2, 16]},
            "recover": {"steps": 3, "batch_size": 4}, "measure": False}
    api.prune(src, spec, tmp_path / "out")
    out = onnx.load(tmp_path / "out" / "pruned.onnx")
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in out.graph.input] == \
        [["batch", 16]] * 2
    sess = ort.InferenceSession(str(tmp_path / "out" / "pruned.onnx"))
    rng = np.random.default_rng(1)
    y = sess.run(None, {"input_ids": rng.integers(5, 300, (3, 16)), "attention_mask": np.ones((3, 16), np.int64)})[0]
    assert y.shape == (3, 16, 64) and np.isfinite(y).all()
