"""/problems and /problems/{kind}: the pages that the ``type`` of every error body points at
(RFC 9457: a problem type URI should lead a person to documentation). No key needed: whoever got
the error reads what it means. The text is app.api.errors.KINDS, as in docs/errors.md."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.errors import KINDS, PROBLEMS_PATH, ProblemKind, not_found, problems
from app.api.routes import AllowRoute

router = APIRouter(prefix=PROBLEMS_PATH, tags=["errors"], route_class=AllowRoute)

_STYLE = "body{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em;line-height:1.5}"


def _code(text: str) -> str:
    """The kinds' text marks code with backticks (it is also the Markdown of docs/errors.md)."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _section(root: str, kind: ProblemKind) -> str:
    uri = f"{root}{PROBLEMS_PATH}/{kind.slug}"
    return (
        f'<h2 id="{kind.slug}"><a href="{escape(uri)}">{escape(kind.slug)}</a></h2>'
        f"<p><code>type: {escape(uri)}</code> · status {kind.status} · title “{escape(kind.title)}”</p>"
        f"<p><b>When:</b> {_code(kind.when)}</p><p><b>What to do:</b> {_code(kind.action)}</p>"
    )


@router.get("", summary="The kinds of error the API answers (HTML)", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    intro = (
        "<h1>SPA service: errors</h1><p>Every error is <code>application/problem+json</code> (RFC 9457); "
        "its <code>type</code> names one of these kinds, <code>detail</code> says what happened.</p>"
    )
    return _page("SPA service: errors", intro + "".join(_section(root, k) for k in KINDS.values()))


@router.get(
    "/{kind}",
    summary="What one kind of error means and what to do about it (HTML)",
    response_class=HTMLResponse,
    responses=problems(404),
)
def kind_page(request: Request, kind: str) -> HTMLResponse:
    found = KINDS.get(kind)
    if found is None:
        raise not_found("problem type")
    root = request.scope.get("root_path", "")
    back = f'<p><a href="{escape(root + PROBLEMS_PATH)}">All kinds of error</a></p>'
    return _page(f"SPA service: {kind}", _section(root, found) + back)
