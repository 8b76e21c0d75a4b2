"""Shared fixtures. Keep this file small: fixtures used by one module belong in that module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo_onnx() -> Callable[[str, str], Path]:
    """`zoo_onnx(name, exporter)` -> path of the cached ONNX export of a zoo entry (exports on a miss).

    Raises tests.zoo.export.ExportError when the entry does not export.
    """
    from tests.zoo.export import cached_export

    return cached_export
