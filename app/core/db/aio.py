"""Reads on the event loop, for the API's hottest route (the job poll) on PostgreSQL.

A handler that uses a SQLAlchemy session runs in the thread pool, and the hop there and back
(queue, wake-up, two GIL hand-overs) cost more than the rest of a poll: 0.43 ms of CPU per request,
where a whole async request costs 0.29 ms (bench/api_load.py, 2 cores). psycopg's AsyncConnection
runs the statement on the loop instead. SQLite (the embedded mode) has no async driver here; its
polls keep the thread pool.

The statements are SQLAlchemy Core, compiled once for psycopg: one source of truth for the SQL.
The pool is small and of its own (no extra dependency): connections idle in a list; at most
``size`` are in use at once (more requests wait their turn: a poll holds one for a round trip). No
ping before each use (a round trip per request, as SQLAlchemy's pre-ping is): a statement that fails
because a kept connection died (PostgreSQL restarted since) is retried once on a new connection;
when the database is really away, the error leaves as SQLAlchemy's OperationalError, which the
API answers with a 503 like every other database outage."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

DEFAULT_SIZE = 10  # per API process; a poll's statement takes well under a millisecond
_DIALECT = pg_psycopg.dialect()


class AsyncReader:
    def __init__(self, conninfo: str, size: int = DEFAULT_SIZE) -> None:
        self.conninfo = conninfo
        self.size = size
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sql: dict[int, tuple[sa.Executable, str]] = {}

    @classmethod
    def for_url(cls, url: str, size: int = DEFAULT_SIZE) -> AsyncReader | None:
        """A reader for a PostgreSQL URL (any SQLAlchemy driver name), None for anything else."""
        u = sa.make_url(url)
        if u.get_backend_name() != "postgresql":
            return None
        conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(conninfo, size)

    def _compiled(self, stmt: sa.Executable) -> str:
        # keyed by identity, the statement kept alive with its SQL (module-level statements)
        hit = self._sql.get(id(stmt))
        if hit is None or hit[0] is not stmt:
            hit = (stmt, str(stmt.compile(dialect=_DIALECT)))  # type: ignore[attr-defined]
            self._sql[id(stmt)] = hit
        return hit[1]

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        # UTC: timestamps come back as the ORM gives them; autocommit: a read needs no transaction
        return await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, row_factory=namedtuple_row, options="-c TimeZone=UTC"
        )

    async def one(self, stmt: sa.Executable, params: dict[str, Any]) -> Any | None:
        """The first row of ``stmt`` (attribute access by column name), or None."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        sql = self._compiled(stmt)
        async with self._slots:
            fresh = not self._idle
            while True:
                try:
                    conn = await self._connect() if fresh else self._idle.pop()
                except psycopg.OperationalError as e:
                    raise sa.exc.OperationalError(sql, params, e) from e
                try:
                    cur = await conn.execute(sql, params)
                    row = await cur.fetchone()
                except psycopg.OperationalError as e:
                    await conn.close()
                    if fresh:
                        raise sa.exc.OperationalError(sql, params, e) from e
                    # A kept connection died (PostgreSQL restarted since): the others went with it.
                    # Once more, on a new one.
                    await self.close()
                    fresh = True
                    continue
                except BaseException:  # cancelled mid-statement, or a bug: the connection's state is unknown
                    await conn.close()
                    raise
                self._idle.append(conn)
                return row

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connections and the semaphore belong to one event loop. An app served by a new loop (a
        test client opened again, a restarted server in the same process) starts afresh; the old
        loop's connections are closed without it (it may be gone)."""
        for conn in self._idle:
            conn.pgconn.finish()
        self._idle = []
        self._slots = asyncio.Semaphore(self.size)
        self._loop = loop

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
