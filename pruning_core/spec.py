"""PruneSpec: the pruning request, shared by the CLI, the API and the worker.

Pure pydantic: importable by the API process (no torch, no onnx).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Fraction = float
# Bounds on the spec's lists (SECURITY.md, bounded inputs): a spec is stored with its job and
# returned in every job list, so its size must not be the client's choice.
MAX_IGNORE = 256
MAX_PATTERN = 512
MAX_INPUTS = 64
MAX_DIMS = 8
MAX_DIM = 2**31 - 1
MAX_NAME = 256
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN)]
InputName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Dims = Annotated[list[int], Field(min_length=1, max_length=MAX_DIMS)]


TargetKind = Literal["flops", "params", "channels", "latency"]
TARGET_KINDS: tuple[TargetKind, ...] = ("flops", "params", "channels", "latency")


def _target_json_schema(schema: dict[str, Any]) -> None:
    """Say in the JSON schema (the API's document) what ``Target._exactly_one`` checks: one kind
    given, a fraction strictly between 0 and 1; the others absent or null."""
    for kind in TARGET_KINDS:
        schema["properties"][kind]["anyOf"][0].update(exclusiveMinimum=0, exclusiveMaximum=1)
    schema["oneOf"] = [
        {"required": [k], "properties": {o: {"type": "number" if o == k else "null"} for o in TARGET_KINDS}}
        for k in TARGET_KINDS
    ]


class Target(BaseModel):
    """Exactly one of flops / params / channels / latency: the fraction to REMOVE, in (0, 1).
    ``latency`` is measured on onnxruntime as ``runtime`` says (provider, threads, batch)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_target_json_schema)

    flops: Fraction | None = None
    params: Fraction | None = None
    channels: Fraction | None = None
    latency: Fraction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if len(given) != 1:
            raise ValueError("target needs exactly one of 'flops', 'params', 'channels', 'latency'")
        (kind, value), = given.items()
        if not 0.0 < value < 1.0:
            raise ValueError(f"target {kind}={value} must be a fraction to remove, strictly between 0 and 1")
        return self

    @property
    def kind(self) -> TargetKind:
        for k in TARGET_KINDS:
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated target has no kind")

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


class Runtime(BaseModel):
    """Where the pruned model will run: latency (the target, round_to "auto", the report) is
    measured on onnxruntime with this execution provider, thread count and batch size."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(2, ge=1, le=256)
    # None: the model's own batch (a dynamic batch axis is measured at 1); a number fixes a
    # dynamic batch axis for analysis and measurement (the saved model keeps it dynamic)
    batch: int | None = Field(None, ge=1, le=4096)


def _calibration_json_schema(schema: dict[str, Any]) -> None:
    # what _one_eval_source checks: not a non-zero eval_fraction beside an eval_dataset_id
    schema["not"] = {
        "required": ["eval_dataset_id", "eval_fraction"],
        "properties": {
            "eval_dataset_id": {"type": "string"},
            "eval_fraction": {"type": "number", "exclusiveMinimum": 0},
        },
    }


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_calibration_json_schema)

    dataset_id: str | None = Field(None, min_length=1, max_length=64)
    # Calibration passes run at the graph's own batch size (exports fix it), so there is no
    # batch_size here: a field that changed nothing was removed.
    samples: int = Field(128, ge=1, le=100_000)
    # Fidelity is measured where the user's task lives: on a split of the data that the criterion
    # and recovery never see (None: 0.2 of data with at least 10 samples, none of smaller data;
    # 0: no split, fidelity on the calibration data itself), or on a separate evaluation dataset.
    eval_fraction: float | None = Field(None, ge=0.0, lt=1.0)
    eval_dataset_id: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_eval_source(self) -> Calibration:
        if self.eval_dataset_id and self.eval_fraction:
            raise ValueError("give either calibration.eval_fraction (a split of the calibration data) "
                             "or calibration.eval_dataset_id (a separate evaluation set), not both")
        return self


class Recover(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["distill"] = "distill"
    steps: int = Field(500, ge=1, le=1_000_000)
    lr: float = Field(1e-4, gt=0.0, le=10.0)
    batch_size: int = Field(32, ge=1, le=4096)


class AutoBotOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.5, gt=0.0, le=100.0)
    beta: float = Field(6.0, ge=0.0)
    gamma: float = Field(0.2, ge=0.0)
    steps: int = Field(200, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=1, le=4096)


def _spec_json_schema(schema: dict[str, Any]) -> None:
    """Say in the JSON schema (the API's document) what PruneSpec's validators check."""
    from pruning_core.criteria_names import CRITERION_INFO

    props = schema["properties"]
    props["criterion"]["enum"] = sorted(CRITERION_INFO)
    props["round_to"]["anyOf"][0].update(minimum=1, maximum=4096)
    props["input_shapes"]["additionalProperties"]["items"].update(minimum=1, maximum=MAX_DIM)
    schema["not"] = {  # _cuda_runtime_needs_cuda
        "required": ["runtime", "device"],
        "properties": {
            "runtime": {"required": ["provider"], "properties": {"provider": {"const": "cuda"}}},
            "device": {"const": "cpu"},
        },
    }


class PruneSpec(BaseModel):
    """What to prune and how. See ../shared/ARCHITECTURE.md, section Spec."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_spec_json_schema)

    target: Target = Field(default_factory=lambda: Target(channels=0.3))
    criterion: str = Field("l1", max_length=64)
    scope: Literal["global", "local"] = "global"
    group_reduction: Literal["mean", "sum", "max"] = "mean"
    normalizer: Literal["mean", "max", "sum", "none"] = "mean"
    # "auto": widths the runtime's kernels want (latency table); an int: kept widths a multiple of it
    round_to: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    runtime: Runtime = Field(default_factory=Runtime)
    max_group_ratio: float = Field(0.9, gt=0.0, lt=1.0)
    ignore: list[Pattern] = Field(default_factory=list, max_length=MAX_IGNORE)
    attention_heads: Literal["auto", "heads", "dims"] = "auto"
    approximate: bool = False  # also prune groups whose removal changes normalization statistics
    input_shapes: dict[InputName, Dims] = Field(default_factory=dict, max_length=MAX_INPUTS)
    calibration: Calibration = Field(default_factory=Calibration)
    recover: Recover | None = None
    autobot: AutoBotOptions = Field(default_factory=AutoBotOptions)
    device: Literal["cpu", "cuda"] | None = None
    verify: bool = True     # masked-equivalence check (a failing check fails the job)
    measure: bool = True    # onnxruntime latency and output fidelity (params / MACs always)
    # numpy refuses negative seeds; 2**53 - 1 is the largest integer every JSON reader holds exactly
    # (I-JSON): a bigger bound is one a client or a schema validator may read as a float
    seed: int = Field(0, ge=0, le=2**53 - 1)

    @field_validator("round_to")
    @classmethod
    def _round_to_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError(f"round_to must be 'auto' or an integer from 1 to 4096, got {v}")
        return v

    @model_validator(mode="after")
    def _cuda_runtime_needs_cuda(self) -> PruneSpec:
        if self.runtime.provider == "cuda" and self.device == "cpu":
            raise ValueError("runtime.provider 'cuda' measures on a GPU: it needs device 'cuda' (or no device)")
        return self

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from pruning_core.criteria_names import CRITERION_INFO

        if v not in CRITERION_INFO:
            raise ValueError(f"unknown criterion {v!r}; known: {', '.join(sorted(CRITERION_INFO))}")
        return v

    @field_validator("input_shapes")
    @classmethod
    def _positive_dims(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, dims in v.items():
            if not dims or any(int(d) <= 0 or int(d) > MAX_DIM for d in dims):
                raise ValueError(
                    f"input_shapes[{name!r}] must be a list of positive ints below 2**31, got {dims}")
        return v
