"""Errors the library raises for bad input; callers turn them into HTTP 4xx / CLI exit 2."""

from __future__ import annotations

import re


class PruneError(Exception):
    """Base class: a user-facing problem with the model, the data or the spec."""

    code = "prune_error"


class ModelLoadError(PruneError):
    """The file is not a loadable ONNX / PyTorch model (missing, truncated, unsafe paths...)."""

    code = "invalid_model"


class SpecError(PruneError):
    """The spec does not fit the model (unknown input name, unreachable target...)."""

    code = "invalid_spec"


class UnreachableTargetError(SpecError):
    """The requested reduction cannot be reached; ``best`` is the largest reachable fraction."""

    code = "unreachable_target"

    def __init__(self, message: str, best: float) -> None:
        super().__init__(message)
        self.best = best


class DataError(PruneError):
    """Calibration / evaluation data does not match the model."""

    code = "invalid_data"


class UnsupportedOpError(PruneError):
    """An op the executor (torch twin) cannot run."""

    code = "unsupported_op"


class InternalError(PruneError):
    """Something failed inside the library (a bug, or a runtime refusing a graph we built): still
    one sentence, naming the stage, never a bare exception."""

    code = "internal"


def describe(e: BaseException) -> str:
    """An exception's message as words: onnxruntime's status prefix dropped, a KeyError's quotes
    explained, never the exception's class name."""
    msg = " ".join(str(e).split())
    msg = re.sub(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", msg).replace("Fatal error: ", "")
    msg = re.sub(r"\[[A-Za-z]*(Error|Exception)\] ?", "", msg)  # onnx's "[ShapeInferenceError] " tags
    if isinstance(e, KeyError) and msg.startswith("'") and msg.endswith("'"):
        msg = f"nothing is known about {msg}"
    return msg[:400] or "no details were given"


class Cancelled(Exception):
    """Raised from a progress callback to stop a running prune (job cancelled)."""
