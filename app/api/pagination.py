"""Keyset pagination, newest first: stable under concurrent inserts (offsets are not)."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Query
from sqlalchemy.orm import Session

from app.api.errors import ProblemError
from app.api.schemas import CURSOR_PATTERN, decode_cursor, encode_cursor

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# The list routes' query parameters, one definition for all of them.
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
CursorQuery = Annotated[
    str | None, Query(pattern=CURSOR_PATTERN, description="the previous page's next_cursor")
]


def paginate(
    session: Session, stmt: sa.Select[Any], cls: Any, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    if cursor:
        try:
            at, id_ = decode_cursor(cursor)
        except ValueError as e:  # the query's pattern refuses it first; direct callers
            raise ProblemError(422, "malformed cursor") from e
        stmt = stmt.where(sa.or_(cls.created_at < at, sa.and_(cls.created_at == at, cls.id < id_)))
    rows = list(
        session.execute(stmt.order_by(cls.created_at.desc(), cls.id.desc()).limit(limit + 1)).scalars()
    )
    next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor
