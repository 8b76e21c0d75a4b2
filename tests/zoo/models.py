"""The zoo: importing this module registers every architecture in `ZOO`."""

from __future__ import annotations

from tests.zoo import handwritten, text, vision  # noqa: F401  (registration side effects)
from tests.zoo.registry import EXPORTERS, ZOO, Built, ZooEntry

__all__ = ["EXPORTERS", "ZOO", "Built", "ZooEntry"]
