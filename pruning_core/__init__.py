"""pruning_core: structured pruning of ONNX graphs (SPA + AutoBot).

Importing the package is cheap (no torch, no onnxruntime): the API process imports
``pruning_core.spec`` for validation. Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PruneSpec", "prune", "analyze", "PruneError"]

if TYPE_CHECKING:  # pragma: no cover
    from pruning_core.api import analyze, prune
    from pruning_core.errors import PruneError
    from pruning_core.spec import PruneSpec


def __getattr__(name: str) -> Any:
    if name in ("prune", "analyze"):
        from pruning_core import api

        return getattr(api, name)
    if name == "PruneSpec":
        from pruning_core.spec import PruneSpec

        return PruneSpec
    if name == "PruneError":
        from pruning_core.errors import PruneError

        return PruneError
    raise AttributeError(name)
