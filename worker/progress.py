"""The progress callback handed to pruning_core.prune: writes stage / progress / events to the
job row (throttled: the library calls it often) and turns a cancel request into ``Cancelled``."""

from __future__ import annotations

import logging
import time

from app.core import jobstate
from app.core.config import Settings
from app.core.db.session import DB_AWAY, session_scope

log = logging.getLogger("spa.worker")
MIN_INTERVAL_S = 0.5  # between DB writes for plain progress ticks
MIN_STEP = 0.05  # a progress event at least every 5 %
# The library reports a fraction per stage; the job shows one overall fraction, so stages are laid
# end to end: the worker's own fetch / store around the library's stages (``pruning_core.api.STAGES``).
# The bar never moves back, even if a stage comes out of order.


def stage_order() -> tuple[str, ...]:
    from pruning_core.api import STAGES  # lazy: the library is heavy and only the worker runs this

    return ("fetch", *STAGES, "store")


def overall(order: tuple[str, ...], stage: str, fraction: float, previous: float) -> float:
    if stage not in order:
        return previous  # an unknown stage keeps the bar where it was
    return max(previous, (order.index(stage) + fraction) / len(order))


class ProgressReporter:
    def __init__(self, settings: Settings, job_id: str) -> None:
        self.db = settings.database_url
        self.job_id = job_id
        self.stage: str | None = None
        self.last_write = 0.0
        self.last_event_fraction = -1.0
        self.progress = 0.0
        self.order = stage_order()

    def __call__(self, stage: str, fraction: float, message: str | None = None) -> None:
        now = time.monotonic()
        fraction = overall(self.order, stage, max(0.0, min(1.0, float(fraction))), self.progress)
        self.progress = fraction
        new_stage = stage != self.stage
        # Write on a stage change, a message, or a tick after the interval; skip the rest.
        if not (new_stage or message or now - self.last_write >= MIN_INTERVAL_S):
            return
        try:
            state = self._write(stage, fraction, message, new_stage)
        except DB_AWAY as e:  # the work goes on through a database outage; the next tick writes
            log.warning("progress of job %s not recorded (database unavailable): %s", self.job_id,
                        " ".join(str(e).split())[:160])
            return
        self.stage = stage
        self.last_write = now
        if state == "cancelling":
            from pruning_core.errors import Cancelled

            raise Cancelled("cancelled by the user")

    def _write(self, stage: str, fraction: float, message: str | None, new_stage: bool) -> str:
        """Heartbeat with stage and progress, plus an event when due; returns the job's state."""
        with session_scope(self.db) as session:
            state = jobstate.heartbeat(session, self.job_id, stage=stage, progress=fraction)
            if new_stage:
                jobstate.add_event(
                    session, self.job_id, "stage", stage=stage, progress=fraction, message=message
                )
                self.last_event_fraction = fraction
            elif message:
                jobstate.add_event(
                    session, self.job_id, "log", stage=stage, progress=fraction, message=message
                )
            elif abs(fraction - self.last_event_fraction) >= MIN_STEP:
                jobstate.add_event(session, self.job_id, "progress", stage=stage, progress=fraction)
                self.last_event_fraction = fraction
        return state
