"""The worker's Celery application: the shared configuration of ``app.core.queue`` plus the task
module. (The API builds its sending app from the same function and never imports this package.)

Run a worker:  celery -A worker.celery_app worker -Q cpu -c 1     (GPU machines: -Q gpu)
"""

from __future__ import annotations

from app.core.config import get_settings
from app.core.queue import make_celery

celery_app = make_celery(get_settings(), include=["worker.tasks"])
app = celery_app  # `celery -A worker.celery_app` finds `app`
