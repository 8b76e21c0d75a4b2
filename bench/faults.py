"""Fault scenarios' outcomes into docs/reliability.md (run by hand; CI runs the same tests):

    python -m bench.faults --write docs/reliability.md

Runs tests/service/test_faults.py (real API and worker processes on a PostgreSQL and a Redis of its
own, stopped and killed mid-job) with $SPA_TEST_FAULT_REPORT set, and writes what each scenario saw: the
answers the API gave during the outage, how the jobs ended and how long recovery took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import docsection

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def run_scenarios() -> tuple[list[dict], int]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        env = {**os.environ, "SPA_TEST_FAULT_REPORT": str(report)}
        rc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/service/test_faults.py", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT, env=env,
        ).returncode  # fmt: skip
        return (json.loads(report.read_text()) if report.exists() else []), rc


def table(rows: list[dict], rc: int) -> str:
    verdict = "passed" if rc == 0 else f"FAILED (rc {rc})"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}), "
        f"`python -m bench.faults`; the scenarios' tests {verdict}.",
        "",
        "| scenario | mode | requests during the fault | answers | no answer | jobs | succeeded | failed "
        "| recovered in | notes |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        answers = ", ".join(f"{n}× {code}" for code, n in sorted(r["statuses"].items())) or "—"
        notes = ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in r.items()
            if k not in {"scenario", "mode", "recovered_s", "requests", "statuses", "no_answer", "jobs",
                         "succeeded", "failed"}
        )  # fmt: skip
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {r['requests']} | {answers} | {r['no_answer']} | {r['jobs']} "
            f"| {r['succeeded']} | {r['failed']} | {r['recovered_s']} s | {notes} |"
        )
    fivexx = sum(n for r in rows for code, n in r["statuses"].items() if code.startswith("5") and code != "503")
    lines += ["", f"5xx other than 503 in all scenarios: **{fivexx}**; requests with no answer: "
              f"**{sum(r['no_answer'] for r in rows)}**; jobs stuck or lost: "
              f"**{sum(r['jobs'] - r['succeeded'] - r['failed'] for r in rows)}**."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", type=Path, help="update this markdown file's fault section")
    args = ap.parse_args(argv)
    rows, rc = run_scenarios()
    text = table(rows, rc)
    print(text)
    if args.write:
        docsection.replace(args.write, BEGIN, END, f"{BEGIN}\n{text}\n{END}", "# Reliability")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
