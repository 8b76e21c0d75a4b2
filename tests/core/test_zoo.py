"""The zoo: every architecture x both torch exporters, pruned at 30 % channels (l1, global).

`test_export_valid` checks the exports themselves and needs nothing from pruning_core;
`test_prune` is the acceptance test of issue 3 for each (entry, exporter), see tests/zoo/acceptance.py;
`test_prune_local_half` runs the same checks at 50 % local, which reaches attention-head surgery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.zoo import ZOO
from tests.zoo.acceptance import LOCAL_SPEC, prune_and_check
from tests.zoo.check import check_model
from tests.zoo.export import ExportError

pytestmark = pytest.mark.timeout(300)  # per test: a hung export or prune fails instead of stalling CI

MAX_EXCUSED = 2
REQUIRED = (
    "resnet convnext convnextv2 mobilenet_v1 mobilenet_v2 efficientnet regnet vit deit swin beit dinov2 levit "
    "mobilevit poolformer segformer pvt bert distilbert roberta albert gpt2 opt llama wav2vec2 concat_split "
    "grouped_conv depthwise_separable channel_shuffle pixel_shuffle se_blocks multi_io unet plain_cnn "
    # issue 13: recurrent, data-dependent output length, If, QDQ (a CNN and a transformer), YOLOv8
    "lstm_seq gru_seq crnn if_branch resnet_qdq se_blocks_qdq bert_qdq yolov8"
).split()


def _cases(*, excusable: bool) -> list[Any]:
    """Every (entry, exporter); with `excusable`, excused pairs are expected to fail (xfail, not strict)."""
    cases = []
    for name, entry in ZOO.items():
        for exporter in entry.exporters:
            marks = []
            if excusable and exporter in entry.excused:
                marks.append(pytest.mark.xfail(reason=f"excused: {entry.excused[exporter]}", strict=False))
            cases.append(pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks))
    return cases


EXPORT_CASES = _cases(excusable=False)
PRUNE_CASES = _cases(excusable=True)


def _export(zoo_onnx: Callable[[str, str], Path], name: str, exporter: str) -> Path:
    try:
        return zoo_onnx(name, exporter)
    except ExportError as exc:
        pytest.fail(f"{name} does not export with {exporter}: {exc}", pytrace=False)


def test_zoo_covers_issue() -> None:
    assert len(ZOO) >= 30
    assert not [n for n in REQUIRED if n not in ZOO]
    excused = {n for n, e in ZOO.items() if e.excused}
    assert len(excused) <= MAX_EXCUSED, f"too many excused entries: {sorted(excused)}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), EXPORT_CASES)
def test_export_valid(zoo_onnx: Callable[[str, str], Path], name: str, exporter: str) -> None:
    check_model(_export(zoo_onnx, name, exporter))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PRUNE_CASES)
def test_prune(zoo_onnx: Callable[[str, str], Path], name: str, exporter: str, tmp_path: Path) -> None:
    outcome = prune_and_check(_export(zoo_onnx, name, exporter), tmp_path)
    assert outcome.macs_after < outcome.macs_before


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PRUNE_CASES)
def test_prune_local_half(
    zoo_onnx: Callable[[str, str], Path], name: str, exporter: str, tmp_path: Path
) -> None:
    """50 % of every group (local scope): every prunable group, attention heads included, loses channels."""
    outcome = prune_and_check(_export(zoo_onnx, name, exporter), tmp_path, LOCAL_SPEC)
    assert outcome.groups_pruned >= outcome.groups_prunable, (
        f"only {outcome.groups_pruned} of {outcome.groups_prunable} prunable groups were pruned"
    )


# Small hand-written nets have coarse steps (a channel of a 16-wide layer is several % of the
# MACs): where the bisection lands off the target, selection's local search must bring it within
# 2 %. These were off by up to 12 % (relative) before that search.
COARSE = ["channel_shuffle", "grouped_conv", "mobilenet_v1", "norms_acts", "pixel_shuffle", "preact_bn",
          "resnet", "unet"]


@pytest.mark.parametrize("name", COARSE)
def test_flops_and_params_targets_within_two_percent(zoo_onnx: Callable[[str, str], Path], name: str) -> None:
    from pruning_core.analysis.groups import analyze
    from pruning_core.importance import ScoreContext, score
    from pruning_core.ir import graph
    from pruning_core.selection import SelectOptions, _measure, candidates, select
    from pruning_core.spec import PruneSpec

    an = analyze(graph.load(_export(zoo_onnx, name, "dynamo")))
    scores = score(ScoreContext(an, PruneSpec.model_validate({})))
    missed = []
    for kind in ("flops", "params"):
        measure = _measure(an, kind, [g for g in candidates(an, []) if g.id in scores])
        for scope in ("global", "local"):
            for value in (0.2, 0.5):
                got = measure(select(an, scores, SelectOptions(kind, value, scope)))
                if abs(got - value) > 0.02 * value:
                    missed.append((kind, scope, value, round(got, 4)))
    assert not missed
