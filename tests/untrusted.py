"""Malicious PyTorch archives for the security tests (core, CLI and service).

Each variant takes a real ``torch.export.save`` archive and replaces one member — every place torch's
own loader unpickles, evaluates or looks up something — by a payload that creates a marker file when
it runs. ``live_under_torch`` lists the variants that torch.export.load itself would run, so a test can
prove the payload is armed before it proves our loader leaves it alone.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def torch_pickle(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


def shell(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


class SmallNet(nn.Module):
    """Conv + BN + a non-persistent buffer (a program constant) + Linear: every payload slot exists."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16), persistent=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))) * self.scale[None, :, None, None]
        return self.head(x.mean((2, 3)))


def save_program(path: Path) -> Path:
    torch.manual_seed(0)
    net = SmallNet().eval()
    batch = torch.export.Dim("batch", min=1, max=64)  # symbolic sizes appear in the program
    ep = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, str(path))
    return path


def _members(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    root = next(n[: -len("archive_format")] for n in members if n.endswith("archive_format"))
    return root, members


def _write(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _pickled_payload(kind: str, file_name: str, data: Callable[[Path], bytes]) -> Callable[..., str]:
    """Point the first entry of a payload config at a pickled member holding the payload."""

    def tamper(root: str, m: dict[str, bytes], marker: Path) -> str:
        config_name = f"{root}data/{kind}/model_{kind}_config.json"
        config = json.loads(m[config_name])
        entry = next(iter(config["config"].values()))
        entry["path_name"] = file_name
        entry["use_pickle"] = True
        m[config_name] = json.dumps(config).encode()
        m[f"{root}data/{kind}/{file_name}"] = data(marker)
        return f"data/{kind}/{file_name}"

    return tamper


def _program(edit: Callable[[dict, Path], None]) -> Callable[..., str]:
    def tamper(root: str, m: dict[str, bytes], marker: Path) -> str:
        name = f"{root}models/model.json"
        doc = json.loads(m[name])
        edit(doc, marker)
        m[name] = json.dumps(doc).encode()
        return "models/model.json"

    return tamper


def _sample_inputs(root: str, m: dict[str, bytes], marker: Path) -> str:
    m[f"{root}data/sample_inputs/model.pt"] = torch_pickle(marker)
    return "data/sample_inputs/model.pt"


def _first_expr(doc: dict, marker: Path) -> None:
    stack: list = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "expr_str" in v:
                v["expr_str"] = shell(marker)
                return
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    raise AssertionError("the program has no symbolic size")


def _guards(doc: dict, marker: Path) -> None:
    doc["guards_code"] = [f"{shell(marker)} == 0"]


def _target(doc: dict, marker: Path) -> None:
    node = doc["graph_module"]["graph"]["nodes"][0]
    node["target"] = "torch.serialization.os.system"
    node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]


def _attribute(doc: dict, marker: Path) -> None:
    spec = doc["graph_module"]["signature"]["input_specs"][0]
    spec["parameter"]["parameter_name"] = "__class__.__init__"  # setattr on the module's class


PT2_VARIANTS: dict[str, Callable[[str, dict[str, bytes], Path], str]] = {
    "sample_inputs": _sample_inputs,
    "pickled_weight": _pickled_payload("weights", "weight_0", torch_pickle),
    "pickled_constant": _pickled_payload("constants", "tensor_0", torch_pickle),
    "opaque_constant": _pickled_payload("constants", "opaque_obj_0", lambda mk: pickle.dumps(Payload(mk))),
    "custom_object": _pickled_payload("constants", "custom_obj_0", lambda mk: pickle.dumps(Payload(mk))),
    "symbolic_size": _program(_first_expr),
    "guards_code": _program(_guards),
    "node_target": _program(_target),
    "attribute_path": _program(_attribute),
}
# torch.export.load (plus .module(), for the guards) runs these: the payloads are armed.
LIVE_UNDER_TORCH = ("sample_inputs", "pickled_weight", "pickled_constant", "opaque_constant",
                    "symbolic_size", "guards_code")


def malicious_pt2(good: Path, variant: str, dest: Path, marker: Path) -> str:
    """Write ``dest``: ``good`` with one member replaced; returns the member's full name."""
    root, members = _members(good)
    rel = PT2_VARIANTS[variant](root, members, marker)
    _write(dest, members)
    return root + rel


def malicious_torchscript(dest: Path, marker: Path) -> str:
    """A traced TorchScript archive whose data.pkl is the payload; returns that member's name."""
    net = SmallNet().eval()
    torch.jit.trace(net, (torch.randn(1, 3, 16, 16),)).save(str(dest))
    with zipfile.ZipFile(dest) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n.endswith("/data.pkl"))
    members[name] = pickle.dumps(Payload(marker))
    _write(dest, members)
    return name
