"""FastAPI dependencies: settings, DB session, blob store, task sender, the calling principal."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.errors import ProblemError
from app.core.apikeys import hash_key
from app.core.config import Settings
from app.core.db.models import ApiKey
from app.core.storage import BlobStore

LOCAL_OWNER = "local"  # owner of everything in the no-auth embedded mode


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> BlobStore:
    return request.app.state.store


def get_sender(request: Request) -> Any:
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


def get_owner(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings_dep)],
    session: Annotated[Session, Depends(get_session)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> str:
    """The tenant: the id of the caller's API key. Every query filters on it."""
    if settings.auth_disabled:
        # The no-auth embedded mode serves only this machine, whatever address it was bound to.
        if not is_loopback(request.client.host if request.client else None):
            raise ProblemError(
                403, "this server runs without authentication and only serves loopback clients"
            )
        return LOCAL_OWNER
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    key = session.execute(
        sa.select(ApiKey).where(ApiKey.key_hash == hash_key(token.strip()), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if key is None:
        raise _unauthorized("unknown or revoked API key")
    return key.id


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SenderDep = Annotated[Any, Depends(get_sender)]
OwnerDep = Annotated[str, Depends(get_owner)]
