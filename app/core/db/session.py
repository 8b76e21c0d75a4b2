"""Engines and sessions. SQLite gets WAL and a busy timeout: the API and the worker write to
the same file from two processes, and without them a writer sees ``database is locked``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The database away (restarting, unreachable, locked past the timeout): an outage to wait out, not
# a bug. The API answers 503 for these, the worker retries (worker.tasks.with_db).
DB_AWAY: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def make_engine(url: str) -> sa.Engine:
    kwargs: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        kwargs["pool_pre_ping"] = True  # server connections go stale (restarts, idle timeouts); files do not
        # Enough kept connections for an API process's concurrent requests (the default 5 made a
        # loaded API open and close new connections all the time, bench/api_load.py).
        kwargs["pool_size"], kwargs["max_overflow"] = 20, 20
    else:
        db_path = sa.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    engine = sa.create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


@lru_cache(maxsize=16)
def get_engine(url: str) -> sa.Engine:
    return make_engine(url)


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
