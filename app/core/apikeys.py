"""API keys: created by `spa admin create-key NAME`, shown once, stored only as a hash (the API
looks a caller's key up by the same hash, ``app.api.deps``)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.orm import Session

from app.core.db.models import ApiKey


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
