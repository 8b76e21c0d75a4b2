"""The `spa` command line.

Remote commands talk to a server (--server, SPA_SERVER; key from --api-key or SPA_API_KEY);
`spa serve` runs the embedded server; `spa prune` / `spa analyze` run locally (client.local_commands).
Exit codes: 0 done, 1 job failed or cancelled, 2 usage or bad input. Errors are one line on stderr.
Nothing heavy is imported at module level: `spa --help` stays fast, and the remote commands work
with the base install (httpx). Commands that need an extra say which one when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2
EVENTS_PAGE = 500  # the events route's default page
# 32 hex digits, or the 8-4-4-4-12 UUID form, either case (the API takes both)
MODEL_ID = re.compile(r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})$")

# Top-level modules of each extra of pyproject.toml that a command needs (checked without importing).
CORE_MODULES = ("pydantic", "pydantic_settings", "sqlalchemy", "alembic", "celery")
API_MODULES = (*CORE_MODULES, "fastapi", "uvicorn", "python_multipart", "jinja2", "prometheus_client")
LIBRARY_MODULES = ("numpy", "pydantic", "onnx", "onnxruntime", "onnxscript", "torch")


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit 2."""


def require_extra(extra: str, what: str, modules: tuple[str, ...]) -> None:
    """A UsageError (one sentence, exit 2) when a module of ``extra`` is not installed."""
    if any(importlib.util.find_spec(name) is None for name in modules):
        raise UsageError(f"{what} needs the {extra} extra: pip install 'spa-service[{extra}]'")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _client(args: argparse.Namespace) -> Any:
    from client.http import SpaClient

    return SpaClient(getattr(args, "server", None), getattr(args, "api_key", None))


def round_to_arg(text: str) -> int | str:
    """``auto`` or a positive integer."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return v


def add_runtime_arguments(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--round-to and where the model will run (spec.runtime); ``defaults=False`` leaves unset
    flags out of the spec (the server's defaults, or a --spec file's, apply)."""
    p.add_argument("--round-to", type=round_to_arg, default="auto" if defaults else None,
                   help="kept widths: 'auto' (what the runtime's kernels want, default) or a multiple")
    p.add_argument("--provider", choices=["cpu", "cuda"], help="runtime to measure on (default cpu)")
    p.add_argument("--threads", type=_positive_int, help="onnxruntime threads to measure with (default 2)")
    p.add_argument("--batch", type=_positive_int, help="batch size to measure at (default: the model's, 1 if dynamic)")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction strictly between 0 and 1")
    return value


TARGET_WORDS = {"flops": "FLOPs (multiply-accumulates)", "params": "parameters",
                "channels": "channels of the prunable groups", "latency": "the measured latency"}


def default_target_note(target: dict[str, Any]) -> str:
    """What a spec without a target prunes, from the target the spec's default filled in (the server's
    answer, or PruneSpec's locally): the default lives in one place, pruning_core.spec."""
    kind, value = next(((k, v) for k, v in target.items() if v is not None), ("channels", None))
    amount = f"{value * 100:g} % of" if isinstance(value, int | float) else "a share of"
    return (f"no target given: pruning {amount} {TARGET_WORDS.get(kind, kind)} (the default); "
            "pass --flops, --params, --channels or --latency to choose")


def _ratio(before: Any, after: Any) -> str:
    numbers = isinstance(before, int | float) and isinstance(after, int | float)
    return f"{after / before:.2f}x" if numbers and before else ""


def result_table(summary: dict[str, Any]) -> str:
    """A succeeded job's summary as before -> after lines with the ratio (after / before): params,
    MACs, latency, accuracy; then fidelity and the verification error."""
    rows: list[list[str]] = [["", "before", "after", "ratio"]]

    def add(name: str, before: Any, after: Any, fmt: str, note: str = "") -> None:
        if before is not None and after is not None:
            rows.append([name, format(before, fmt), format(after, fmt), _ratio(before, after), note])

    add("params", summary.get("params_before"), summary.get("params_after"), ",")
    add("MACs", summary.get("macs_before"), summary.get("macs_after"), ",")
    speed = [f"{label} {summary[k]:.2f}{unit}" for k, label, unit in
             (("speedup", "speed-up", "x"), ("efficiency", "efficiency", "")) if summary.get(k) is not None]
    add("latency ms", summary.get("latency_ms_before"), summary.get("latency_ms_after"), ".3f", ", ".join(speed))
    fid = summary.get("fidelity") or {}
    acc = fid.get("accuracy") or {}
    add("accuracy", acc.get("before"), acc.get("after"), ".1%")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
             f"{r[4] if len(r) > 4 else ''}".rstrip() for r in rows]
    if fid.get("cosine") is not None:
        parts = [f"output cosine {fid['cosine']:.4f}"]
        if fid.get("top1_agreement") is not None:
            parts.append(f"top-1 agreement {fid['top1_agreement']:.1%}")
        on = fid.get("inputs") or "synthetic"
        if on == "synthetic":
            n = fid.get("samples")
            on = f"synthetic inputs ({n} sample{'' if n == 1 else 's'}, no data given)"
        lines.append(f"fidelity on {on}: {', '.join(parts)}")
    if summary.get("verify_max_error") is not None:
        lines.append(f"verified: max error {summary['verify_max_error']:.3g} vs the original")
    if summary.get("channels_removed") is not None:
        lines.append(f"channels removed: {summary['channels_removed']:,}")
    lines.extend(f"warning: {w}" for w in summary.get("warnings") or [])
    return "\n".join(lines)


def _job_exit(job: dict[str, Any]) -> int:
    if job["state"] == "succeeded":
        return EXIT_OK
    if job["state"] in ("failed", "cancelled"):
        reason = job.get("error") or job["state"]
        sys.stderr.write(f"spa: job {job['id']} {job['state']}: {reason}\n")
        return EXIT_JOB_FAILED
    return EXIT_OK


def _wait(client: Any, job_id: str, timeout: float | None) -> dict[str, Any]:
    """Wait with the progress bar; a succeeded job's before/after table follows it on stderr
    (stdout stays what scripts read: the job id, or `spa wait`'s summary JSON)."""
    from client.progress import ProgressBar

    bar = ProgressBar()
    job = client.wait(job_id, timeout=timeout, on_update=bar.update)
    if job["state"] == "succeeded" and job.get("summary"):
        sys.stderr.write(result_table(job["summary"]) + "\n")
        sys.stderr.flush()
    return job


# -- commands ----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read spec {args.spec}: {e}") from e
        if not isinstance(spec, dict):
            raise UsageError(f"spec {args.spec} is not a JSON object")
    targets = {k: getattr(args, k) for k in ("flops", "params", "channels", "latency") if getattr(args, k) is not None}
    if len(targets) > 1:
        raise UsageError("give at most one of --flops, --params, --channels, --latency")
    if targets:
        spec["target"] = targets
    if args.criterion:
        spec["criterion"] = args.criterion
    if args.round_to is not None:
        spec["round_to"] = args.round_to
    runtime = {k: v for k, v in (("provider", args.provider), ("threads", args.threads), ("batch", args.batch))
               if v is not None}
    if runtime:
        spec["runtime"] = {**spec.get("runtime", {}), **runtime}
    for path in (args.data, args.eval_data):  # before anything is uploaded
        if path and not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    with _client(args) as client:
        model_path = Path(args.model)
        if model_path.is_file():
            model = client.upload_model(model_path)
            print(f"model {model['id']} ({model['state']})", file=sys.stderr)
            model_id = model["id"]
        elif MODEL_ID.match(args.model):
            model_id = args.model.replace("-", "").lower()
        else:
            raise UsageError(f"{args.model}: no such file (and not a model id)")
        dataset_id = None
        if args.data:
            if not Path(args.data).is_file():
                raise UsageError(f"{args.data}: no such file")
            dataset_id = client.upload_dataset(args.data, model_id=model_id)["id"]
        if args.eval_data:  # fidelity on this set instead of a split of --data
            eval_id = client.upload_dataset(args.eval_data, model_id=model_id)["id"]
            spec["calibration"] = {**spec.get("calibration", {}), "eval_dataset_id": eval_id}
        job = client.submit(model_id, spec, dataset_id=dataset_id, idempotency_key=args.idempotency_key)
        print(job["id"], flush=True)
        if "target" not in spec:  # the server filled in its default: say which, from its answer
            print(default_target_note((job.get("spec") or {}).get("target") or {}), file=sys.stderr)
        if not (args.wait or args.download):
            return EXIT_OK
        job = _wait(client, job["id"], args.timeout)
        code = _job_exit(job)
        if code == EXIT_OK and args.download:
            for path in client.download(job["id"], args.download):
                print(path, file=sys.stderr)
        return code


def cmd_cancel(args: argparse.Namespace) -> int:
    """Exit 0 when the job is (being) cancelled; 1 when it had already finished otherwise."""
    from client.http import SpaError

    with _client(args) as client:
        try:
            got = client.cancel(args.job)
        except SpaError as e:
            if e.status == 409:  # finished before the request: say how it ended
                print(json.dumps({"id": args.job, "state": e.body.get("state")}))
                sys.stderr.write(f"spa: job {args.job} had already ended: {e.body.get('state')}\n")
                return EXIT_JOB_FAILED
            raise
    print(json.dumps(got))
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spa-service")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job)
    print(json.dumps(job, indent=2))
    return _job_exit(job)


def _event_line(e: dict[str, Any]) -> str:
    progress = f"{e['progress'] * 100:3.0f}%" if e.get("progress") is not None else "    "
    return f"{e['seq']:>4}  {str(e['at'])[11:19]}  {e['kind']:<8} {e.get('stage') or '':<12} {progress}  " \
           f"{e.get('message') or ''}".rstrip()


def cmd_events(args: argparse.Namespace) -> int:
    """The job's events, one line each; --follow keeps printing them until the job ends (each line
    flushed: it works in a pipe or a CI log as on a terminal)."""
    import time

    after = 0
    with _client(args) as client:
        while True:
            page = client.events(args.job, after=after)
            for e in page["items"]:
                print(_event_line(e), flush=True)
            after = page["next_after"]
            if page["items"] and len(page["items"]) >= EVENTS_PAGE:
                continue  # more already there
            if not args.follow:
                return EXIT_OK
            job = client.get_job(args.job)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                for e in client.events(args.job, after=after)["items"]:  # what came with the end
                    print(_event_line(e), flush=True)
                return _job_exit(job)
            time.sleep(args.interval)


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _wait(client, args.job, args.timeout)
    if job.get("summary"):
        print(json.dumps(job["summary"], indent=2))
    return _job_exit(job)


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job)
        if job["state"] in ("failed", "cancelled"):  # the job's outcome: exit 1, as status and wait
            sys.stderr.write(f"spa: job {job['id']} {job['state']}: {job.get('error') or job['state']}; "
                             "nothing to download\n")
            return EXIT_JOB_FAILED
        if job["state"] != "succeeded":
            raise UsageError(f"job {args.job} is {job['state']}; nothing to download yet (`spa wait {args.job}` first)")
        for path in client.download(args.job, args.dir, names=args.name or None):
            print(path)
    return EXIT_OK


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_jobs(limit=args.limit, state=args.state)
    rows = [
        [j["id"], j["state"], j.get("stage") or "", f"{j['progress'] * 100:.0f}%", j["created_at"][:19]]
        for j in page["items"]
    ]
    _table(rows, ["ID", "STATE", "STAGE", "PROGRESS", "CREATED"])
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_models(limit=args.limit)
    rows = [
        [
            m["id"],
            m["state"],
            m["filename"],
            str((m.get("summary") or {}).get("params", "")),
            m["created_at"][:19],
        ]
        for m in page["items"]
    ]
    _table(rows, ["ID", "STATE", "FILE", "PARAMS", "CREATED"])
    return EXIT_OK


def _arrays_text(arrays: dict[str, Any]) -> str:
    return " ".join(f"{name}[{','.join(map(str, (a or {}).get('shape') or []))}]" for name, a in arrays.items())


def cmd_datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_datasets(limit=args.limit)
    rows = [[d["id"], d["filename"], f"{d['size']:,}", _arrays_text(d.get("arrays") or {}), d["created_at"][:19]]
            for d in page["items"]]
    _table(rows, ["ID", "FILE", "BYTES", "ARRAYS", "CREATED"])
    return EXIT_OK


def cmd_groups(args: argparse.Namespace) -> int:
    """One row per channel group of an uploaded model; waits while the model is being analysed."""
    import time

    if not MODEL_ID.match(args.model):
        hint = "; for a file here, `spa analyze` lists its groups" if Path(args.model).exists() else ""
        raise UsageError(f"{args.model!r} is not a model id (`spa models` lists them){hint}")
    deadline = time.monotonic() + args.timeout
    with _client(args) as client:
        while client.get_model(args.model)["state"] == "validating":
            if time.monotonic() > deadline:
                raise UsageError(f"model {args.model} is still being analysed after {args.timeout:g} s")
            time.sleep(0.5)
        got = client.model_groups(args.model)
    groups = got["groups"]
    rows = [[str(g.get("id", "")), str(g.get("size", "")), "prunable" if g.get("prunable") else "fixed",
             g.get("name") or "", "" if g.get("prunable") else "; ".join(g.get("reasons") or []) or "-"]
            for g in groups]
    _table(rows, ["ID", "SIZE", "STATE", "NAME", "WHY FIXED"])
    prunable = sum(1 for g in groups if g.get("prunable"))
    print(f"{len(groups)} groups, {prunable} prunable, {len(groups) - prunable} fixed", file=sys.stderr)
    return EXIT_OK


def _db_url(args: argparse.Namespace) -> str:
    """--database-url, else the database of `spa serve --data-dir DIR` (client.serve derives it as
    the server does), else $SPA_DATABASE_URL or the embedded default."""
    if getattr(args, "data_dir", None):
        from client.serve import embedded_database_url

        url = embedded_database_url(Path(args.data_dir))
        if args.func is not cmd_db_upgrade and url.startswith("sqlite"):
            import sqlalchemy as sa

            db_file = sa.make_url(url).database or ""
            if not Path(db_file).is_file():  # a typo in DIR must not create an empty database there
                raise UsageError(f"no database under {args.data_dir} ({db_file} does not exist); start "
                                 f"`spa serve --data-dir {args.data_dir}` or run `spa db upgrade --data-dir "
                                 f"{args.data_dir}` first")
        return url
    from app.core.config import Settings

    return args.database_url or Settings().database_url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    require_extra("core", "spa db", CORE_MODULES)
    from app.core.db.migrate import upgrade

    url = _db_url(args)
    upgrade(url)
    print(f"database at revision head ({url.split('@')[-1]})", file=sys.stderr)
    return EXIT_OK


def _admin_db(args: argparse.Namespace) -> str:
    """The admin commands' database, checked first: one that cannot be opened, or that has no
    tables yet (before `spa db upgrade`), is a sentence, not the driver's exception."""
    import sqlalchemy as sa

    url = _db_url(args)
    where = url.split("@")[-1]  # never print a password
    how = "--data-dir " + str(args.data_dir) if getattr(args, "data_dir", None) else "--database-url URL"
    db_file = sa.make_url(url).database if url.startswith("sqlite") else None
    if db_file and db_file != ":memory:" and not Path(db_file).is_file():  # connecting would create it
        raise UsageError(f"no database at {where} ({db_file} does not exist); run `spa db upgrade {how}` first")
    try:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                ready = sa.inspect(conn).has_table("api_keys")
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
        raise UsageError(f"cannot open the database at {where}: {first}") from None
    if not ready:
        raise UsageError(f"the database at {where} has no SPA tables yet; run `spa db upgrade {how}` first")
    return url


def cmd_create_key(args: argparse.Namespace) -> int:
    require_extra("core", "spa admin", CORE_MODULES)
    from app.core.apikeys import create_key
    from app.core.db.session import session_scope

    try:
        with session_scope(_admin_db(args)) as session:
            row, plain = create_key(session, args.name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(plain)
    print(f"key {row.id} ({row.name}) created; it is shown only now", file=sys.stderr)
    return EXIT_OK


def cmd_list_keys(args: argparse.Namespace) -> int:
    require_extra("core", "spa admin", CORE_MODULES)
    from app.core.apikeys import list_keys
    from app.core.db.session import session_scope

    with session_scope(_admin_db(args)) as session:
        rows = [[k.id, k.name, k.created_at.isoformat(timespec="seconds"),
                 k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"] for k in list_keys(session)]
    _table(rows, ["ID", "NAME", "CREATED", "REVOKED"])
    return EXIT_OK


def cmd_revoke_key(args: argparse.Namespace) -> int:
    require_extra("core", "spa admin", CORE_MODULES)
    from app.core.apikeys import revoke_key
    from app.core.db.session import session_scope

    try:
        with session_scope(_admin_db(args)) as session:
            row = revoke_key(session, args.key)
            ident, name = row.id, row.name
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"key {ident} ({name}) revoked; requests with it are refused from now on", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    require_extra("server", "spa serve", (*API_MODULES, *LIBRARY_MODULES))
    from client.serve import serve

    return serve(host=args.host, port=args.port, data_dir=Path(args.data_dir), auth=args.auth)


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spa", description="Structured pruning as a service: client, server and local tools."
    )
    remote = _Parser(add_help=False)
    remote.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help="server URL (default: $SPA_SERVER or http://127.0.0.1:8000)",
    )
    remote.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (default: $SPA_API_KEY)")
    parser.add_argument("--version", action="version", version=f"spa {_version()}")
    parser.add_argument("--server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--api-key", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("serve", help="run the embedded server (SQLite, local files, a worker beside it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default=".spa", help="database, queue and artifacts (default .spa)")
    p.add_argument("--auth", action="store_true", help="require API keys (always on for non-loopback hosts)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "submit", parents=[remote], help="upload a model (or give its id) and submit a pruning job"
    )
    p.add_argument("model", help="a .onnx / .zip / .pt2 file, or a model id")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--flops", type=_fraction, help="fraction of FLOPs to remove")
    target.add_argument("--params", type=_fraction, help="fraction of parameters to remove")
    target.add_argument("--channels", type=_fraction, help="fraction of channels to remove")
    target.add_argument("--latency", type=_fraction, help="fraction of measured latency to remove")
    add_runtime_arguments(p, defaults=False)
    p.add_argument("--criterion", help="importance criterion (default l1)")
    p.add_argument("--spec", help="a JSON file with the full spec (flags override it)")
    p.add_argument("--data", help="calibration data (.npz, arrays named after the model inputs)")
    p.add_argument("--eval-data", help="evaluation data (.npz like --data): fidelity is measured on it")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    p.add_argument("--download", metavar="DIR", help="wait, then download the artifacts into DIR")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[remote], help="show a job (JSON)")
    p.add_argument("job")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", parents=[remote], help="cancel a queued or running job")
    p.add_argument("job")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("events", parents=[remote], help="a job's events (stages, progress, log, state)")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends (exit as `wait`)")
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between polls with --follow")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("wait", parents=[remote], help="wait for a job with a progress bar")
    p.add_argument("job")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("download", parents=[remote], help="download a job's artifacts")
    p.add_argument("job")
    p.add_argument("dir")
    p.add_argument("--name", action="append", help="only this artifact (repeatable)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("jobs", parents=[remote], help="list your jobs")
    p.add_argument("--state")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("models", parents=[remote], help="list your models")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", parents=[remote], help="list your datasets")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("groups", parents=[remote], help="a model's channel groups: size, prunable or why fixed")
    p.add_argument("model", help="a model id (spa models)")
    p.add_argument("--timeout", type=_positive_float, default=120.0,
                   help="seconds to wait while the model is being analysed (default 120)")
    p.set_defaults(func=cmd_groups)

    database = _Parser(add_help=False)  # which database `spa admin` / `spa db` work on
    where = database.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="default: $SPA_DATABASE_URL or the embedded SQLite")
    where.add_argument("--data-dir", metavar="DIR",
                       help="the database of `spa serve --data-dir DIR` (DIR/spa.db unless $SPA_DATABASE_URL is set)")

    p = sub.add_parser("admin", help="administration (direct database access)")
    admin = p.add_subparsers(dest="admin_command", metavar="ACTION", parser_class=_Parser, required=True)
    k = admin.add_parser("keys", help="API keys: create NAME | list | revoke ID|NAME")
    keys = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser, required=True)
    # `spa admin keys ACTION` is the documented form; create-key / list-keys / revoke-key stay as aliases.
    key_actions = (
        ("create", "create-key", "create an API key and print it once", cmd_create_key),
        ("list", "list-keys", "list API keys (ids, names, when created / revoked)", cmd_list_keys),
        ("revoke", "revoke-key", "revoke an API key, by id or by name", cmd_revoke_key),
    )
    for action, alias, text, func in key_actions:
        for k in (keys.add_parser(action, parents=[database], help=text),
                  admin.add_parser(alias, parents=[database], help=f"{text} (= keys {action})")):
            if action == "create":
                k.add_argument("name")
            elif action == "revoke":
                k.add_argument("key", help="the key's id (spa admin keys list) or its name")
            k.set_defaults(func=func)

    p = sub.add_parser("db", help="database schema")
    db = p.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser, required=True)
    u = db.add_parser("upgrade", parents=[database], help="apply the Alembic migrations")
    u.set_defaults(func=cmd_db_upgrade)

    from client import local_commands  # the parsers only; the library loads when a command runs

    local_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from client.http import SpaError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `spa jobs | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout at exit: not into the pipe
        except OSError:
            pass
        return EXIT_OK
    except UsageError as e:
        sys.stderr.write(f"spa: error: {e}\n")
    except SpaError as e:
        sys.stderr.write(f"spa: error: {e}\n")
    except TimeoutError as e:
        sys.stderr.write(f"spa: error: {e}\n")
    except KeyboardInterrupt:
        sys.stderr.write("spa: interrupted\n")
        return 130
    except Exception as e:  # never a traceback for the user; the message names the problem
        detail = " ".join(str(e).split())
        sys.stderr.write(f"spa: error: unexpected failure: {detail or 'no details were given'}\n")
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
