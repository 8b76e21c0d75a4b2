"""Test zoo: small, seeded architectures exported to ONNX with both torch exporters."""

from __future__ import annotations

from tests.zoo.models import EXPORTERS, ZOO, Built, ZooEntry

__all__ = ["EXPORTERS", "ZOO", "Built", "ZooEntry"]
