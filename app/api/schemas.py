"""Response bodies (also the OpenAPI schemas)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.api.routes import normalize_id
from pruning_core.spec import PruneSpec

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    format: str
    size: int
    sha256: str
    state: str = Field(description="validating | ready | invalid")
    reason: str | None = Field(None, description="why the model is invalid")
    summary: dict[str, Any] | None = Field(None, description="params, macs, inputs, outputs, groups_total...")
    created_at: datetime


class GroupsOut(BaseModel):
    model_id: str
    state: str
    groups: list[Any]


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    size: int
    sha256: str
    arrays: dict[str, Any] = Field(description="array name -> {shape, dtype}")
    created_at: datetime


def _utf8(value: str) -> str:
    # JSON's \ud800 escape parses to a lone surrogate, which no answer could serialize (a 500)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return value


# A job's labels. Bounded by the schema itself (so the document says what is refused), small enough
# that they fit the body limit's slack beside the spec (SPEC_SLACK in app/api/bodylimit.py).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters: a NUL is refused by PostgreSQL
TAG_PATTERN = r"^[A-Za-z0-9_.:/=+@-]{1,64}$"
MAX_TAGS = 16
MAX_METADATA_ITEMS = 16
JobName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=NAME_PATTERN), AfterValidator(_utf8)
]
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_utf8)]
# Flat scalars only: labels read by people, not a document store. Floats are finite (NaN is not
# JSON: PostgreSQL would refuse the row).
MetadataValue = (
    Annotated[str, StringConstraints(max_length=256), AfterValidator(_utf8)]
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=64)
    spec: PruneSpec = Field(default_factory=PruneSpec)
    dataset_id: str | None = Field(None, min_length=1, max_length=64)
    name: JobName | None = Field(None, description="a short name of yours; GET /v1/jobs?name= finds it")
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="labels; GET /v1/jobs?tag= finds jobs by one"
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ITEMS,
        description="your own key -> value pairs (string, number, boolean or null), returned as given",
    )  # fmt: skip

    @field_validator("model_id", "dataset_id")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        return None if value is None else normalize_id(value)

    @field_validator("tags")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # a tag is had or not: repeats are dropped, order kept


class ArtifactOut(BaseModel):
    name: str
    size: int
    sha256: str
    url: str


class JobOut(BaseModel):
    id: str
    model_id: str
    dataset_id: str | None
    state: str = Field(description="queued | running | cancelling | succeeded | failed | cancelled")
    stage: str | None
    progress: float
    attempts: int
    queue: str
    spec: dict[str, Any]
    summary: dict[str, Any] | None = Field(
        None,
        description="before/after params, MACs, latency, verify error; fidelity (cosine, top-1 agreement, "
        "accuracy before/after) with what it was measured on: held-out or eval data, or synthetic inputs",
    )
    artifacts: list[ArtifactOut]
    name: str | None
    tags: list[str]
    metadata: dict[str, Any]
    error: str | None
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: datetime
    kind: str = Field(description="state | stage | progress | log")
    stage: str | None
    progress: float | None
    message: str | None


class EventList(BaseModel):
    items: list[EventOut]
    next_after: int = Field(description="pass as ?after= to get only newer events")


class CancelOut(BaseModel):
    id: str
    state: str


# A cursor is the last row's position, "<created_at in µs since the epoch>-<id>": every string that
# matches CURSOR_PATTERN is a position (the document says exactly what is accepted), and nothing
# else is. Ids are uuid4 hex (app.core.db.models.new_id).
CURSOR_PATTERN = r"^[0-9]{1,18}-[0-9a-f]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MAX_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _US


def encode_cursor(created_at: datetime, id_: str) -> str:
    return f"{(created_at - _EPOCH) // _US}-{id_}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``encode_cursor``'s inverse; ValueError for what does not match CURSOR_PATTERN. A time past
    the last one a datetime can hold (year 9999) is that last one: still "before it", every row."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError("not a cursor this API wrote")
    us, _, id_ = cursor.partition("-")
    return _EPOCH + min(int(us), _MAX_US) * _US, id_
