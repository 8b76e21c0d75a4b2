"""What the API's routers share: ``AllowRoute`` (a 405 names every method of its path) and
``find_owned`` (the lookup of an id that came in a body or a form)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Protocol, TypeVar

from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

# Every public id is uuid4 hex (app.core.db.models.new_id); path parameters are held to this pattern.
ID_PATTERN = r"^[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)


class _Owned(Protocol):
    owner_id: Any


R = TypeVar("R", bound=_Owned)


def find_owned(session: Session, cls: type[R], id_: str | None, owner: str) -> R | None:
    """The caller's row with this id; None when there is none, when it is another tenant's (ids
    leak nothing), or when the string cannot be an id at all. That last one never reaches the
    database: PostgreSQL refuses a NUL in a text parameter, which was a 500."""
    if not id_ or not _ID.fullmatch(id_):
        return None
    row = session.get(cls, id_)
    return row if row is not None and row.owner_id == owner else None


class AllowRoute(APIRoute):
    """Starlette answers a method no route takes with the ``Allow`` of the first route whose path
    matched: GET and POST on one path are two routes, so each claimed to be the path's only method.
    RFC 9110 wants every method the resource supports: each route registers its methods under its
    path template (routes are built once, when their module's router is), and a 405 lists them all."""

    methods_by_path: ClassVar[dict[str, set[str]]] = {}

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.methods_by_path.setdefault(self.path_format, set()).update(self.methods or ())

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allowed = self.methods_by_path.get(self.path_format) or self.methods
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        await super().handle(scope, receive, send)
