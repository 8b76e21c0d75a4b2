"""API keys: created by `spa admin create-key NAME`, shown once, stored only as a hash (the API
looks a caller's key up by the same hash, ``app.api.deps``)."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db.models import ApiKey, utcnow


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """Returns the row and the plain key (the only time it exists outside the caller)."""
    if not name.strip():
        raise ValueError("a key needs a non-empty name")
    plain = "spa_" + secrets.token_urlsafe(32)
    row = ApiKey(name=name.strip(), key_hash=hash_key(plain))
    session.add(row)
    session.flush()
    return row, plain


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first (hashes only: the keys themselves were never stored)."""
    return list(session.execute(sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).scalars())


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke the key whose id is ``ref``, or the one live key named ``ref``: refused from the next
    request on (the API looks every request's key up). ValueError (a sentence) when ``ref`` is
    unknown or names several live keys."""
    row = session.get(ApiKey, ref)
    if row is None:
        named = [k for k in session.execute(sa.select(ApiKey).where(ApiKey.name == ref.strip())).scalars()
                 if k.revoked_at is None]
        if len(named) > 1:
            raise ValueError(f"{len(named)} live keys are named {ref!r}; revoke one by its id (spa admin list-keys)")
        if not named:
            raise ValueError(f"no key has the id or live name {ref!r} (spa admin list-keys shows them)")
        row = named[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
