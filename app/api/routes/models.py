"""/v1/models: upload (streamed to the blob store), list, get, groups, delete.

The API never parses a model: it checks the size and cheap magic bytes (and a zip's directory:
member names, declared sizes, compression ratio), then a worker validates it (state
validating -> ready | invalid)."""

from __future__ import annotations

import zipfile
from pathlib import PurePosixPath
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, SenderDep, SessionDep, SettingsDep, StoreDep
from app.api.errors import ProblemError, not_found, problems
from app.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, paginate
from app.api.routes import AllowRoute, find_owned, id_path
from app.api.schemas import GroupsOut, ModelOut, Page
from app.api.uploads import Upload, commit_new, find_or_publish, multipart_openapi, receive_upload
from app.core import retention
from app.core.blobs import release_if_unused
from app.core.config import Settings
from app.core.db.models import Model
from app.core.queue import send_validate_model
from app.core.storage import BlobStore, StagedFile
from pruning_core.frontends.zipsafe import UnsafeZip, check_zip

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=AllowRoute)
FORMATS = {".onnx": "onnx", ".zip": "zip", ".pt2": "pt2"}
# An ONNX file is a serialized ModelProto: its first byte is the tag of one of its fields
# (ir_version=1 .. opset_import=8, metadata_props=14, training_info=20, functions=25). A text file,
# an image or an archive starts otherwise; anything subtler is for the worker's full check.
ONNX_FIRST_BYTES = frozenset({0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA})
ZIP_MAGIC = b"PK\x03\x04"


def _format_of(filename: str) -> str:
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ProblemError(
            415, f"unsupported model file {filename!r}: send .onnx, .zip (ONNX + external data) or .pt2"
        )
    return fmt


def sniff_model(staged: StagedFile, fmt: str, max_unpacked: int, max_ratio: float) -> None:
    """Reject what is certainly not a model of the announced format, or a zip bomb (422)."""
    head = staged.head
    if staged.size == 0:
        raise ProblemError(422, "the uploaded file is empty")
    if fmt == "onnx":
        if head[0] not in ONNX_FIRST_BYTES or head.startswith(ZIP_MAGIC):
            raise ProblemError(422, "not an ONNX model: the file does not start like a serialized ModelProto")
        return
    if not head.startswith(ZIP_MAGIC):
        raise ProblemError(422, f"not a .{fmt} archive: the file is not a zip")
    try:
        with zipfile.ZipFile(staged.path) as zf:
            files = check_zip(zf, max_unpacked=max_unpacked, max_ratio=max_ratio, packed=staged.size)
    except zipfile.BadZipFile as e:
        raise ProblemError(422, f"not a valid zip archive: {e}") from e
    except UnsafeZip as e:
        raise ProblemError(422, str(e), title="Unsafe archive") from e
    if fmt == "zip" and not any(i.filename.endswith(".onnx") for i in files):
        raise ProblemError(422, "the zip holds no .onnx file")


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a model (.onnx, .zip with external data, or .pt2)",
    responses={
        200: {"model": ModelOut, "description": "the same bytes were uploaded before: the existing model"},
        **problems(400, 401, 403, 413, 415, 422, 503),
    },
    openapi_extra=multipart_openapi("the model file"),
)
async def upload_model(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    sender: SenderDep,
    owner: OwnerDep,
) -> Model:
    upload = await receive_upload(request, store, settings)
    # Hashing is done; what is left (zip directory, S3 upload, DB) blocks: keep it off the event loop.
    return await run_in_threadpool(_register_model, upload, response, settings, session, store, sender, owner)


def _register_model(
    upload: Upload,
    response: Response,
    settings: Settings,
    session: Session,
    store: BlobStore,
    sender: Any,
    owner: str,
) -> Model:
    try:
        fmt = _format_of(upload.filename)
        if fmt == "pt2" and not settings.pytorch_uploads_allowed:
            raise ProblemError(403, "PyTorch (.pt2) uploads are disabled on this server (SPA_ALLOW_PYTORCH_UPLOADS)")
        sniff_model(upload.staged, fmt, settings.max_unpacked_bytes, settings.max_zip_ratio)
        if (existing := find_or_publish(session, Model, owner, upload, store, response)) is not None:
            return existing
    finally:
        upload.staged.discard()
    model = Model(
        owner_id=owner,
        sha256=upload.sha256,
        size=upload.size,
        filename=upload.filename[:255] or "model",
        format=fmt,
    )
    model, created = commit_new(session, model, response)
    if not created:
        return model
    try:
        send_validate_model(sender, model.id, settings.queue_cpu)
    except Exception as e:
        # Nothing half-written: without a validation task the row would stay "validating" forever.
        session.delete(model)
        session.commit()
        release_if_unused(session, store, upload.sha256)
        raise ProblemError(503, "the task broker is unavailable; try again") from e
    response.headers["Location"] = f"/v1/models/{model.id}"
    return model


@router.get(
    "",
    response_model=Page[ModelOut],
    summary="List your models, newest first",
    responses=problems(401, 403, 422),
)
def list_models(
    session: SessionDep,
    owner: OwnerDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    state: Annotated[str | None, Query(pattern=r"^(validating|ready|invalid)$")] = None,
) -> dict:
    stmt = sa.select(Model).where(Model.owner_id == owner)
    if state:
        stmt = stmt.where(Model.state == state)
    items, next_cursor = paginate(session, stmt, Model, limit, cursor)
    return {"items": items, "next_cursor": next_cursor}


def get_owned_model(session: SessionDep, owner: str, model_id: str) -> Model:
    model = find_owned(session, Model, model_id, owner)
    if model is None:
        raise not_found("model")
    return model


ModelIdPath = id_path("model")


@router.get(
    "/{model_id}", response_model=ModelOut, summary="One model", responses=problems(401, 403, 404, 422)
)
def get_model(session: SessionDep, owner: OwnerDep, model_id: ModelIdPath) -> Model:
    return get_owned_model(session, owner, model_id)


@router.delete(
    "/{model_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a model",
    description="The stored file goes too when no other model or dataset has the same bytes. 409 while "
    "a job refers to the model: cancel a queued or running one, delete a finished one first.",
    responses={204: {"description": "deleted"}, **problems(401, 403, 404, 409, 422)},
)
def delete_model(session: SessionDep, store: StoreDep, owner: OwnerDep, model_id: ModelIdPath) -> Response:
    get_owned_model(session, owner, model_id)
    if (why := retention.delete_upload(session, store, Model, model_id)) is not None:
        raise ProblemError(409, why)
    return Response(status_code=204)


@router.get(
    "/{model_id}/groups",
    response_model=GroupsOut,
    summary="The coupled channel groups found in the model",
    responses=problems(401, 403, 404, 409, 422),
)
def get_groups(session: SessionDep, owner: OwnerDep, model_id: ModelIdPath) -> GroupsOut:
    model = get_owned_model(session, owner, model_id)
    if model.state == "validating":
        raise ProblemError(
            409, "the model is still being analysed; retry shortly", headers={"Retry-After": "2"}
        )
    if model.state == "invalid":
        raise ProblemError(409, f"the model is invalid: {model.reason}")
    return GroupsOut(model_id=model.id, state=model.state, groups=model.groups or [])
