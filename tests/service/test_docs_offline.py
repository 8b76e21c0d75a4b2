"""/docs and /redoc work without internet: every script, stylesheet and icon they load comes from the
app itself (the fastapi-offline package's files), none from a CDN."""

from __future__ import annotations

import re
from typing import Any

import pytest

# src= and href= of the page's tags
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(api: Any, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # no absolute URL at all: no CDN script, no Google font, no remote favicon
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html), html
    urls = ASSET.findall(html)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, html  # the page is not an empty shell
    if page == "/docs":
        assert any(u.endswith(".css") for u in urls), html
        # Swagger UI's validator badge would be an image from validator.swagger.io
        assert '"validatorUrl": null' in html
    for url in urls:
        asset = api.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        ctype = asset.headers["content-type"]
        if url.endswith(".js"):
            assert ctype.startswith("text/javascript") and len(asset.content) > 100_000, (url, ctype)
        elif url.endswith(".css"):
            assert ctype.startswith("text/css") and len(asset.content) > 10_000, (url, ctype)
        else:
            assert ctype.startswith("image/"), (url, ctype)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_read_the_openapi_document(api: Any, page: str) -> None:
    html = api.get(page).text
    m = re.search(r"""url:\s*'([^']+)'|spec-url="([^"]+)\"""", html)
    assert m, html
    spec = api.get(m.group(1) or m.group(2))  # as the page's script fetches it: no query, no key
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")
    assert "/v1/jobs" in spec.json()["paths"]
