"""Which queues have a live consumer: every worker refreshes its row (``beat``) on its heartbeat
interval and removes it when it stops (``leave``); a row older than ``heartbeat_stale_s`` is a
dead worker. Read by /readyz and at submit."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db.models import WorkerBeat, utcnow
from app.core.jobstate import stale_cutoff


def beat(session: Session, name: str, queues: list[str]) -> None:
    row = session.get(WorkerBeat, name)
    if row is None:
        session.add(WorkerBeat(name=name, queues=",".join(queues)))
    else:
        row.queues, row.last_seen = ",".join(queues), utcnow()


def leave(session: Session, name: str) -> None:
    session.execute(sa.delete(WorkerBeat).where(WorkerBeat.name == name))


def live_by_queue(session: Session, stale_s: float, queues: list[str]) -> dict[str, int]:
    """Live workers per queue (0 for a queue nobody consumes)."""
    rows = session.execute(sa.select(WorkerBeat.queues).where(WorkerBeat.last_seen >= stale_cutoff(stale_s)))
    out = dict.fromkeys(queues, 0)
    for (qs,) in rows:
        for q in qs.split(","):
            if q in out:
                out[q] += 1
    return out
