"""Blob reference bookkeeping shared by the API and the worker."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db.models import Dataset, Model
from app.core.storage import BlobStore


def release_if_unused(session: Session, store: BlobStore, sha256: str) -> bool:
    """Delete a blob no valid model and no dataset points at (an invalid or aborted upload), so
    rejected input leaves nothing behind in storage. Job artifacts are never released here."""
    used = session.execute(
        sa.select(sa.func.count()).select_from(Model).where(Model.sha256 == sha256, Model.state != "invalid")
    ).scalar_one()
    used += session.execute(
        sa.select(sa.func.count()).select_from(Dataset).where(Dataset.sha256 == sha256)
    ).scalar_one()
    if used:
        return False
    store.delete(sha256)
    return True
