"""What the API's routers share: ``AllowRoute`` (a 405 names every method of its path, an unknown
query parameter is a 400), ``id_path`` and ``canonical_id`` (an id in either accepted form), and
``find_owned`` (the lookup of an id that came in a body or a form)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Protocol, TypeVar

from fastapi import Path
from fastapi.routing import APIRoute
from pydantic import AfterValidator
from sqlalchemy.orm import Session
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app.api.errors import ProblemError, problems

# Every public id is uuid4 hex, 32 lowercase digits (app.core.db.models.new_id). What clients copy
# from elsewhere is often the canonical UUID form (8-4-4-4-12) or upper case: both are accepted and
# normalized to the stored form before any query, so such an id finds its row instead of a 422.
ID_PATTERN = (
    r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_ID = re.compile(ID_PATTERN)


def canonical_id(value: str | None) -> str | None:
    """The stored (32 lowercase hex) form of an id in either accepted form; None for what cannot be
    an id at all."""
    if not value or not _ID.fullmatch(value):
        return None
    return value.replace("-", "").lower()


def normalize_id(value: str) -> str:
    """``canonical_id``, or the value unchanged when it is not an id (its lookup then finds nothing)."""
    return canonical_id(value) or value


def id_path(what: str) -> Any:
    """A path parameter holding an id: validated against ID_PATTERN, then normalized."""
    return Annotated[
        str,
        Path(pattern=ID_PATTERN, description=f"{what} id (32 hex digits, or the 8-4-4-4-12 UUID form)"),
        AfterValidator(normalize_id),
    ]


class _Owned(Protocol):
    owner_id: Any


R = TypeVar("R", bound=_Owned)


def find_owned(session: Session, cls: type[R], id_: str | None, owner: str) -> R | None:
    """The caller's row with this id; None when there is none, when it is another tenant's (ids
    leak nothing), or when the string cannot be an id at all. That last one never reaches the
    database: PostgreSQL refuses a NUL in a text parameter, which was a 500."""
    id_ = canonical_id(id_)
    if id_ is None:
        return None
    row = session.get(cls, id_)
    return row if row is not None and row.owner_id == owner else None


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _calls(dependant: Any) -> set[Any]:
    return {dependant.call} | {c for sub in dependant.dependencies for c in _calls(sub)}


# Dependencies that authenticate (app.api.deps.get_owner registers itself): on their routes the
# query is checked once the caller is known, so that a request without a key is a 401 first.
AUTHENTICATING: set[Any] = set()


def refuse_unknown_query(scope: Scope) -> None:
    """400 for a query parameter the matched route does not take (called by the authenticating
    dependency; AllowRoute calls it itself on routes without one)."""
    route = scope.get("route")
    if isinstance(route, AllowRoute):
        route.check_query(scope)


class AllowRoute(APIRoute):
    """Starlette answers a method no route takes with the ``Allow`` of the first route whose path
    matched: GET and POST on one path are two routes, so each claimed to be the path's only method.
    RFC 9110 wants every method the resource supports: each route registers its methods under its
    path template (routes are built once, when their module's router is), and a 405 lists them all."""

    methods_by_path: ClassVar[dict[str, set[str]]] = {}

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        kwargs["responses"] = {**problems(400), **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)
        self.methods_by_path.setdefault(self.path_format, set()).update(self.methods or ())
        self.known_query = frozenset(_query_names(self.dependant))
        self.checks_after_auth = bool(_calls(self.dependant) & AUTHENTICATING)

    def check_query(self, scope: Scope) -> None:
        # A misspelt filter (`modelid=`, `page_size=`) silently ignored returns the wrong page as if
        # it were right: refuse it, naming what the route takes.
        unknown = sorted(set(QueryParams(scope.get("query_string", b"")).keys()) - self.known_query)
        if unknown:
            known = ", ".join(sorted(self.known_query)) or "none"
            raise ProblemError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}; this route "
                               f"takes: {known}", title="Unknown query parameter")  # fmt: skip

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allowed = self.methods_by_path.get(self.path_format) or self.methods
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        if not self.checks_after_auth:
            self.check_query(scope)
        await super().handle(scope, receive, send)
