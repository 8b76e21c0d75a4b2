"""A cap on every request body but the multipart uploads (those are bounded by ``app.api.uploads``).

The only JSON body is a job (``model_id`` + spec): it is stored with the job and returned in every
job list, so a body above ``max_spec_bytes`` (+ slack for the fields around the spec) is refused
with 413 before anything parses it, by its Content-Length or, when chunked, by the bytes that came.
Plain ASGI: the body is read here (at most the cap + one chunk) and replayed to the app.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import problem_response

UPLOAD_PATHS = frozenset({"/v1/models", "/v1/datasets"})
SPEC_SLACK = 4 * 1024  # model_id, dataset_id and the JSON around the spec


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)  # before reading a byte
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, for streaming responses
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            Request(scope),
            413,
            title="Request too large",
            detail=f"the request body is larger than the limit of {self.max_bytes} bytes",
        )
        await response(scope, receive, send)
