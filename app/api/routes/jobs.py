"""/v1/jobs: submit (idempotent), list (filtered by state, name, tag), get, events, cancel, delete,
artifacts.

The job row (and its first event) is committed before the task is sent: a worker that picks the
message up at once always finds the row, and the row, not Celery, says what state the job is in."""

from __future__ import annotations

import hashlib
import json
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Annotated, Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import (
    LoopOwnerDep,
    OwnerDep,
    SenderDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    reading_connection,
)
from app.api.errors import ProblemError, not_found, problems
from app.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, paginate
from app.api.routes import AllowRoute, canonical_id, find_owned, id_path
from app.api.schemas import (
    MAX_TAGS,
    NAME_PATTERN,
    TAG_PATTERN,
    CancelOut,
    EventList,
    EventOut,
    JobCreate,
    JobOut,
    Page,
)
from app.core import jobstate, retention, workers
from app.core.db.aio import AsyncReader
from app.core.db.models import Dataset, Job, JobEvent, JobTag, Model
from app.core.npz import BadNpz, check_names, sample_count
from app.core.queue import send_run_job
from pruning_core.errors import DataError
from pruning_core.runtime.holdout import holdout_count

POLL_AFTER_S = "2"  # Retry-After of a 202: a job takes seconds at least
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=AllowRoute)
# job_events.seq is a 32-bit INTEGER column: a bigger "after" would be a database error, not an answer
MAX_SEQ = 2**31 - 1
ARTIFACT_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,99}$"
# An artifact's media type by its suffix; the document lists each of them for the 200.
ARTIFACT_MEDIA = {".json": "application/json", ".html": "text/html"}
ARTIFACT_DEFAULT_MEDIA = "application/octet-stream"
JobIdPath = id_path("job")
# Every JobOut field is the jobs column of the same name; the ORM attribute may be named otherwise
# (metadata_: "metadata" is the declarative base's own).
_ATTRS = {
    name: Job.__mapper__.get_property_by_column(Job.__table__.c[name]).key for name in JobOut.model_fields
}
# Jobs submitted before these fields existed have NULL there.
_EMPTY: dict[str, Any] = {"tags": [], "metadata": {}}


def job_out(job: Job | Any) -> JobOut:
    # the ORM object, or a row of JobOut's columns (the poll: a Row, or psycopg's named tuple)
    if isinstance(job, Job):
        fields = {name: getattr(job, attr) for name, attr in _ATTRS.items()}
    else:
        fields = job._asdict()
    for name, empty in _EMPTY.items():
        if fields[name] is None:
            fields[name] = type(empty)()
    url = f"/v1/jobs/{fields['id']}/artifacts/"
    fields["artifacts"] = [
        {"name": name, "size": a["size"], "sha256": a["sha256"], "url": url + name}
        for name, a in sorted((fields["artifacts"] or {}).items())
    ]
    return JobOut(**fields)


def _owned_job(session: SessionDep, owner: str, job_id: str) -> Job:
    job = find_owned(session, Job, job_id, owner)
    if job is None:
        raise not_found("job")
    return job


def _request_hash(body: JobCreate, dataset_id: str | None, spec: dict[str, Any]) -> str:
    # of the normalized request: ids in their stored form, the spec with its defaults, tags deduplicated
    canonical = json.dumps(
        {"model_id": body.model_id, "dataset_id": dataset_id, "spec": spec,
         "name": body.name, "tags": body.tags, "metadata": body.metadata},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, request_hash: str, response: Response) -> JobOut:
    if job.request_hash != request_hash:
        raise ProblemError(
            422,
            "this Idempotency-Key was already used with a different request body",
            title="Idempotency key reused",
        )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Retry-After"] = POLL_AFTER_S
    response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a pruning job",
    description="Answers 202 with `Location` and `Retry-After` (seconds before polling it is worth "
    "it). With an `Idempotency-Key` header, the same key and the same body give the same job again; the "
    "same key with another body is a 422. A body larger than `SPA_MAX_SPEC_BYTES` (plus a little for "
    "`model_id`) is a 413; one that is not UTF-8 text or not JSON is a 400; valid JSON that is not a "
    "valid job is a 422. Ids may be given in the 8-4-4-4-12 UUID form too. `name`, `tags` and `metadata` "
    "are yours: returned with the job, and `name` and `tags` are filters of the list. A 409 when the "
    "model or dataset was deleted while the job was being submitted.",
    responses=problems(400, 401, 403, 404, 409, 413, 422, 503),
)
def create_job(
    body: JobCreate,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    sender: SenderDep,
    owner: OwnerDep,
    # printable ASCII, as the Idempotency-Key draft says (a structured-field string): a NUL was a
    # 500 on PostgreSQL, and a key is matched byte for byte
    idempotency_key: Annotated[str | None, Header(max_length=255, pattern=r"^[\x20-\x7e]*$")] = None,
) -> JobOut:
    spec = body.spec.model_dump(mode="json")
    cal = spec["calibration"]
    for key in ("dataset_id", "eval_dataset_id"):  # stored as the worker will look them up
        if cal.get(key):
            cal[key] = canonical_id(cal[key]) or cal[key]
    dataset_id = body.dataset_id or cal.get("dataset_id")
    if dataset_id:
        cal["dataset_id"] = dataset_id
    request_hash = _request_hash(body, dataset_id, spec)
    if idempotency_key:
        prior = session.execute(
            sa.select(Job).where(Job.owner_id == owner, Job.idempotency_key == idempotency_key)
        ).scalar_one_or_none()
        if prior is not None:
            return _replay(prior, request_hash, response)

    model = find_owned(session, Model, body.model_id, owner)
    if model is None:
        raise not_found("model")
    if model.state == "invalid":
        raise ProblemError(422, f"the model is invalid: {model.reason}", title="Invalid model")
    dataset = None
    if dataset_id:
        dataset = find_owned(session, Dataset, dataset_id, owner)
        if dataset is None:
            raise not_found("dataset")
        try:  # now if the model is analysed; else the worker
            check_names(dataset.arrays, model.summary, body.spec.input_shapes)
        except BadNpz as e:
            raise ProblemError(
                422, f"the dataset does not fit the model: {e}", title="Invalid dataset"
            ) from e
    _check_evaluation(session, owner, model, dataset, body)

    # a CUDA runtime is measured on a GPU worker, like a CUDA device
    on_gpu = body.spec.device == "cuda" or body.spec.runtime.provider == "cuda"
    queue = settings.queue_gpu if on_gpu else settings.queue_cpu
    job = Job(
        owner_id=owner,
        model_id=model.id,
        dataset_id=dataset_id,
        spec=spec,
        request_hash=request_hash,
        idempotency_key=idempotency_key,
        queue=queue,
        name=body.name,
        tags=body.tags,
        metadata_=body.metadata,
    )
    session.add(job)
    try:
        session.flush()
        session.add_all(JobTag(job_id=job.id, tag=tag) for tag in body.tags)
        jobstate.add_event(session, job.id, "state", message=f"queued on {queue}")
        if not workers.live_by_queue(session, settings.heartbeat_stale_s, [queue])[queue]:
            # said, not refused: a worker may be starting; the job runs when one consumes the queue
            jobstate.add_event(session, job.id, "state", message=f"no worker is consuming queue {queue!r} now; "
                               "the job waits until one does")
        session.commit()
    except IntegrityError:  # a parallel request with the same Idempotency-Key won
        session.rollback()
        prior = session.execute(
            sa.select(Job).where(Job.owner_id == owner, Job.idempotency_key == idempotency_key)
        ).scalar_one_or_none() if idempotency_key else None
        if prior is None:  # else a foreign key: the model or dataset was deleted meanwhile
            raise ProblemError(409, "the model or dataset was deleted while the job was submitted") from None
        return _replay(prior, request_hash, response)
    try:
        send_run_job(sender, job.id, queue)
    except Exception as e:
        # Nothing half-written: a job that can never run must not stay behind as "queued".
        jobstate.delete_unsent(session, job.id)
        session.commit()
        raise ProblemError(503, "the task broker is unavailable; the job was not queued") from e
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Retry-After"] = POLL_AFTER_S  # when polling the Location is worth it
    session.refresh(job)
    return job_out(job)


def _check_evaluation(
    session: Session, owner: str, model: Model, dataset: Dataset | None, body: JobCreate
) -> None:
    """Where fidelity will be measured must exist and fit: the eval dataset (a field of the spec,
    so an unknown id is a 422, not a 404), or a split that leaves calibration samples."""
    cal = body.spec.calibration
    if cal.eval_dataset_id:
        ev = find_owned(session, Dataset, cal.eval_dataset_id, owner)
        if ev is None:
            raise ProblemError(
                422, f"the eval dataset {cal.eval_dataset_id!r} does not exist", title="Invalid dataset"
            )
        try:
            check_names(ev.arrays, model.summary, body.spec.input_shapes)
        except BadNpz as e:
            raise ProblemError(
                422, f"the eval dataset does not fit the model: {e}", title="Invalid dataset"
            ) from e
    n = sample_count(dataset.arrays) if dataset is not None else None
    try:
        holdout_count(n, cal.eval_fraction, separate_eval=bool(cal.eval_dataset_id))
    except DataError as e:
        raise ProblemError(422, str(e), title="Invalid dataset") from e


@router.get(
    "",
    response_model=Page[JobOut],
    summary="List your jobs, newest first",
    description="Filters combine: `state`, `name` (exactly), and `tag` (repeatable: jobs having every "
    "tag given).",
    responses=problems(401, 403, 422),
)
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    state: Annotated[
        str | None, Query(pattern=r"^(queued|running|cancelling|succeeded|failed|cancelled)$")
    ] = None,
    name: Annotated[
        str | None, Query(min_length=1, max_length=100, pattern=NAME_PATTERN, description="the job's name")
    ] = None,
    # a plain array, not "array or null": no tag is an empty list, and the document says so simply
    tag: Annotated[
        list[Annotated[str, StringConstraints(pattern=TAG_PATTERN)]],
        Query(max_length=MAX_TAGS, description="a tag the jobs have; repeat it for jobs having all of them"),
    ] = [],  # noqa: B006 (FastAPI copies a parameter's default; never mutated)
) -> dict:
    stmt = sa.select(Job).where(Job.owner_id == owner)
    if state:
        stmt = stmt.where(Job.state == state)
    if name is not None:
        stmt = stmt.where(Job.name == name)
    for t in dict.fromkeys(tag):
        stmt = stmt.where(Job.id.in_(sa.select(JobTag.job_id).where(JobTag.tag == t)))
    items, next_cursor = paginate(session, stmt, Job, limit, cursor)
    return {"items": [job_out(j) for j in items], "next_cursor": next_cursor}


# The poll is the request clients send most (every `spa wait`, every open dashboard, every CI loop).
# On PostgreSQL its two statements (the key, the job) run on the event loop (app.core.db.aio: the
# thread-pool hop cost more than the rest of the poll); on SQLite in the thread pool, on a pooled
# connection in autocommit. Core, not the ORM, and the answer validated once (a returned model
# would be validated again by FastAPI). The columns are JobOut's: the report, the big one, is not read.
_POLL = sa.select(*[Job.__table__.c[name] for name in JobOut.model_fields]).where(
    Job.id == sa.bindparam("job_id"), Job.owner_id == sa.bindparam("owner")
)


def _poll_in_thread(request: Request, params: dict[str, str]) -> Any | None:
    with reading_connection(request) as conn:
        return conn.execute(_POLL, params).first()


@router.get("/{job_id}", response_model=JobOut, summary="One job", responses=problems(401, 403, 404, 422))
async def get_job(request: Request, owner: LoopOwnerDep, job_id: JobIdPath) -> Response:
    reader: AsyncReader | None = request.app.state.reader
    params = {"job_id": job_id, "owner": owner}
    if reader is not None:
        row = await reader.one(_POLL, params)
    else:
        row = await anyio.to_thread.run_sync(_poll_in_thread, request, params)
    if row is None:
        raise not_found("job")
    return Response(job_out(row).model_dump_json(), media_type="application/json")


@router.get(
    "/{job_id}/events",
    response_model=EventList,
    summary="The job's events in order (state, stage, progress, log)",
    responses=problems(401, 403, 404, 422),
)
def job_events(
    session: SessionDep,
    owner: OwnerDep,
    job_id: JobIdPath,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="only events with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventList:
    _owned_job(session, owner, job_id)
    rows = session.execute(
        sa.select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq)
        .limit(limit)
    ).scalars()
    items = [EventOut.model_validate(r) for r in rows]
    return EventList(items=items, next_after=items[-1].seq if items else after)


@router.post(
    "/{job_id}/cancel",
    response_model=CancelOut,
    status_code=202,
    summary="Cancel a queued or running job (best effort)",
    description="A queued job is cancelled at once and never runs; a running one becomes `cancelling` "
    "and stops at its next progress point. 409 when the job has already finished.",
    responses={
        200: {"model": CancelOut, "description": "already cancelling"},
        **problems(401, 403, 404, 409, 422),
    },
)
def cancel_job(session: SessionDep, owner: OwnerDep, job_id: JobIdPath, response: Response) -> CancelOut:
    _owned_job(session, owner, job_id)
    outcome = jobstate.request_cancel(session, job_id)
    session.commit()
    if not outcome.changed:
        if outcome.state == "cancelling":
            response.status_code = 200
        else:
            raise ProblemError(409, f"the job has already finished ({outcome.state})", state=outcome.state)
    return CancelOut(id=job_id, state=outcome.state)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a finished job",
    description="Its record, events and tags, and the stored artifacts no other job, model or dataset "
    "shares. 409 while the job is queued, running or cancelling: cancel it first.",
    responses={204: {"description": "deleted"}, **problems(401, 403, 404, 409, 422)},
)
def delete_job(session: SessionDep, store: StoreDep, owner: OwnerDep, job_id: JobIdPath) -> Response:
    _owned_job(session, owner, job_id)
    outcome = retention.delete_job(session, store, job_id)
    if outcome is None:  # deleted meanwhile by another request or the retention sweep
        raise not_found("job")
    if outcome != "deleted":
        raise ProblemError(409, f"the job is {outcome}; cancel it first", state=outcome)
    return Response(status_code=204)


_ARTIFACT_CONTENT = {media: {} for media in (ARTIFACT_DEFAULT_MEDIA, *ARTIFACT_MEDIA.values())}
_NOT_MODIFIED = {"description": "not modified: the If-None-Match ETag is the artifact's"}


# One function for both methods (HEAD answers GET's headers without the bytes).
@router.head(
    "/{job_id}/artifacts/{name}",
    summary="An artifact's headers (size, ETag, media type) without its bytes",
    response_class=Response,
    responses={
        200: {"description": "the headers a GET would answer with"},
        206: {"description": "the headers of the requested byte range"},
        304: _NOT_MODIFIED,
        **{s: {"description": HTTPStatus(s).phrase} for s in (401, 403, 404, 416, 422)},  # no body on HEAD
    },
)
@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact (pruned.onnx, report.json, ...); HEAD, ETag / If-None-Match and one "
    "byte Range are honoured",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": _ARTIFACT_CONTENT,
            "description": "the artifact's bytes: JSON for .json, HTML for .html, else octet-stream",
        },
        206: {"content": _ARTIFACT_CONTENT, "description": "the requested byte range (Content-Range says which)"},
        304: _NOT_MODIFIED,
        307: {"description": "S3 with SPA_S3_PRESIGN_TTL_S > 0: Location is a presigned URL of the bytes",
              "headers": {"Location": {"schema": {"type": "string"}, "description": "the presigned URL"}}},
        **problems(401, 403, 404, 416, 422),
    },
)
def download_artifact(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    owner: OwnerDep,
    job_id: JobIdPath,
    name: Annotated[str, Path(pattern=ARTIFACT_PATTERN)],
    redirect: Annotated[bool, Query(
        description="where the server has presigned S3 URLs (SPA_S3_PRESIGN_TTL_S): true answers a GET "
        "with a 307 to one, false streams the bytes through the API (a browser's fetch from another "
        "origin would need the bucket's CORS)")] = True,
) -> Response:
    job = _owned_job(session, owner, job_id)
    art = (job.artifacts or {}).get(name)
    if art is None:
        raise not_found("artifact")
    media = ARTIFACT_MEDIA.get(PurePosixPath(name).suffix, ARTIFACT_DEFAULT_MEDIA)
    etag, size = f'"{art["sha256"]}"', int(art["size"])
    # Artifacts never change (content-addressed): the ETag is the hash, a cache can keep them forever.
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable",
               "Content-Disposition": f'attachment; filename="{name}"'}  # fmt: skip
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    span = _byte_range(request.headers.get("range"), size) if request.headers.get("if-range", etag) == etag else None
    status, start, length = (206, span[0], span[1] - span[0] + 1) if span else (200, 0, size)
    headers["Content-Length"] = str(length)
    if span:
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    if redirect and (url := store.presigned_url(art["sha256"], name, media)) is not None:
        # the bucket serves the bytes (and the Range the client sends again); the API only decided
        # who may have them. A client drops its Authorization header on the way (another origin).
        return Response(status_code=307, headers={"Location": url, "ETag": etag, "Cache-Control": "no-store"})
    return StreamingResponse(
        store.iter_bytes(art["sha256"], start, length if span else None),
        status_code=status, media_type=media, headers=headers,
    )  # fmt: skip


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match holds this ETag, or "*" (weak tags compare by value)."""
    tags = {t.strip().removeprefix("W/") for t in (header or "").split(",") if t.strip()}
    return etag in tags or "*" in tags


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single ``bytes=`` range, None for no range or one this route does not do
    (several ranges, other units: the whole artifact, as RFC 9110 allows); 416 when unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    a = int(first)
    b = min(int(last), size - 1) if last else size - 1
    if a >= size or (last and int(last) < a):
        raise _unsatisfiable(size)
    return a, b


def _unsatisfiable(size: int) -> ProblemError:
    return ProblemError(416, f"the range is outside the artifact's {size} bytes",
                        headers={"Content-Range": f"bytes */{size}"})
