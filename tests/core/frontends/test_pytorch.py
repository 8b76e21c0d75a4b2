"""PyTorch in and out (issue 7): .pt2 -> prune -> pruned.pt2 + plan.json -> apply_plan on the user's module.

Each architecture is exported with ``torch.export``, saved, pruned through ``api.prune`` once per
session (cached by the ``pruned`` fixture) and then checked three ways: pruned.pt2 loads and matches
pruned.onnx under onnxruntime; its state dict keeps the original names with the plan's shapes; and a
fresh instance of the same class, cut by ``apply_plan`` and loaded with the pruned state dict, gives
pruned.pt2's outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from client.apply_plan import PlanMismatchError, apply_plan
from pruning_core.errors import ModelLoadError
from pruning_core.plan import PLAN_VERSION, Plan, PlanError

# no timing: these tests are about programs in and out; their nets run in 0.05 ms, where a cut at
# the fine widths a small net needs can measure slower and be refused (tests/core/runtime/test_latency.py)
SPEC: dict[str, Any] = {"target": {"flops": 0.3}, "measure": False}
TOL = 1e-4


# ------------------------------------------------------------------------ hand-written nets


class TinyCNN(nn.Module):
    """Conv+BN (no bias), depthwise, grouped conv, strided conv, ConvTranspose, Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.gconv = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.down = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(48, 24, 2, stride=2)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.pw(F.relu(self.dw(x))))
        x = F.relu(self.gconv(x))
        x = F.relu(self.up(F.relu(self.down(x))))
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head attention that keeps its head count and size in attributes, like HF modules."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.scaling = self.head_dim**-0.5
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, -1, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling, dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class TinyTransformer(nn.Module):
    """Embeddings (token + position), pre-LN blocks, GELU MLP, an output head tied to the embedding."""

    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, layers: int = 2, seq: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(d),
                    "attn": Attention(d, heads),
                    "ln2": nn.LayerNorm(d),
                    "fc1": nn.Linear(d, 4 * d),
                    "fc2": nn.Linear(4 * d, d),
                }
            )
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            h = h + blk["attn"](blk["ln1"](h))
            h = h + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](h))))
        return self.lm_head(self.ln(h))


# ------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    make: Callable[[], nn.Module]  # a fresh instance (same class, any weights)
    inputs: tuple[torch.Tensor, ...]
    spec: dict[str, Any] | None = None


def _zoo(name: str) -> Case:
    from tests.zoo import ZOO

    def make() -> nn.Module:
        return ZOO[name].build().model

    built = ZOO[name].build()
    return Case(make, tuple(built.inputs[n] for n in built.input_names))


def _hand(cls: type[nn.Module], inputs: tuple[torch.Tensor, ...], spec: dict[str, Any] | None = None) -> Case:
    def make() -> nn.Module:
        torch.manual_seed(0)
        m = cls().eval()
        with torch.no_grad():  # non-trivial norm statistics and affine params, so nothing prunes "for free"
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.weight.uniform_(0.5, 1.5)
        return m

    return Case(make, inputs, spec)


def _cases() -> dict[str, Callable[[], Case]]:
    g = torch.Generator().manual_seed(3)
    return {
        "resnet": lambda: _zoo("resnet"),
        "mobilenet_v2": lambda: _zoo("mobilenet_v2"),
        "convnext": lambda: _zoo("convnext"),
        "vit": lambda: _zoo("vit"),
        "bert": lambda: _zoo("bert"),
        "gpt2": lambda: _zoo("gpt2"),
        # single-channel steps: the plan tests read which channels of the 16-wide stem went
        "tiny_cnn": lambda: _hand(TinyCNN, (torch.randn(1, 3, 16, 16, generator=g),), {**SPEC, "round_to": 1}),
        "tiny_transformer": lambda: _hand(TinyTransformer, (torch.randint(0, 50, (1, 16), generator=g),)),
        # approximate: the residual width goes too (embeddings, LayerNorms, the tied head's columns,
        # the position table whose lookup the core folds into a constant)
        "tiny_transformer_approx": lambda: _hand(
            TinyTransformer, (torch.randint(0, 50, (1, 16), generator=g),), {**SPEC, "approximate": True}
        ),
    }


CASES = _cases()
NAMES = list(CASES)


@dataclass
class Pruned:
    case: Case
    original: torch.export.ExportedProgram
    out: Path
    artifacts: dict[str, Path]
    plan: Plan
    program: torch.export.ExportedProgram  # pruned.pt2, loaded with torch.export.load


@pytest.fixture(scope="session")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Pruned]:
    """``pruned(name)``: export, save, prune once per session."""
    from pruning_core.api import prune

    cache: dict[str, Pruned] = {}

    def get(name: str) -> Pruned:
        if name not in cache:
            case = CASES[name]()
            d = tmp_path_factory.mktemp(name)
            with torch.no_grad():
                ep = torch.export.export(case.make().eval(), case.inputs)
            torch.export.save(ep, str(d / "model.pt2"))
            result = prune(d / "model.pt2", case.spec or SPEC, d / "out")
            art = result.artifacts
            loaded = torch.export.load(str(art["pruned.pt2"]))
            cache[name] = Pruned(case, ep, d / "out", art, Plan.load(art["plan.json"]), loaded)
        return cache[name]

    return get


def _flat(out: Any) -> list[np.ndarray]:
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.detach().numpy() for o in outs]


def _close(got: list[np.ndarray], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs != {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"{what}: output {i} shape {g.shape} != {w.shape}"
        err = float(np.abs(g - w).max())
        scale = max(1.0, float(np.abs(w).max()))
        assert err <= TOL * scale, f"{what}: output {i} differs by {err:.3g} (scale {scale:.3g})"


def _ort(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
    return [np.asarray(o) for o in sess.run(None, feeds)]


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", NAMES)
def test_pruned_pt2_matches_onnx(pruned: Callable[[str], Pruned], name: str) -> None:
    p = pruned(name)
    assert {"pruned.onnx", "pruned.pt2", "plan.json", "report.json"} <= set(p.artifacts)
    ep = p.program
    with torch.no_grad():
        got = _flat(ep.module()(*p.case.inputs))
    _close(got, _ort(p.artifacts["pruned.onnx"], p.case.inputs), f"{name}: pruned.pt2 vs pruned.onnx")

    # the state dict keeps the original names, with the plan's shapes, and something was pruned
    assert set(ep.state_dict) == set(p.original.state_dict)
    for key, t in ep.state_dict.items():
        assert tuple(t.shape) == p.plan.tensors[key].pruned_shape, key
    assert p.plan.pruned(), "nothing was pruned"
    assert sum(t.numel() for t in ep.state_dict.values()) < sum(
        t.numel() for t in p.original.state_dict.values()
    )
    # every tensor of the program was found in the graph, every pruned initializer traced to one
    assert not p.plan.unmapped, p.plan.unmapped


@pytest.mark.parametrize("name", NAMES)
def test_apply_plan_reproduces_pruned_pt2(pruned: Callable[[str], Pruned], name: str) -> None:
    p = pruned(name)
    ep = p.program
    module = p.case.make().eval()
    assert apply_plan(module, p.artifacts["plan.json"]) is module
    module.load_state_dict(ep.state_dict, strict=True)
    with torch.no_grad():
        _close(
            _flat(module(*p.case.inputs)), _flat(ep.module()(*p.case.inputs)), f"{name}: apply_plan module"
        )


def test_plan_file(pruned: Callable[[str], Pruned]) -> None:
    p = pruned("tiny_cnn")
    raw = json.loads(p.artifacts["plan.json"].read_text())
    assert raw["version"] == PLAN_VERSION and raw["format"] == "spa.pruning-plan"
    stem = raw["tensors"]["stem.weight"]
    assert stem["shape"] == [16, 3, 3, 3] and stem["kind"] == "parameter"
    # the stem's output channels: kept indices + the group they came from, also on BN and the next conv
    kept = stem["dims"]["0"]["kept"]
    assert stem["pruned_shape"][0] == len(kept) < 16
    assert raw["tensors"]["bn.running_var"]["dims"]["0"]["kept"] == kept
    assert raw["tensors"]["bn.num_batches_tracked"] == {"kind": "buffer", "shape": [], "pruned_shape": []}
    gid = stem["dims"]["0"]["groups"][0]
    assert raw["groups"][str(gid)]["kept"] == len(kept)
    # a transposed consumer: the head's input columns (dim 1 of the torch weight)
    head = raw["tensors"]["head.weight"]
    assert set(head.get("dims", {})) <= {"1"}
    assert len(p.artifacts["plan.json"].read_text()) < 20_000  # small and readable

    assert Plan.from_dict(raw).tensors["stem.weight"].dims[0].kept == kept
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({**raw, "version": 99})
    bad = json.loads(json.dumps(raw))
    bad["tensors"]["stem.weight"]["pruned_shape"][0] = 16
    with pytest.raises(PlanError, match="stem.weight"):
        Plan.from_dict(bad)


def test_tied_weights_stay_tied(pruned: Callable[[str], Pruned]) -> None:
    p = pruned("tiny_transformer")
    assert p.plan.tensors["lm_head.weight"].alias_of == "embed.weight"
    module = p.case.make().eval()
    apply_plan(module, p.plan)
    assert module.lm_head.weight is module.embed.weight
    # whole heads go: the module's head count follows the plan, its head size stays
    q = p.plan.tensors["blocks.0.attn.q.weight"]
    if 0 in q.dims:
        assert module.blocks[0]["attn"].num_heads * module.blocks[0]["attn"].head_dim == len(q.dims[0].kept)


def test_wrong_module_is_refused(pruned: Callable[[str], Pruned]) -> None:
    p = pruned("tiny_cnn")
    other = TinyTransformer()
    before = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    with pytest.raises(PlanMismatchError, match=r"stem\.weight|has no"):
        apply_plan(other, p.plan)
    assert {k: tuple(v.shape) for k, v in other.state_dict().items()} == before, (
        "a refused module was modified"
    )

    # same class, different widths: the first parameter whose original shape differs is named
    wide = TinyCNN()
    wide.stem = nn.Conv2d(3, 24, 3, padding=1, bias=False)
    with pytest.raises(PlanMismatchError, match=r"'stem\.weight' has shape \[24, 3, 3, 3\]"):
        apply_plan(wide, p.plan)

    # a module with a parameter the plan does not know
    extra = TinyCNN()
    extra.register_parameter("scale", nn.Parameter(torch.ones(3)))
    with pytest.raises(PlanMismatchError, match="scale"):
        apply_plan(extra, p.plan)


def test_approximate_prunes_the_residual_width(pruned: Callable[[str], Pruned]) -> None:
    p = pruned("tiny_transformer_approx")
    emb, pos = p.plan.tensors["embed.weight"], p.plan.tensors["pos.weight"]
    assert 1 in emb.dims and pos.dims.get(1) is not None and emb.dims[1].kept == pos.dims[1].kept
    module = p.case.make().eval()
    apply_plan(module, p.plan)
    d = len(emb.dims[1].kept)
    assert module.ln.normalized_shape == (d,) and module.embed.embedding_dim == d
    assert module.blocks[0]["fc1"].in_features == d


def test_map_initializers_traces_folded_lookups() -> None:
    """The core folds small constant sub-graphs: a transposed weight, a position-table lookup, a
    relative-position-bias lookup that is permuted afterwards (Swin), also of an all-zero table."""
    from pruning_core.frontends.pytorch import Originals, map_initializers
    from pruning_core.plan import OriginalTensor

    g = torch.Generator().manual_seed(0)
    w, pos = torch.randn(8, 6, generator=g), torch.randn(20, 6, generator=g)
    values = {"fc.weight": w, "pos.weight": pos, "table": torch.zeros(49, 2), "bias": torch.zeros(6)}
    originals = Originals(
        {k: OriginalTensor("parameter", tuple(v.shape)) for k, v in values.items()}, values, True, "m.pt2"
    )
    idx = torch.randint(0, 49, (16 * 16,), generator=g)
    inits = {
        "fc.weight": w.numpy(),
        "t_1": w.T.contiguous().numpy(),  # folded Transpose(W)
        "slice_3": pos[:16][None].numpy(),  # folded lookup, [1, 16, 6]
        "unsqueeze": values["table"][idx].view(16, 16, 2).permute(2, 0, 1)[None].contiguous().numpy(),
        "val_5": np.zeros(6, np.float32),  # a zero bias: no owner
    }
    mapping, notes = map_initializers(inits, originals)
    assert mapping["fc.weight"].key == "fc.weight" and mapping["fc.weight"].axes is None
    assert (mapping["t_1"].key, mapping["t_1"].axes) == ("fc.weight", (1, 0))
    assert (mapping["slice_3"].key, mapping["slice_3"].axes, mapping["slice_3"].whole) == (
        "pos.weight",
        (None, 0, 1),
        False,
    )
    assert mapping["unsqueeze"].key == "table" and mapping["unsqueeze"].axis(1) == 1
    assert "val_5" not in mapping and not notes


def test_prefix_is_found(pruned: Callable[[str], Pruned]) -> None:
    """A plan made from a wrapper (``OutputSelect(model)``) applies to the bare inner model."""
    p = pruned("resnet")
    inner = p.case.make().model  # type: ignore[attr-defined]
    apply_plan(inner, p.plan)
    inner.load_state_dict({k.removeprefix("model."): v for k, v in p.program.state_dict.items()})


@pytest.mark.parametrize("kind", ["garbage", "truncated", "pickle"])
def test_corrupt_pt2_is_a_model_load_error(
    pruned: Callable[[str], Pruned], tmp_path: Path, kind: str
) -> None:
    from pruning_core.api import analyze, prune

    bad = tmp_path / "model.pt2"
    if kind == "garbage":
        bad.write_bytes(b"\x00not a zip archive" * 100)
    elif kind == "truncated":
        good = pruned("tiny_cnn").out.parent / "model.pt2"
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        torch.save(TinyCNN().state_dict(), bad)
        assert zipfile.is_zipfile(bad)
    with pytest.raises(ModelLoadError) as info:
        prune(bad, SPEC, tmp_path / "out")
    assert "model.pt2" in str(info.value)
    if kind == "pickle":
        assert "torch.export.save" in str(info.value)
    assert not (tmp_path / "out" / "pruned.onnx").exists()
    # the worker validates uploads with analyze(): the same error, which marks the model invalid
    with pytest.raises(ModelLoadError, match="model.pt2"):
        analyze(bad)


def test_client_import_stays_light() -> None:
    code = (
        "import sys, client; assert 'torch' not in sys.modules; print(client.apply_plan.__name__); "
        "import client.apply_plan; print(callable(client.apply_plan))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["apply_plan", "True"]


def test_failure_reasons_are_the_message_not_the_exception_class() -> None:
    # a user reads these in a job's error: the first line of what went wrong, no Python class names
    from pruning_core.frontends.pytorch.load import first_line

    assert first_line(RuntimeError("  shape mismatch in aten::view\n  at frame 3\n")) == "shape mismatch in aten::view"
    assert first_line(ValueError("")) == "no reason given"
    assert len(first_line(RuntimeError("x" * 1000))) == 300
