"""spa_job_stage_seconds: time per stage of recent jobs, read from their events at scrape time."""

from __future__ import annotations

from datetime import timedelta

from app.core.config import Settings
from app.core.db.models import Job, JobEvent, Model, utcnow
from app.core.db.session import session_scope
from tests.service.conftest import make_client

# (state, finished seconds ago or None, events as (seconds ago, kind, stage))
JOBS = [
    # fetch 0.2 s, prune 9.8 s (a progress tick in it ends nothing), export 50 s up to the final event
    ("succeeded", 40, [(100, "stage", "fetch"), (99.8, "stage", "prune"), (95, "progress", "prune"),
                       (90, "stage", "export"), (40, "state", "done")]),
    # fetch 0.05 s; prune still under way: not counted
    ("running", None, [(50, "state", "starting"), (50, "stage", "fetch"), (49.95, "stage", "prune")]),
    # no final event: fetch lasted until finished_at, 0.3 s
    ("failed", 19.7, [(20, "stage", "fetch")]),
    # prune 4 s until its worker was lost and the job re-queued; the new attempt's prune is under way
    ("running", None, [(40, "stage", "prune"), (36, "state", None), (10, "stage", "prune")]),
]  # fmt: skip


def test_time_per_stage_from_the_job_events(private_settings: Settings) -> None:
    now = utcnow()
    with session_scope(private_settings.database_url) as s:
        m = Model(owner_id="o", sha256="cd" * 32, size=1, filename="m.onnx", format="onnx", state="ready")
        s.add(m)
        s.flush()
        for state, finished, events in JOBS:
            job = Job(owner_id="o", model_id=m.id, spec={}, request_hash="h", queue=private_settings.queue_cpu,
                      state=state, created_at=now - timedelta(seconds=200), started_at=now - timedelta(seconds=150),
                      # a running job beats: the API's sweeper would re-queue it otherwise
                      heartbeat_at=now if state == "running" else None,
                      finished_at=None if finished is None else now - timedelta(seconds=finished))  # fmt: skip
            s.add(job)
            s.flush()
            for seq, (ago, kind, stage) in enumerate(events):
                s.add(JobEvent(job_id=job.id, seq=seq, at=now - timedelta(seconds=ago), kind=kind, stage=stage))
        # a job never started has no stage time to report
        s.add(Job(owner_id="o", model_id=m.id, spec={}, request_hash="q", queue=private_settings.queue_cpu,
                  state="queued"))  # fmt: skip
    with make_client(private_settings.model_copy(update={"metrics_public": True})) as client:
        text = client.get("/metrics").text
    lines = set(text.splitlines())

    def bucket(stage: str, le: str) -> float:
        hit = [ln for ln in lines if ln.startswith(f'spa_job_stage_seconds_bucket{{le="{le}",stage="{stage}"}} ')]
        assert len(hit) == 1, (stage, le, sorted(ln for ln in lines if "stage_seconds" in ln))
        return float(hit[0].rsplit(" ", 1)[1])

    assert (bucket("fetch", "0.1"), bucket("fetch", "0.5"), bucket("fetch", "+Inf")) == (1, 3, 3)
    assert (bucket("prune", "1"), bucket("prune", "5"), bucket("prune", "15"), bucket("prune", "+Inf")) == (0, 1, 2, 2)
    assert (bucket("export", "15"), bucket("export", "60"), bucket("export", "+Inf")) == (0, 1, 1)
    assert 'spa_job_stage_seconds_gcount{stage="fetch"} 3.0' in lines
    assert 'spa_job_stage_seconds_gcount{stage="prune"} 2.0' in lines
    gsum = next(ln for ln in lines if ln.startswith('spa_job_stage_seconds_gsum{stage="export"}'))
    assert abs(float(gsum.rsplit(" ", 1)[1]) - 50) < 0.01
    assert not any('stage="starting"' in ln or 'stage="done"' in ln for ln in lines if "stage_seconds" in ln)
