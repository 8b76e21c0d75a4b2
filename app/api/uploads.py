"""Streaming multipart uploads: the file part goes chunk by chunk into a hashed staging file with a
hard size limit, so a 2 GiB model never sits in memory and an oversized one is cut off (413) as
soon as it passes the limit, with the partial file removed.

Everything else in the form is bounded too (413 as soon as a bound is passed, the rest unread):
the non-file fields (count, bytes), the parts (skipped file parts count), the part headers, and
the whole body, with or without Content-Length."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from fastapi import Request, Response
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.errors import ProblemError
from app.core.config import Settings
from app.core.storage import BlobStore, StagedFile, TooLarge

MAX_FIELD_BYTES = 64 * 1024  # one non-file form field
MAX_FORM_BYTES = 256 * 1024  # all non-file field values and all part headers together
EXTRA_PARTS = 4  # parts allowed beyond max_form_fields: the file, a few ignored file parts
BOUNDARY_SLACK = 64 * 1024  # boundary lines, preamble and epilogue
FEED_BYTES = 1024 * 1024  # body bytes handed to the parser's thread at once

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FormLimits:
    file_bytes: int  # the file part
    fields: int  # non-file fields
    parts: int  # every part, skipped file parts included
    form_bytes: int = MAX_FORM_BYTES

    @classmethod
    def of(cls, settings: Settings) -> FormLimits:
        fields = settings.max_form_fields
        return cls(settings.max_upload_bytes, fields, fields + EXTRA_PARTS)

    @property
    def body_bytes(self) -> int:
        """The most a valid request body can hold: the file, the form's own bytes, boundaries."""
        return self.file_bytes + self.form_bytes + BOUNDARY_SLACK


@dataclass
class Upload:
    staged: StagedFile
    filename: str
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.staged.size


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"upload larger than the limit of {limit} bytes", title="Upload too large")


def _form_too_large(detail: str) -> ProblemError:
    return ProblemError(413, detail, title="Form too large")


async def receive_upload(
    request: Request, store: BlobStore, settings: Settings | FormLimits, file_field: str = "file"
) -> Upload:
    """Parse a multipart/form-data body with one file part named ``file_field``."""
    lim = settings if isinstance(settings, FormLimits) else FormLimits.of(settings)
    limit = lim.file_bytes
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ProblemError(415, "send the file as multipart/form-data with a part named 'file'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > lim.body_bytes:
        raise _too_large(limit)  # refuse before reading a byte

    staged: StagedFile | None = None
    state: dict[str, Any] = {"headers": {}, "hname": b"", "hval": b"", "part": None, "name": None, "buf": b""}
    fields: dict[str, str] = {}
    filename = ""
    errors: list[ProblemError] = []
    count = {"parts": 0, "fields": 0, "form_bytes": 0}

    def spend_form_bytes(n: int) -> None:
        count["form_bytes"] += n
        if count["form_bytes"] > lim.form_bytes:
            raise _form_too_large(f"the form's fields and part headers exceed {lim.form_bytes} bytes")

    def on_part_begin() -> None:
        count["parts"] += 1
        if count["parts"] > lim.parts:
            raise _form_too_large(f"the form has more than {lim.parts} parts")
        state["headers"] = {}
        state["part"] = None
        state["buf"] = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        spend_form_bytes(end - start)
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        spend_form_bytes(end - start)
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal staged, filename
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disp and name == file_field:
            if staged is not None:
                errors.append(ProblemError(422, f"send exactly one '{file_field}' part"))
                state["part"] = "skip"
                return
            filename = disp[b"filename"].decode("utf-8", "replace")
            if _CONTROL.search(filename):
                # RFC 6266: a quoted file name holds no control characters (PostgreSQL refuses a NUL
                # in a text column: that was a 500)
                detail = "malformed multipart body: control characters in the file name"
                errors.append(ProblemError(400, detail))
            staged = store.stage(limit)
            state["part"] = "file"
        elif b"filename" in disp:
            state["part"] = "skip"  # unknown file parts are ignored, not stored
        else:
            count["fields"] += 1
            if count["fields"] > lim.fields:
                raise _form_too_large(f"the form has more than {lim.fields} fields besides the file")
            state["part"] = "field"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["part"] == "file":
            assert staged is not None
            staged.write(data[start:end])  # raises TooLarge
        elif state["part"] == "field":
            spend_form_bytes(end - start)
            state["buf"] += data[start:end]
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise _form_too_large(f"form field {state['name']!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["part"] == "field":
            fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )

    def feed(chunks: list[bytes]) -> None:
        for chunk in chunks:
            parser.write(chunk)

    received = 0
    batch: list[bytes] = []
    batched = 0
    try:
        # Parsing, hashing and writing run in the thread pool, a batch at a time: on the event loop
        # they held up every other request of the process (the median poll took 15 ms beside 250
        # MB/s of uploads, 8 ms since; bench/api_load.py), and hashing and writing release the GIL,
        # so they run beside the loop. One hop per FEED_BYTES, not per chunk.
        async for chunk in request.stream():
            received += len(chunk)
            if received > lim.body_bytes:  # chunked bodies announce no length: count what comes
                raise _too_large(limit)
            batch.append(chunk)
            batched += len(chunk)
            if batched >= FEED_BYTES:
                await anyio.to_thread.run_sync(feed, batch)
                batch, batched = [], 0
        if batch:
            await anyio.to_thread.run_sync(feed, batch)
        parser.finalize()
        if errors:
            raise errors[0]
        if staged is None:
            raise ProblemError(422, f"no file part named '{file_field}' in the form")
        sha = staged.finish()
    except TooLarge:
        if staged is not None:
            staged.discard()
        raise _too_large(limit) from None
    except ProblemError:
        if staged is not None:
            staged.discard()
        raise
    except Exception as e:  # malformed multipart body
        if staged is not None:
            staged.discard()
        raise ProblemError(400, f"malformed multipart body: {e}") from e
    return Upload(staged=staged, filename=filename, sha256=sha, fields=fields)


def multipart_openapi(description: str, extra_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """requestBody for routes that parse the stream themselves (FastAPI cannot infer it)."""
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": description}}
    props.update(extra_fields or {})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": props}
                }
            },
        }
    }


def find_or_publish(
    session: Any, table: Any, owner: str, upload: Upload, store: BlobStore, response: Response
) -> Any | None:
    """The owner's existing row for the same bytes (dedup per owner; the answer becomes 200), or None
    once the bytes are published to the store. Bytes go before the row: a row always points at a
    stored blob."""
    import sqlalchemy as sa

    existing = session.execute(
        sa.select(table).where(table.owner_id == owner, table.sha256 == upload.sha256)
    ).scalar_one_or_none()
    if existing is None:
        store.put_file(upload.staged.path, upload.sha256)
    else:
        response.status_code = 200
    return existing


def commit_new(session: Any, row: Any, response: Response) -> tuple[Any, bool]:
    """Commit a new upload row: (row, True); or, when the same bytes raced in from a parallel upload
    of this owner, (that row, False) and the answer becomes 200."""
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError

    session.add(row)
    try:
        session.commit()
        return row, True
    except IntegrityError:
        session.rollback()
        response.status_code = 200
        table = type(row)
        return session.execute(
            sa.select(table).where(table.owner_id == row.owner_id, table.sha256 == row.sha256)
        ).scalar_one(), False
