"""The torch twin (pruning_core.twin.executor.OnnxTwin) against onnxruntime.

Models come from three places: small torch nets and tiny transformers configs exported here with
both torch exporters, hand-built single-node ONNX graphs for attribute corners that exporters rarely
produce (asymmetric pads, Resize modes, negative slice steps...), and the tests.zoo export cache.
Agreement criterion everywhere: max|twin - ort| <= 1e-4 * max(1, max|ort|), per output.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pruning_core.errors import DataError, UnsupportedOpError
from pruning_core.twin.executor import OnnxTwin, supported_ops, unsupported_nodes

TOL = 1e-4
EXPORTERS = ("dynamo", "torchscript")

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- helpers


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def twin_run(twin: OnnxTwin, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outs = twin(**{k: torch.from_numpy(np.array(v, copy=True)) for k, v in feeds.items()})  # keeps 0-d
    return [o.detach().cpu().numpy() for o in outs]


def assert_close(got: list[np.ndarray], want: list[np.ndarray], what: str = "") -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs, onnxruntime has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"{what} output {i}: shape {g.shape} != onnxruntime {w.shape}"
        assert g.dtype == w.dtype, f"{what} output {i}: dtype {g.dtype} != onnxruntime {w.dtype}"
        if w.size == 0:
            continue
        if w.dtype == np.bool_ or np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=f"{what} output {i}")
            continue
        scale = max(1.0, float(np.nanmax(np.abs(w[np.isfinite(w)]), initial=0.0)))
        same_nonfinite = np.array_equal(np.isfinite(g), np.isfinite(w))
        assert same_nonfinite, f"{what} output {i}: non-finite values differ"
        fin = np.isfinite(w)
        err = float(np.abs(g[fin].astype(np.float64) - w[fin]).max(initial=0.0))
        assert err <= TOL * scale, f"{what} output {i}: max|diff| {err:.3e} > {TOL:.0e} * {scale:.3g}"


def check_against_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str = "") -> OnnxTwin:
    twin = OnnxTwin(model)
    assert_close(twin_run(twin, feeds), ort_run(model, feeds), what)
    return twin


class KwargsWrapper(nn.Module):
    """Calls a transformers model with keyword inputs and returns plain tensors (exportable)."""

    def __init__(self, model: nn.Module, names: list[str], keys: list[str]) -> None:
        super().__init__()
        self.model, self.names, self.keys = model, names, keys

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, args, strict=True)))
        return tuple(out[k] for k in self.keys)


def export(
    model: nn.Module, inputs: dict[str, torch.Tensor], exporter: str, *, dynamic_batch: bool = False
) -> onnx.ModelProto:
    args = tuple(inputs.values())
    names = list(inputs)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter.startswith("dynamo"):
            dyn = None
            if dynamic_batch:
                batch = torch.export.Dim("batch", min=1, max=64)
                dyn = {n: {0: batch} for n in names}
            prog = torch.onnx.export(
                model,
                args,
                dynamo=True,
                opset_version=18,
                input_names=names,
                dynamic_shapes=dyn,
                optimize=exporter != "dynamo_noopt",
            )
            assert prog is not None
            return prog.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            args,
            buf,
            dynamo=False,
            opset_version=14 if exporter == "torchscript_nofold" else 17,
            do_constant_folding=exporter != "torchscript_nofold",
            input_names=names,
            dynamic_axes={n: {0: "batch"} for n in names} if dynamic_batch else None,
        )
        return onnx.load_from_string(buf.getvalue())


# --------------------------------------------------------------------------- torch-built models


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 2, 1)
        self.fc2 = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class TinyCNN(nn.Module):
    """BN, residual, grouped + dilated conv, SE, ConvTranspose, pixel shuffle, pools, upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.group = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.post_add_bn = nn.BatchNorm2d(16)  # after a residual Add, so no exporter folds it away
        self.se = SE(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.shuffle = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(4 * 8 * 8 + 16, 10)
        with torch.no_grad():
            for bn in (self.stem[1], self.post_add_bn):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.post_add_bn(y + self.group(y))
        y = F.hardswish(self.se(y))
        z = F.relu(self.down(y))
        y = y + self.up(z)
        p = F.pixel_shuffle(self.shuffle(F.max_pool2d(y, 2)), 2)  # 16 ch -> 4 ch, same size as y
        p = F.avg_pool2d(F.interpolate(p, scale_factor=2, mode="nearest"), 4)
        q = F.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False).mean(dim=(2, 3))
        return self.head(torch.cat([p.flatten(1), q[:, :16]], dim=1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 64), nn.Linear(64, 32), nn.Linear(32, 5)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.fc1(x))
        y = self.drop(F.leaky_relu(self.fc2(y), 0.1))
        return F.log_softmax(self.fc3(y), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention block with a padding mask, sqrt scaling and a LayerNorm residual."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
        att = att.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
        y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        y = self.norm(x + self.out(y))
        return y + self.ff(y)


class NormNet(nn.Module):
    """GroupNorm, InstanceNorm, channel LayerNorm and assorted pointwise ops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.gn(self.conv(x)))
        y = F.elu(self.inorm(y)) + torch.tanh(y)
        y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.conv2(F.softplus(y)).clamp(-1.0, 2.0)
        return torch.sqrt(y.pow(2) + 1.0) * torch.exp(-y.abs())


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _local_cnn() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    return TinyCNN(), {"x": _rand(2, 3, 16, 16)}


def _local_mlp() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    return MLP(), {"x": _rand(3, 20)}


def _local_attention() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, -2:] = 0
    return Attention(), {"x": _rand(2, 6, 32), "mask": mask}


def _local_norms() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    return NormNet(), {"x": _rand(2, 3, 8, 8)}


def _ids(vocab: int, batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _hf(
    cls_name: str, config: Any, inputs: dict[str, torch.Tensor], keys: list[str]
) -> tuple[nn.Module, dict]:
    import transformers

    if hasattr(config, "use_cache"):
        config.use_cache = False
    model = getattr(transformers, cls_name)._from_config(config, attn_implementation="eager")
    return KwargsWrapper(model, list(inputs), keys), inputs


def _hf_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100
    )
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[0, -3:] = 0
    return _hf("BertModel", cfg, {"input_ids": _ids(100), "attention_mask": mask}, ["last_hidden_state"])


def _hf_resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    cfg = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"
    )
    return _hf("ResNetModel", cfg, {"pixel_values": _rand(2, 3, 32, 32)}, ["pooler_output"])


def _hf_vit() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    return _hf("ViTModel", cfg, {"pixel_values": _rand(2, 3, 32, 32)}, ["last_hidden_state"])


def _hf_gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=1, eos_token_id=2
    )
    # An explicit mask: without one transformers probes packed sequences with torch.diff, which the
    # TorchScript exporter cannot export.
    mask = torch.ones(2, 8, dtype=torch.int64)
    return _hf("GPT2LMHeadModel", cfg, {"input_ids": _ids(100), "attention_mask": mask}, ["logits"])


def _hf_llama() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=32,
    )
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, -2:] = 0
    return _hf("LlamaForCausalLM", cfg, {"input_ids": _ids(100), "attention_mask": mask}, ["logits"])


MODELS: dict[str, Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]]] = {
    "cnn": _local_cnn,
    "mlp": _local_mlp,
    "attention": _local_attention,
    "norms": _local_norms,
    "hf_bert": _hf_bert,
    "hf_resnet": _hf_resnet,
    "hf_vit": _hf_vit,
    "hf_gpt2": _hf_gpt2,
    "hf_llama": _hf_llama,
}


@functools.cache
def built(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    return model.eval(), inputs


@functools.cache
def exported(name: str, exporter: str) -> onnx.ModelProto:
    model, inputs = built(name)
    return export(model, inputs, exporter)


def feeds_of(name: str) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in built(name)[1].items()}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_twin_matches_onnxruntime(name: str, exporter: str) -> None:
    model = exported(name, exporter)
    feeds = feeds_of(name)
    twin = check_against_ort(model, feeds, f"{name}/{exporter}")
    # and the torch model itself (the export is faithful, so this checks the twin end to end)
    with torch.no_grad():
        want = built(name)[0](*built(name)[1].values())
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert_close(twin_run(twin, feeds), [w.numpy() for w in want], f"{name}/{exporter} vs torch")


@pytest.mark.parametrize(
    ("name", "exporter"),
    [("hf_gpt2", "dynamo_noopt"), ("cnn", "dynamo_noopt"), ("hf_llama", "torchscript_nofold")],
)
def test_twin_matches_unoptimized_exports(name: str, exporter: str) -> None:
    # Without the exporters' graph optimizations the graphs keep shape arithmetic, sequence ops
    # (SplitToSequence/SequenceAt), unfolded BatchNormalization and older opsets.
    check_against_ort(exported(name, exporter), feeds_of(name), f"{name}/{exporter}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_dynamic_batch_is_not_hard_coded(exporter: str) -> None:
    model, inputs = built("cnn")
    proto = export(model, inputs, exporter, dynamic_batch=True)
    twin = OnnxTwin(proto)
    for batch in (1, 3):
        feeds = {"x": _rand(batch, 3, 16, 16, seed=batch).numpy()}
        assert_close(twin_run(twin, feeds), ort_run(proto, feeds), f"batch {batch}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_twin_runs_on_cuda() -> None:
    # Shape values stay on the host while data lives on the GPU; the twin must mix them correctly.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full fp32
    try:
        for name in ("cnn", "hf_llama"):
            proto, feeds = exported(name, "dynamo"), feeds_of(name)
            twin = OnnxTwin(proto).cuda()
            with torch.no_grad():
                outs = twin(**{k: torch.from_numpy(v).cuda() for k, v in feeds.items()})
            assert_close([o.cpu().numpy() for o in outs], ort_run(proto, feeds), f"{name} on cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --------------------------------------------------------------------------- gradients


def test_gradients_reach_conv_weights() -> None:
    twin = OnnxTwin(exported("cnn", "torchscript"))
    x = torch.from_numpy(feeds_of("cnn")["x"]).requires_grad_(True)
    (out,) = twin(x)
    out.square().mean().backward()
    conv_weights = [
        init.input[1]
        for init in exported("cnn", "torchscript").graph.node
        if init.op_type in ("Conv", "ConvTranspose")
    ]
    assert len(conv_weights) >= 6
    for name in conv_weights:
        grad = twin.tensor(name).grad
        assert grad is not None, name
        assert float(grad.abs().sum()) > 0, name
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_gradients_equal_torch_autograd(exporter: str) -> None:
    # MLP initializers keep the torch parameter names and layout under both exporters, so the
    # twin's gradients can be compared with the source model's one for one.
    model, inputs = built("mlp")
    twin = OnnxTwin(exported("mlp", exporter))
    model.zero_grad()
    model(inputs["x"]).sum().backward()
    twin(inputs["x"])[0].sum().backward()
    compared = 0
    for name, p in model.named_parameters():
        if name in twin.param_names:
            got = twin.tensor(name).grad
            assert got is not None and p.grad is not None
            torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared == 6


def test_parameters_and_buffers_are_split_sensibly() -> None:
    twin = OnnxTwin(exported("cnn", "torchscript"))
    params = dict(twin.named_onnx_parameters())
    assert params and all(p.requires_grad and p.is_floating_point() for p in params.values())
    assert {n for n, _ in twin.named_parameters()} == set(twin.param_names.values())
    # BatchNormalization running statistics are buffers: constants, not weights.
    bn = next(n for n in exported("cnn", "torchscript").graph.node if n.op_type == "BatchNormalization")
    assert (
        bn.input[1] in twin.param_names
        and bn.input[3] in twin.buffer_names
        and bn.input[4] in twin.buffer_names
    )
    # attribute names are valid identifiers mapped back to the ONNX names
    assert all(a.isidentifier() for a in twin.param_names.values())


def test_trainable_override_and_torch_tooling() -> None:
    model = exported("cnn", "torchscript")
    x = torch.from_numpy(feeds_of("cnn")["x"])
    frozen = OnnxTwin(model, trainable=lambda name, arr: arr.ndim == 4)  # conv kernels only
    assert frozen.param_names and all(frozen.tensor(n).dim() == 4 for n in frozen.param_names)
    twin = OnnxTwin(model)
    # copies and pickles (op functions include lambdas, re-resolved on load)
    for clone in (copy.deepcopy(twin), pickle.loads(pickle.dumps(twin))):
        torch.testing.assert_close(clone(x)[0], twin(x)[0])
    # torch.func.functional_call swaps in other weights without touching the module
    params = {n: p.detach() * 0.5 for n, p in twin.named_parameters()}
    assert not torch.allclose(torch.func.functional_call(twin, params, (x,))[0], twin(x)[0])
    # second-order gradients (GraSP-style Hessian-gradient products) flow through every op here
    weights = list(twin.parameters())
    grads = torch.autograd.grad(twin(x)[0].square().mean(), weights, create_graph=True)
    hg = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), weights, allow_unused=True)
    assert all(h is not None for h in hg)


# --------------------------------------------------------------------------- gates and capture


def _insert_mul(model: onnx.ModelProto, tensor: str, factor: np.ndarray) -> onnx.ModelProto:
    """A copy of the model in which every consumer of ``tensor`` reads ``tensor * factor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    gated, fac = f"{tensor}__gated", f"{tensor}__factor"
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = gated
    for o in g.output:
        if o.name == tensor:
            o.name = gated
    g.initializer.append(numpy_helper.from_array(factor.astype(np.float32), fac))
    producer = next(i for i, n in enumerate(g.node) if tensor in n.output)
    g.node.insert(producer + 1, helper.make_node("Mul", [tensor, fac], [gated]))
    return out


def _relu_outputs(model: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in model.graph.node if n.op_type == "Relu"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_zero_gate_equals_zeroed_tensor_in_onnxruntime(exporter: str) -> None:
    model = exported("cnn", exporter)
    feeds = feeds_of("cnn")
    twin = OnnxTwin(model)
    target = _relu_outputs(model)[0]
    twin.set_gates({target: torch.zeros(())})
    zeroed = _insert_mul(model, target, np.zeros((), np.float32))
    assert_close(twin_run(twin, feeds), ort_run(zeroed, feeds), "zero gate")
    assert not np.allclose(twin_run(twin, feeds)[0], ort_run(model, feeds)[0])
    twin.clear_gates()
    assert_close(twin_run(twin, feeds), ort_run(model, feeds), "gates cleared")


def test_channel_gate_is_a_mask_and_trainable() -> None:
    model = exported("cnn", "torchscript")
    feeds = feeds_of("cnn")
    twin = OnnxTwin(model)
    target = _relu_outputs(model)[0]  # stem activation, 16 channels
    mask = np.ones((1, 16, 1, 1), np.float32)
    mask[0, ::3] = 0.0
    gate = nn.Parameter(torch.from_numpy(mask.copy()))
    twin.set_gates({target: gate})
    assert_close(twin_run(twin, feeds), ort_run(_insert_mul(model, target, mask), feeds), "channel mask")
    twin(torch.from_numpy(feeds["x"]))[0].sum().backward()
    assert gate.grad is not None and gate.grad.shape == gate.shape and float(gate.grad.abs().sum()) > 0
    # a callable gate sees the tensor and may transform it
    seen: list[tuple[int, ...]] = []
    twin.set_gates({target: lambda t: seen.append(tuple(t.shape)) or t})
    assert_close(twin_run(twin, feeds), ort_run(model, feeds), "identity callable gate")
    assert seen == [(2, 16, 16, 16)]
    with pytest.raises(KeyError):
        twin.set_gates({"no such tensor": torch.zeros(())})


def test_run_captures_intermediates() -> None:
    model = exported("attention", "dynamo")
    feeds = feeds_of("attention")
    twin = OnnxTwin(model)
    wanted = [n.output[0] for n in model.graph.node if n.op_type in ("Softmax", "MatMul")][:3]
    outs, captured = twin.run({k: torch.from_numpy(v) for k, v in feeds.items()}, capture=wanted)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    ref = ort_run(probe, feeds)
    assert_close([o.detach().numpy() for o in outs], ref[: len(outs)], "outputs")
    assert_close([captured[n].detach().numpy() for n in wanted], ref[len(outs) :], "captured")
    with pytest.raises(KeyError):
        twin.run(feeds, capture=["nope"])


# --------------------------------------------------------------------------- weights by ONNX name


def test_state_dict_onnx_round_trips() -> None:
    model = exported("cnn", "dynamo")
    feeds = feeds_of("cnn")
    twin = OnnxTwin(model)
    original = {k: v.clone() for k, v in twin.state_dict_onnx().items()}
    assert set(original) == {t.name for t in model.graph.initializer}
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # "training": perturb every trainable weight
        for _, p in twin.named_onnx_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    trained = twin.export_initializers(model)
    onnx.checker.check_model(trained)
    assert_close(twin_run(twin, feeds), ort_run(trained, feeds), "written-back weights")
    assert not np.allclose(ort_run(trained, feeds)[0], ort_run(model, feeds)[0])
    # a fresh twin of the written-back model holds exactly the trained values
    again = OnnxTwin(trained).state_dict_onnx()
    for k, v in twin.state_dict_onnx().items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=0)
    twin.load_state_dict_onnx(original)
    assert_close(twin_run(twin, feeds), ort_run(model, feeds), "restored weights")
    with pytest.raises(KeyError):
        twin.load_state_dict_onnx({"nope": torch.zeros(1)})


def test_bad_inputs_give_clear_errors() -> None:
    twin = OnnxTwin(exported("attention", "torchscript"))
    x = torch.from_numpy(feeds_of("attention")["x"])
    with pytest.raises(DataError, match="missing input"):
        twin(x)
    with pytest.raises(DataError, match="unknown input"):
        twin(x=x, mask=torch.ones(2, 6, dtype=torch.int64), extra=x)


# --------------------------------------------------------------------------- unsupported ops


def test_unsupported_op_raises_at_construction_naming_it() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Det", ["a"], ["b"], name="my_det"),
        helper.make_node("FancyOp", ["b"], ["y"], name="custom_node", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(UnsupportedOpError) as info:
        OnnxTwin(model)
    msg = str(info.value)
    assert "Det" in msg and "my_det" in msg
    assert "FancyOp" in msg and "custom_node" in msg
    assert "Relu" not in msg
    assert set(unsupported_nodes(model)) == {"Det", "com.example::FancyOp"}


REQUIRED_OPS = """
Conv ConvTranspose BatchNormalization Relu Clip Sigmoid HardSigmoid HardSwish Gelu Erf Tanh Softplus
LeakyRelu Mul Add Sub Div Pow Sqrt Reciprocal Exp Log Neg Abs Where Equal Less Greater Not And Or
MaxPool AveragePool GlobalAveragePool ReduceMean ReduceSum ReduceMax ReduceL2 Resize Pad Concat Split
Slice Gather GatherElements Reshape Flatten Transpose Squeeze Unsqueeze Expand Tile Shape Size
ConstantOfShape Range Cast CastLike Identity Dropout Constant Trilu CumSum ScatterND Einsum DepthToSpace
SpaceToDepth TopK ArgMax Max Min Mod IsNaN IsInf LayerNormalization GroupNormalization
InstanceNormalization MatMul Gemm Softmax LogSoftmax If
""".split()


def test_required_ops_are_supported() -> None:
    assert not set(REQUIRED_OPS) - supported_ops()


def test_op_table_refuses_a_second_entry() -> None:
    # one table filled by the family modules of twin/ops: a name registered twice is an import error
    from pruning_core.twin.ops import CHECKS, OPS

    with pytest.raises(ValueError, match="twin op 'Relu' is registered twice"):
        OPS["Relu"] = OPS["Relu"]
    with pytest.raises(ValueError, match="twin op 'Conv' is registered twice"):
        OPS.register("Conv")(OPS["Conv"])
    with pytest.raises(ValueError, match="twin op check 'MaxPool' is registered twice"):
        CHECKS.update({"MaxPool": CHECKS["MaxPool"]})


def test_unsupported_attribute_combination_is_reported() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], name="dil_pool", kernel_shape=[2, 2], dilations=[2, 2]
    )
    graph = helper.make_graph([node], "g", [x], [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    with pytest.raises(UnsupportedOpError, match="AveragePool.*dil_pool"):
        OnnxTwin(model)


# --------------------------------------------------------------------------- single-op battery

RNG = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


EMPTY = np.zeros((0,), np.float32)


class Case:
    def __init__(
        self,
        op: str,
        inputs: list[np.ndarray | None],
        opset: int = 18,
        outputs: int = 1,
        **attrs: Any,
    ) -> None:
        self.op, self.inputs, self.opset, self.outputs, self.attrs = op, inputs, opset, outputs, attrs

    def model(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        names, vis, feeds = [], [], {}
        for i, arr in enumerate(self.inputs):
            if arr is None:
                names.append("")
                continue
            name = f"in{i}"
            names.append(name)
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            vis.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
            feeds[name] = arr
        outs = [f"out{i}" for i in range(self.outputs)]
        node = helper.make_node(self.op, names, outs, name=f"the_{self.op}", **self.attrs)
        graph = helper.make_graph([node], "g", vis, [helper.make_empty_tensor_value_info(o) for o in outs])
        return helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=10
        ), feeds


X4 = f32(2, 4, 7, 9)
POS = np.abs(f32(2, 3, 5)) + 0.1
CASES: dict[str, Case] = {
    # convolution
    "conv_same_upper_s2": Case("Conv", [X4, f32(6, 4, 4, 3)], auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": Case("Conv", [X4, f32(6, 4, 4, 4), f32(6)], auto_pad="SAME_LOWER"),
    "conv_asym_pads_groups_dil": Case(
        "Conv", [X4, f32(6, 2, 3, 3)], pads=[0, 1, 2, 1], group=2, dilations=[2, 1]
    ),
    "conv_valid_1d": Case("Conv", [f32(2, 3, 11), f32(5, 3, 3)], auto_pad="VALID", strides=[2]),
    "conv_3d": Case("Conv", [f32(1, 2, 5, 6, 4), f32(3, 2, 3, 3, 3)], pads=[1, 1, 1, 1, 1, 1]),
    "convT_asym_outpad": Case(
        "ConvTranspose",
        [X4, f32(4, 3, 3, 3), f32(3)],
        strides=[2, 2],
        pads=[1, 0, 0, 1],
        output_padding=[1, 1],
    ),
    "convT_groups_dil": Case(
        "ConvTranspose", [X4, f32(4, 2, 3, 3)], group=2, dilations=[2, 2], strides=[1, 2]
    ),
    "convT_output_shape": Case("ConvTranspose", [X4, f32(4, 3, 3, 3)], strides=[2, 2], output_shape=[15, 18]),
    "convT_same_upper": Case("ConvTranspose", [X4, f32(4, 3, 4, 4)], strides=[2, 2], auto_pad="SAME_UPPER"),
    # pooling
    "maxpool_ceil": Case("MaxPool", [X4], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "maxpool_asym_pads": Case("MaxPool", [X4], kernel_shape=[3, 2], pads=[1, 0, 0, 1]),
    "maxpool_dil_same": Case("MaxPool", [X4], kernel_shape=[2, 2], dilations=[2, 2], auto_pad="SAME_UPPER"),
    "maxpool_indices": Case("MaxPool", [X4], outputs=2, kernel_shape=[2, 2], strides=[2, 2]),
    "avgpool_exclude_pad": Case("AveragePool", [X4], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_include_pad": Case(
        "AveragePool", [X4], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_asym": Case("AveragePool", [X4], kernel_shape=[2, 3], pads=[0, 2, 1, 0], strides=[2, 1]),
    "avgpool_same": Case("AveragePool", [X4], kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 2]),
    "global_max": Case("GlobalMaxPool", [X4]),
    "lrn_odd": Case("LRN", [X4], size=3, alpha=0.01, beta=0.6, bias=1.5),
    # norms
    "batchnorm": Case("BatchNormalization", [X4, f32(4), f32(4), f32(4), np.abs(f32(4)) + 0.5], epsilon=1e-3),
    "instancenorm": Case("InstanceNormalization", [X4, f32(4), f32(4)]),
    "layernorm_axis1": Case("LayerNormalization", [X4, f32(4, 7, 9), f32(4, 7, 9)], axis=1),
    "layernorm_stats": Case("LayerNormalization", [X4, f32(9)], outputs=3, epsilon=1e-3),
    "groupnorm_opset18": Case("GroupNormalization", [X4, f32(2), f32(2)], num_groups=2),
    "lpnorm": Case("LpNormalization", [X4], axis=1, p=1),
    # resize
    "resize_nearest_asym_floor": Case(
        "Resize",
        [X4, None, f32v(1, 1, 2, 1.5)],
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    ),
    "resize_nearest_half_pixel_sizes": Case("Resize", [X4, None, None, i64(2, 4, 12, 5)]),
    "resize_nearest_align_ceil": Case(
        "Resize",
        [X4, None, None, i64(2, 4, 13, 17)],
        coordinate_transformation_mode="align_corners",
        nearest_mode="round_prefer_ceil",
    ),
    "resize_linear_half_pixel": Case("Resize", [X4, None, f32v(1, 1, 2, 2)], mode="linear"),
    "resize_linear_down": Case("Resize", [X4, None, None, i64(2, 4, 4, 5)], mode="linear"),
    "resize_linear_align": Case(
        "Resize",
        [X4, None, None, i64(2, 4, 10, 20)],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    ),
    "resize_linear_pytorch": Case(
        "Resize",
        [X4, None, f32v(1, 1, 3, 0.5)],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    ),
    "resize_linear_axes": Case("Resize", [X4, None, None, i64(14, 5)], mode="linear", axes=[2, 3]),
    "resize_linear_symmetric": Case(
        "Resize",
        [X4, None, f32v(1, 1, 1.7, 0.6)],
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    ),
    "resize_nearest_down_ceil": Case(
        "Resize",
        [X4, None, f32v(1, 1, 0.6, 0.45)],
        nearest_mode="ceil",
        coordinate_transformation_mode="asymmetric",
    ),
    "resize_not_larger": Case(
        "Resize",
        [X4, None, None, i64(10, 30)],
        mode="linear",
        axes=[2, 3],
        keep_aspect_ratio_policy="not_larger",
    ),
    "resize_cubic": Case("Resize", [X4, None, f32v(1, 1, 2, 2)], mode="cubic"),
    "resize_cubic_exclude": Case(
        "Resize", [X4, None, None, i64(2, 4, 5, 13)], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5
    ),
    "resize_crop": Case(
        "Resize",
        [X4, f32v(0, 0, 0.1, -0.2, 1, 1, 0.8, 1.1), None, i64(2, 4, 6, 6)],
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
        extrapolation_value=-3.0,
    ),
    "resize_opset10": Case("Resize", [X4, f32v(1, 1, 2, 0.5)], opset=10),
    "resize_opset10_linear": Case("Resize", [X4, f32v(1, 1, 2.5, 1.5)], opset=10, mode="linear"),
    "upsample_linear_opset9": Case("Upsample", [X4, f32v(1, 1, 2, 1.5)], opset=9, mode="linear"),
    "upsample_opset9": Case("Upsample", [X4, f32v(1, 1, 2, 3)], opset=9),
    # pad / slice / gather / scatter
    "pad_constant_value": Case("Pad", [X4, i64(0, 1, 2, 0, 0, 0, 1, 3), f32v(1.5)]),
    "pad_negative": Case("Pad", [X4, i64(0, 0, -2, 1, 0, 0, 1, -3)]),
    "pad_reflect": Case("Pad", [X4, i64(0, 0, 3, 2, 0, 0, 1, 4)], mode="reflect"),
    "pad_edge_axes": Case("Pad", [X4, i64(2, 3, 1, 0), None, i64(-1, 1)], mode="edge"),
    "pad_wrap": Case("Pad", [X4, i64(0, 0, 2, 3, 0, 0, 4, 1)], mode="wrap"),
    "pad_opset2_attr": Case("Pad", [X4], opset=2, pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5),
    "slice_negative_steps": Case(
        "Slice", [X4, i64(-1, 100, 6), i64(-100, 0, -100), i64(3, 1, 2), i64(-2, -1, -3)]
    ),
    "slice_clamped": Case("Slice", [X4, i64(-20, 2), i64(2**62, -1), i64(2, 3)]),
    "slice_opset9_attrs": Case("Slice", [X4], opset=9, starts=[1, 0], ends=[3, -1], axes=[1, 3]),
    "gather_neg_scalar": Case("Gather", [X4, np.array(-1, np.int64)], axis=1),
    "gather_matrix": Case("Gather", [f32(10, 3), np.array([[1, -2], [0, 9]], np.int64)]),
    "gather_elements": Case(
        "GatherElements", [f32(3, 4), np.array([[0, -1], [2, 1], [3, 3]], np.int64)], axis=1
    ),
    "gather_nd_batch": Case(
        "GatherND", [f32(2, 3, 4), np.array([[[1], [2]], [[0], [-1]]], np.int64)], batch_dims=1
    ),
    "scatter_nd_add": Case(
        "ScatterND", [f32(4, 3), np.array([[1], [3], [1]], np.int64), f32(3, 3)], reduction="add"
    ),
    "scatter_elements": Case(
        "ScatterElements", [f32(3, 4), np.array([[1, 0], [3, 2], [0, 0]], np.int64), f32(3, 2)], axis=1
    ),
    # reductions
    "reduce_mean_axes_input": Case("ReduceMean", [X4, i64(1, -1)]),
    "reduce_sum_nokeep": Case("ReduceSum", [X4, i64(0, 2)], keepdims=0),
    "reduce_sum_empty_noop": Case("ReduceSum", [X4, np.zeros((0,), np.int64)], noop_with_empty_axes=1),
    "reduce_sum_all": Case("ReduceSum", [X4]),
    "reduce_max_attr_opset13": Case("ReduceMax", [X4], opset=13, axes=[1], keepdims=0),
    "reduce_min_int": Case("ReduceMin", [np.arange(24, dtype=np.int32).reshape(2, 3, 4), i64(1)]),
    "reduce_l2": Case("ReduceL2", [X4, i64(2, 3)]),
    "reduce_l1": Case("ReduceL1", [X4, i64(1)]),
    "reduce_prod": Case("ReduceProd", [POS, i64(0, 2)]),
    "reduce_logsumexp": Case("ReduceLogSumExp", [X4, i64(1)]),
    "reduce_sumsquare": Case("ReduceSumSquare", [X4, i64(3)], keepdims=0),
    "reduce_logsum": Case("ReduceLogSum", [POS, i64(1)]),
    "argmax_last": Case(
        "ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], axis=1, select_last_index=1
    ),
    "argmin_nokeep": Case("ArgMin", [X4], axis=2, keepdims=0),
    "topk": Case("TopK", [f32(3, 7), i64(3)], outputs=2, axis=1),
    "topk_smallest": Case("TopK", [f32(5, 4), i64(2)], outputs=2, axis=0, largest=0),
    "cumsum_excl_rev": Case("CumSum", [f32(3, 5), np.array(1, np.int64)], exclusive=1, reverse=1),
    "cumsum_int": Case("CumSum", [np.arange(10, dtype=np.int32).reshape(2, 5), np.array(-1, np.int32)]),
    # softmax family
    "softmax_opset11_coerced": Case("Softmax", [X4], opset=11, axis=1),
    "logsoftmax": Case("LogSoftmax", [X4], axis=2),
    "hardmax": Case("Hardmax", [X4], axis=-1),
    # linear algebra
    "gemm_trans_alpha_beta": Case(
        "Gemm", [f32(5, 3), f32(4, 5), f32(1, 4)], transA=1, transB=1, alpha=0.5, beta=2.0
    ),
    "gemm_no_c": Case("Gemm", [f32(3, 5), f32(5, 4)]),
    "matmul_batched_1d": Case("MatMul", [f32(2, 3, 4), f32(4)]),
    "einsum_bmm": Case("Einsum", [f32(2, 3, 4), f32(2, 4, 5)], equation="bij,bjk->bik"),
    "einsum_ellipsis": Case("Einsum", [f32(2, 3, 4, 5), f32(5)], equation="...j,j->..."),
    # shape ops
    "split_num_outputs_uneven": Case("Split", [f32(2, 7)], outputs=3, axis=1, num_outputs=3),
    "split_sizes_input": Case("Split", [f32(6, 2), i64(1, 2, 3)], outputs=3),
    "split_opset11_attr": Case("Split", [f32(6, 2)], opset=11, outputs=2, split=[4, 2]),
    "split_equal_opset13": Case("Split", [f32(6, 2)], opset=13, outputs=3),
    "squeeze_all": Case("Squeeze", [f32(1, 3, 1, 2)]),
    "squeeze_axes": Case("Squeeze", [f32(1, 3, 1, 2), i64(-2)]),
    "unsqueeze_neg": Case("Unsqueeze", [f32(3, 2), i64(-1, 0)]),
    "unsqueeze_opset11": Case("Unsqueeze", [f32(3, 2)], opset=11, axes=[1]),
    "expand_bidirectional": Case("Expand", [f32(3, 1), i64(2, 1, 4)]),
    "tile": Case("Tile", [f32(2, 3), i64(2, 3)]),
    "flatten_0": Case("Flatten", [X4], axis=0),
    "flatten_neg": Case("Flatten", [X4], axis=-2),
    "transpose_default": Case("Transpose", [X4]),
    "concat_neg": Case("Concat", [f32(2, 3), f32(2, 5)], axis=-1),
    "reshape_zero_minus1": Case("Reshape", [X4, i64(0, -1, 9)]),
    "reshape_allowzero": Case("Reshape", [np.zeros((0, 3), np.float32), i64(3, 0)], allowzero=1),
    "shape_start_end": Case("Shape", [X4], start=1, end=-1),
    "size": Case("Size", [X4]),
    "constant_of_shape": Case(
        "ConstantOfShape", [i64(2, 3)], value=helper.make_tensor("v", TensorProto.INT32, [1], [7])
    ),
    "constant_of_shape_default": Case("ConstantOfShape", [i64(3)]),
    "range_float": Case(
        "Range", [np.array(0.5, np.float32), np.array(3.2, np.float32), np.array(0.7, np.float32)]
    ),
    "range_int_neg": Case("Range", [np.array(10, np.int64), np.array(1, np.int64), np.array(-3, np.int64)]),
    "cast_to_int": Case("Cast", [f32(3, 4) * 5], to=TensorProto.INT32),
    "cast_to_bool": Case("Cast", [np.array([0.0, 0.5, -1.0], np.float32)], to=TensorProto.BOOL),
    "castlike": Case("CastLike", [np.array([1, 2], np.int64), f32(1)]),
    "trilu_upper_k": Case("Trilu", [f32(2, 4, 5), np.array(1, np.int64)]),
    "trilu_lower": Case("Trilu", [f32(4, 5), np.array(-1, np.int64)], upper=0),
    "depth_to_space_dcr": Case("DepthToSpace", [f32(2, 8, 3, 4)], blocksize=2),
    "depth_to_space_crd": Case("DepthToSpace", [f32(2, 8, 3, 4)], blocksize=2, mode="CRD"),
    "space_to_depth": Case("SpaceToDepth", [f32(2, 3, 4, 6)], blocksize=2),
    "onehot": Case("OneHot", [np.array([[1, -1], [5, 0]], np.int64), i64(4), f32v(-1, 2)], axis=1),
    "nonzero": Case("NonZero", [np.array([[0, 1, 0], [2, 0, 3]], np.float32)]),
    "eyelike": Case("EyeLike", [f32(3, 5)], k=1),
    "dropout_mask": Case("Dropout", [f32(3, 4)], outputs=2),
    "identity": Case("Identity", [np.arange(5, dtype=np.int64)]),
    # elementwise
    "div_int_trunc": Case("Div", [np.array([7, -7, 7, -7], np.int64), np.array([2, 2, -2, -2], np.int64)]),
    "mod_int": Case("Mod", [np.array([7, -7, 7, -7], np.int32), np.array([3, 3, -3, -3], np.int32)]),
    "mod_fmod": Case("Mod", [f32(3, 4) * 5, f32v(1.5, -2.0, 2.5, 3.0)], fmod=1),
    "pow_float": Case("Pow", [POS, f32v(2.5)]),
    "pow_int_exp": Case("Pow", [X4, np.array(3, np.int64)]),
    "isinf_pos": Case("IsInf", [f32v(1, np.inf, -np.inf, np.nan)], detect_negative=0),
    "isnan": Case("IsNaN", [f32v(1, np.inf, np.nan)]),
    "where": Case("Where", [f32(3, 4) > 0, f32(3, 4), f32(1, 4)]),
    "equal_int": Case("Equal", [np.array([1, 2, 3], np.int64), np.array([1, 0, 3], np.int64)]),
    "less": Case("Less", [f32(3, 4), f32(4)]),
    "greater_or_equal": Case("GreaterOrEqual", [f32(3, 4), f32(4)]),
    "not_and_or": Case("And", [np.array([True, False, True]), np.array([True, True, False])]),
    "or": Case("Or", [np.array([True, False, False]), np.array([False, False, True])]),
    "not": Case("Not", [np.array([True, False])]),
    "max_variadic": Case("Max", [f32(3, 1), f32(1, 4), f32(3, 4)]),
    "min_variadic": Case("Min", [f32(3, 4), f32(4)]),
    "sum_variadic": Case("Sum", [f32(3, 4), f32(4), f32(3, 1)]),
    "mean_variadic": Case("Mean", [f32(3, 4), f32(4)]),
    "clip_min_only": Case("Clip", [f32(3, 4), np.array(-0.2, np.float32)]),
    "clip_both": Case("Clip", [f32(3, 4), np.array(-0.2, np.float32), np.array(0.3, np.float32)]),
    "clip_opset6": Case("Clip", [f32(3, 4)], opset=6, min=-0.5, max=0.1),
    "clip_int": Case("Clip", [np.arange(-5, 5, dtype=np.int64), None, np.array(2, np.int64)]),
    "hardsigmoid": Case("HardSigmoid", [f32(3, 4) * 4], alpha=0.3, beta=0.4),
    "hardswish": Case("HardSwish", [f32(3, 4) * 4]),
    "gelu_opset20": Case("Gelu", [f32(3, 4) * 3], opset=20),
    "gelu_tanh_opset20": Case("Gelu", [f32(3, 4) * 3], opset=20, approximate="tanh"),
    "erf": Case("Erf", [f32(3, 4)]),
    "softplus": Case("Softplus", [f32(3, 4) * 10]),
    "softsign": Case("Softsign", [f32(3, 4)]),
    "leakyrelu": Case("LeakyRelu", [f32(3, 4)], alpha=0.2),
    "elu": Case("Elu", [f32(3, 4)], alpha=0.7),
    "selu": Case("Selu", [f32(3, 4)]),
    "celu": Case("Celu", [f32(3, 4)], alpha=1.5),
    "prelu": Case("PRelu", [X4, f32(4, 1, 1)]),
    "thresholded_relu": Case("ThresholdedRelu", [f32(3, 4)], alpha=0.3),
    "shrink": Case("Shrink", [f32(3, 4)], lambd=0.4, bias=0.1),
    "mish": Case("Mish", [f32(3, 4)], opset=18),
    "sign_round": Case("Round", [f32v(0.5, 1.5, 2.5, -0.5, -1.7)]),
    "sign": Case("Sign", [f32v(-2, 0, 3)]),
    "reciprocal": Case("Reciprocal", [POS]),
    "sqrt_exp_log": Case("Log", [POS]),
    "sin": Case("Sin", [f32(3, 4)]),
    "cos": Case("Cos", [f32(3, 4)]),
    "rms_norm_opset23": Case("RMSNormalization", [X4, f32(7, 9)], opset=23, axis=2, epsilon=1e-3),
    "grid_sample": Case("GridSample", [X4, np.clip(f32(2, 3, 5, 2), -1.1, 1.1)], opset=16, align_corners=0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_op_matches_onnxruntime(case: str) -> None:
    model, feeds = CASES[case].model()
    check_against_ort(model, feeds, case)


def test_sequence_ops_match_onnxruntime() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0),
        helper.make_node("ConcatFromSequence", ["seq"], ["stacked"], axis=0, new_axis=1),
        helper.make_node("SequenceLength", ["seq"], ["n"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("SequenceAt", ["seq", "two"], ["third"]),
        helper.make_node("SequenceConstruct", ["third", "third"], ["pair"]),
        helper.make_node("SequenceInsert", ["pair", "x"], ["triple"]),
        helper.make_node("SequenceErase", ["triple", "two"], ["pair2"]),
        helper.make_node("ConcatFromSequence", ["pair2"], ["joined"], axis=0),
    ]
    outs = [helper.make_empty_tensor_value_info(n) for n in ("stacked", "n", "joined")]
    graph = helper.make_graph(nodes, "seq", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    check_against_ort(model, {"x": f32(4, 6)}, "sequences")


def _if_model() -> onnx.ModelProto:
    """relu(x) -> If(sum > 0): then (relu + w) * outer scale, with a nested If; else relu * 2."""
    w = numpy_helper.from_array(f32(3, 4), "w_in_branch")
    nested = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["nested_out"])],
        "nested",
        [],
        [helper.make_empty_tensor_value_info("nested_out")],
    )
    then_g = helper.make_graph(
        [
            helper.make_node("Add", ["r", "w_in_branch"], ["t0"]),
            helper.make_node("Mul", ["t0", "scale"], ["t"]),
            helper.make_node("If", ["flag"], ["then_out"], then_branch=nested, else_branch=nested),
        ],
        "then",
        [],
        [helper.make_empty_tensor_value_info("then_out")],
        initializer=[w],
    )
    else_g = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))
            ),
            helper.make_node("Mul", ["r", "two"], ["else_out"]),
        ],
        "else",
        [],
        [helper.make_empty_tensor_value_info("else_out")],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Sigmoid", ["y"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_empty_tensor_value_info("out")],
        initializer=[
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(f32(4), "scale"),
            numpy_helper.from_array(np.array(True), "flag"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_if_runs_the_branch_the_condition_picks() -> None:
    model = _if_model()
    twin = OnnxTwin(model)
    for sign in (1.0, -1.0):  # both branches
        x = np.abs(f32(3, 4)) * sign
        assert_close(twin_run(twin, {"x": x}), ort_run(model, {"x": x}), f"If sign={sign}")
    x = torch.from_numpy(np.abs(f32(3, 4))).requires_grad_(True)
    twin(x)[0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # ops inside branches are checked at construction too
    bad = _if_model()
    bad.graph.node[3].attribute[1].g.node[0].op_type = "Det"
    with pytest.raises(UnsupportedOpError, match="Det"):
        OnnxTwin(bad)
    clone = pickle.loads(pickle.dumps(twin))
    torch.testing.assert_close(clone(x)[0], twin(x)[0])


def test_single_op_battery_gradients_flow() -> None:
    """Spot-check that float data inputs of shape-changing ops stay differentiable."""
    for case in ("resize_linear_half_pixel", "pad_reflect", "slice_negative_steps", "convT_output_shape"):
        model, feeds = CASES[case].model()
        twin = OnnxTwin(model)
        x = torch.from_numpy(feeds["in0"]).requires_grad_(True)
        rest = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "in0"}
        twin(in0=x, **rest)[0].sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0, case


# --------------------------------------------------------------------------- the tests.zoo models


def _zoo_params() -> list[Any]:
    try:
        from tests.zoo import EXPORTERS as ZOO_EXPORTERS
        from tests.zoo import ZOO
    except Exception as exc:  # the zoo is optional for this module
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"tests.zoo unavailable: {exc}"))]
    # the twin runs neither QuantizeLinear / DequantizeLinear nor LSTM / GRU: the criteria that
    # need it refuse those graphs with a sentence (tests/core/test_qdq.py)
    recurrent = {"lstm_seq", "gru_seq", "crnn"}
    return [pytest.param(n, e, id=f"{n}-{e}") for n in ZOO for e in ZOO_EXPORTERS
            if not ZOO[n].quantize and n not in recurrent and e in ZOO[n].exporters]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), _zoo_params())
def test_twin_matches_onnxruntime_on_zoo(
    zoo_onnx: Callable[[str, str], Any], name: str, exporter: str
) -> None:
    """Every zoo export (from the shared export cache; a cold cache exports first, which is slow)."""
    from tests.zoo.export import ExportError, example_data

    try:
        path = zoo_onnx(name, exporter)
    except ExportError as exc:  # reported by tests/core/test_zoo.py; nothing to run the twin on
        pytest.skip(f"{name} does not export with {exporter}: {exc}")
    inputs, _ = example_data(path)
    twin = check_against_ort(onnx.load(str(path)), inputs, f"zoo {name}/{exporter}")
    # and it is differentiable end to end: finite gradients reach the weights
    outs = twin(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    sum(o.square().mean() for o in outs if o.is_floating_point()).backward()
    grads = [p.grad for _, p in twin.named_onnx_parameters()]
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= 0.8 * len(grads)
