"""/v1/datasets: calibration / evaluation data as .npz (arrays named after model inputs): upload, list,
get, delete."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, SessionDep, SettingsDep, StoreDep
from app.api.errors import ProblemError, not_found, problems
from app.api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, paginate
from app.api.routes import AllowRoute, find_owned, id_path
from app.api.schemas import DatasetOut, Page
from app.api.uploads import Upload, commit_new, find_or_publish, multipart_openapi, receive_upload
from app.core import retention
from app.core.config import Settings
from app.core.db.models import Dataset, Model
from app.core.npz import BadNpz, check_names, read_npz_header
from app.core.storage import BlobStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=AllowRoute)
DatasetIdPath = id_path("dataset")


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload calibration / evaluation data (.npz)",
    description="Arrays named after the model's inputs, plus an optional `labels`. Give `model_id` "
    "(a form field before the file) to have the names checked against that model now.",
    responses={
        200: {"model": DatasetOut, "description": "the same bytes were uploaded before"},
        **problems(400, 401, 403, 404, 413, 415, 422),
    },
    openapi_extra=multipart_openapi("the .npz file", {"model_id": {"type": "string"}}),
)
async def upload_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    owner: OwnerDep,
) -> Dataset:
    upload = await receive_upload(request, store, settings)
    return await run_in_threadpool(_register_dataset, upload, response, settings, session, store, owner)


def _register_dataset(
    upload: Upload, response: Response, settings: Settings, session: Session, store: BlobStore, owner: str
) -> Dataset:
    try:
        if not upload.filename.lower().endswith(".npz"):
            raise ProblemError(415, f"unsupported dataset file {upload.filename!r}: send an .npz")
        try:
            arrays = read_npz_header(
                upload.staged.path, max_unpacked=settings.max_unpacked_bytes, max_ratio=settings.max_zip_ratio
            )
            if model_id := upload.fields.get("model_id"):
                model = find_owned(session, Model, model_id, owner)
                if model is None:
                    raise not_found("model")
                check_names(arrays, model.summary)
        except BadNpz as e:
            raise ProblemError(422, str(e), title="Invalid dataset") from e
        if (existing := find_or_publish(session, Dataset, owner, upload, store, response)) is not None:
            return existing
    finally:
        upload.staged.discard()
    dataset = Dataset(
        owner_id=owner, sha256=upload.sha256, size=upload.size, filename=upload.filename[:255], arrays=arrays
    )
    dataset, created = commit_new(session, dataset, response)
    if not created:
        return dataset
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return dataset


@router.get(
    "", response_model=Page[DatasetOut], summary="List your datasets", responses=problems(401, 403, 422)
)
def list_datasets(
    session: SessionDep,
    owner: OwnerDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict:
    items, next_cursor = paginate(
        session, sa.select(Dataset).where(Dataset.owner_id == owner), Dataset, limit, cursor
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/{dataset_id}", response_model=DatasetOut, summary="One dataset", responses=problems(401, 403, 404, 422)
)
def get_dataset(session: SessionDep, owner: OwnerDep, dataset_id: DatasetIdPath) -> Dataset:
    dataset = find_owned(session, Dataset, dataset_id, owner)
    if dataset is None:
        raise not_found("dataset")
    return dataset


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a dataset",
    description="The stored file goes too when no other model or dataset has the same bytes. 409 while "
    "a job refers to the dataset: cancel a queued or running one (as its evaluation data too), delete a "
    "finished one first.",
    responses={204: {"description": "deleted"}, **problems(401, 403, 404, 409, 422)},
)
def delete_dataset(
    session: SessionDep, store: StoreDep, owner: OwnerDep, dataset_id: DatasetIdPath
) -> Response:
    get_dataset(session, owner, dataset_id)
    if (why := retention.delete_upload(session, store, Dataset, dataset_id)) is not None:
        raise ProblemError(409, why)
    return Response(status_code=204)
