"""The one table of op rules: op type -> how channels flow through it, and how surgery fixes
its attributes / shape constants once channels are gone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onnx import NodeProto

from pruning_core.registry import Registry

if TYPE_CHECKING:
    from pruning_core.analysis.labels import LabelCtx
    from pruning_core.surgery import SurgeryCtx

LabelFn = Callable[["LabelCtx", NodeProto], None]
RewriteFn = Callable[["SurgeryCtx", NodeProto], None]


@dataclass(frozen=True)
class OpRule:
    family: str
    labels: LabelFn
    rewrite: RewriteFn | None = None


RULES: Registry[OpRule] = Registry("op rule")


def rule(*op_types: str, rewrite: RewriteFn | None = None) -> Callable[[LabelFn], LabelFn]:
    def deco(fn: LabelFn) -> LabelFn:
        family = fn.__module__.rsplit(".", 1)[-1]
        for op in op_types:
            RULES[op] = OpRule(family, fn, rewrite)
        return fn

    return deco
