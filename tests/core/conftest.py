from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.core.nets import Attn, MixNet, export


@pytest.fixture(scope="session")
def mixnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(MixNet(), (torch.randn(1, 3, 16, 16),), tmp_path_factory.mktemp("m") / "mix.onnx", ["x"])


@pytest.fixture(scope="session")
def attn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export(Attn(), (torch.randn(1, 6, 32),), tmp_path_factory.mktemp("a") / "attn.onnx", ["x"])
