"""The dashboard: a job list, a job page, a model page, and upload / submit forms, all served as
static shells whose scripts call the public API from the browser with the key the user pastes in.
Nothing server-side bypasses the API's auth: these routes hold no data, so they need no key.

No build step and no CDN: plain ES2020 files under ``static/``, SVG charts drawn by the scripts.
Every page carries a Content-Security-Policy that admits only this origin's scripts and styles,
so a name from a user's model can never run as code even if a script got escaping wrong."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from app.api.routes import canonical_id
from pruning_core.criteria_names import CRITERION_INFO

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

# Scripts and styles from this origin only; blob: for the downloads made under API-key auth.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
MEDIA = {".js": "text/javascript", ".css": "text/css"}
ASSETS = {p.name: p for p in STATIC.iterdir() if p.suffix in MEDIA}  # fixed at start: no path from a request


def _page(request: Request, template: str, status: int = 200, **context: object) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, template, {"auth_disabled": request.app.state.settings.auth_disabled, **context},
        status_code=status,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    criteria = [(name, info.doc) for name, info in CRITERION_INFO.items()]
    return _page(request, "index.html", page="index", criteria=criteria)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    if (jid := canonical_id(job_id)) is None:
        return _page(request, "missing.html", 404, page="missing", what="job", value=job_id[:80])
    return _page(request, "job.html", page="job", job_id=jid)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: str) -> HTMLResponse:
    if (mid := canonical_id(model_id)) is None:
        return _page(request, "missing.html", 404, page="missing", what="model", value=model_id[:80])
    return _page(request, "model.html", page="model", model_id=mid)


@router.get("/static/{name}", response_model=None)
def asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        return HTMLResponse("not found", status_code=404)
    return FileResponse(path, media_type=MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})
