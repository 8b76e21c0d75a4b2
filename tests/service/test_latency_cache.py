"""The worker's latency cache: seeded into a job's HOME, new measurements taken back, nothing
else (a job is untrusted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker import latency_cache

KEY = "ab" * 16
FILE = "0123456789abcdef01234567.json"


def test_seed_then_collect_takes_only_new_valid_entries(tmp_path: Path) -> None:
    cache, home = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    (cache / FILE).write_text(json.dumps({KEY: 1.5}))
    latency_cache.seed(cache, home)
    job = home / latency_cache.IN_JOB
    assert json.loads((job / FILE).read_text()) == {KEY: 1.5}
    # the job measured one new shape, and tries to overwrite, to store junk and to escape
    (job / FILE).write_text(json.dumps({KEY: 999.0, "cd" * 16: 2.0, "ef" * 16: "nan", "12" * 16: -1,
                                        "not-a-key": 3.0, "34" * 16: float("inf")}))
    (job / "../../../escape.json").write_text("{}")
    (job / "fedcba9876543210fedcba98.json").symlink_to("/etc/passwd")
    assert latency_cache.collect(cache, home) == 1
    assert json.loads((cache / FILE).read_text()) == {KEY: 1.5, "cd" * 16: 2.0}
    assert sorted(os.listdir(cache)) == [FILE]


def test_missing_or_broken_cache_is_never_an_error(tmp_path: Path) -> None:
    latency_cache.seed(tmp_path / "none", tmp_path / "run")
    assert latency_cache.collect(tmp_path / "cache", tmp_path / "run") == 0
    job = tmp_path / "run" / latency_cache.IN_JOB
    job.mkdir(parents=True)
    (job / FILE).write_text("{not json")
    assert latency_cache.collect(tmp_path / "cache", tmp_path / "run") == 0
