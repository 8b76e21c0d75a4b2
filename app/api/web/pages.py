"""The dashboard: one page that lists models and jobs through the public API (from the browser,
with the key the user pastes in; nothing server-side bypasses the API's auth)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "index.html", {"auth_disabled": request.app.state.settings.auth_disabled}
    )


@router.get("/static/dashboard.js")
def dashboard_js() -> FileResponse:
    return FileResponse(HERE / "static" / "dashboard.js", media_type="text/javascript")
