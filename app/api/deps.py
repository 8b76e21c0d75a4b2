"""FastAPI dependencies: settings, DB session, blob store, task sender, the calling principal."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.api.errors import ProblemError
from app.api.routes import AUTHENTICATING, refuse_unknown_query
from app.core.apikeys import hash_key
from app.core.config import Settings
from app.core.db.models import ApiKey
from app.core.storage import BlobStore

LOCAL_OWNER = "local"  # owner of everything in the no-auth embedded mode


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
# thread pool, a hop (queue, wake-up, GIL hand-over) that costs more than reading app.state.


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


# Methods whose handlers only read: their session runs in autocommit (see get_session).
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


@lru_cache(maxsize=16)
def _autocommit_maker(maker: sessionmaker[Session]) -> sessionmaker[Session] | None:
    """The same sessions on the same pool, their connections in autocommit mode (the pool resets
    the mode when a connection comes back). None for a maker without an engine bound."""
    engine = maker.kw.get("bind")
    if not isinstance(engine, sa.Engine):
        return None
    others = {k: v for k, v in maker.kw.items() if k != "bind"}
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), **others)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session. For GET and HEAD it is in autocommit mode: no BEGIN before the first
    query and no ROLLBACK after the last, two of the five database round trips of a poll. Their
    handlers only read, and each reads what one statement sees (the key, then the row); a GET
    handler must never write.

    ``async def``, not a thread-pool generator: opening a session does no I/O (it connects at its
    first query, in the handler's thread), and neither does closing one in autocommit mode; any
    other session may have to roll back, so it is closed in a thread, shielded from cancellation
    (a client that goes away must not leak the connection)."""
    state = request.app.state
    reader = _autocommit_maker(state.sessionmaker) if request.method in READ_ONLY_METHODS else None
    session: Session = (reader or state.sessionmaker)()
    try:
        yield session
    finally:
        if reader is not None:
            session.close()
        else:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close)


@contextmanager
def reading_connection(request: Request) -> Iterator[sa.Connection]:
    """A pooled connection in autocommit mode, for a handler that reads with Core and nothing else
    (the poll): no Session, no BEGIN, no ROLLBACK. Falls back to a session's connection where the
    app's sessionmaker has no engine bound."""
    maker = _autocommit_maker(request.app.state.sessionmaker)
    if maker is not None:
        with maker.kw["bind"].connect() as conn:
            yield conn
        return
    session: Session = request.app.state.sessionmaker()
    try:
        yield session.connection()
    finally:
        session.close()


async def get_store(request: Request) -> BlobStore:
    return request.app.state.store


async def get_sender(request: Request) -> Any:
    """The Celery app used to send tasks by name (no worker code imported)."""
    return request.app.state.celery


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="spa"'})


# Declared for the OpenAPI document ("Authorize" in /docs); the header is parsed below.
bearer_scheme = HTTPBearer(auto_error=False, description="an API key from `spa admin create-key NAME`")


# Built once: a statement object keeps its cache key, which SQLAlchemy would otherwise derive again
# for every request (rebuilding the select cost more CPU than the query's round trip).
KEY_OWNER = sa.select(ApiKey.id).where(ApiKey.key_hash == sa.bindparam("key_hash"), ApiKey.revoked_at.is_(None))


def key_owner(conn: sa.Connection, token: str) -> str | None:
    # Looked up on every request, never cached: a revoked key is refused from the next request on,
    # in every API process. The hash is one SHA-256 (under a microsecond); the id is read with Core
    # (no ORM bookkeeping for one column).
    return conn.execute(KEY_OWNER, {"key_hash": hash_key(token)}).scalar_one_or_none()


def _key_owner(session: Session, token: str) -> str | None:
    return key_owner(session.connection(), token)


def bearer_token(request: Request, settings: Settings) -> str | None:
    """The caller's API key as sent; None in the no-auth embedded mode (after its loopback check).
    401 without one, 403 from another machine in the no-auth mode. Does no I/O."""
    if settings.auth_disabled:
        # The no-auth embedded mode serves only this machine, whatever address it was bound to.
        if not is_loopback(request.client.host if request.client else None):
            raise ProblemError(
                403, "this server runs without authentication and only serves loopback clients"
            )
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    return token.strip()


def unknown_key() -> ProblemError:
    return _unauthorized("unknown or revoked API key")


def get_owner(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings_dep)],
    session: Annotated[Session, Depends(get_session)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> str:
    """The tenant: the id of the caller's API key. Every query filters on it. A plain function (run
    in the thread pool, and called directly by other dependencies, e.g. /metrics' access check)."""
    token = bearer_token(request, settings)
    if token is None:
        refuse_unknown_query(request.scope)
        return LOCAL_OWNER
    key_id = _key_owner(session, token)
    if key_id is None:
        raise unknown_key()
    refuse_unknown_query(request.scope)
    return key_id


AUTHENTICATING.add(get_owner)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SenderDep = Annotated[Any, Depends(get_sender)]
OwnerDep = Annotated[str, Depends(get_owner)]


def _owner_in_thread(request: Request, token: str) -> str | None:
    with reading_connection(request) as conn:
        return key_owner(conn, token)


async def get_owner_on_loop(
    request: Request, _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None
) -> str:
    """get_owner for a route that reads on the event loop (app.core.db.aio, PostgreSQL): the same
    answers in the same order, without the thread-pool hop. Where the app has no async reader
    (SQLite), the key is looked up in the thread pool."""
    token = bearer_token(request, request.app.state.settings)
    if token is None:
        refuse_unknown_query(request.scope)
        return LOCAL_OWNER
    reader = request.app.state.reader
    if reader is not None:
        row = await reader.one(KEY_OWNER, {"key_hash": hash_key(token)})
        key_id = row[0] if row is not None else None
    else:
        key_id = await anyio.to_thread.run_sync(_owner_in_thread, request, token)
    if key_id is None:
        raise unknown_key()
    refuse_unknown_query(request.scope)
    return key_id


AUTHENTICATING.add(get_owner_on_loop)
LoopOwnerDep = Annotated[str, Depends(get_owner_on_loop)]
