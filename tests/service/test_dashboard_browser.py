"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, Selenium from
PyPI) against a real uvicorn server and a live Celery worker, with API-key auth on.

What a person does: paste a key, upload a model with the form, submit a job with the form, watch
the job page until it succeeds, read the per-layer chart and the figures, download an artifact
(which must carry the key), cancel a slow job, read why a model is invalid, and see the AutoBot
loss curve. Screenshots of each page are kept in SPA_TEST_ARTIFACTS (default .test-artifacts/).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import ROOT, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("SPA_TEST_ARTIFACTS", ROOT / ".test-artifacts")) / "browser"

# The dashboard does not depend on the database: one backend (the embedded default) is enough.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install "
                    "chromium chromium-driver (make test installs them where it can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, name: str) -> None:
    """The whole page, not just the window: the window grows to the page's height for the shot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 140, 1000), 8000))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def js_errors(driver: Any) -> list[str]:
    """Console errors of the page (a CSP violation or an exception in a script lands here)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def until(driver: Any, cond: Callable[[Any], Any], timeout: float = 90, what: str = "the page") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(cond, message=f"waiting for {what}")


def use_key(driver: Any, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#keyform button").click()
    until(driver, lambda d: "no jobs yet" in text_of(d, "#jobs") or d.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]"),
          20, "the job list with the key")
    js_errors(driver)  # drain: the load before the key was set logged its 401s


def api(base: str, key: str, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kw)
    assert r.status_code < 400, (r.status_code, r.text[:300])
    return r.json()


@pytest.fixture
def tenant(new_key: Callable[[str], dict[str, str]]) -> str:
    return new_key("browser")["Authorization"].split(" ", 1)[1]


def test_upload_submit_watch_and_download(browser: Any, live_server: str, tenant: str,
                                          zoo: dict[str, Path], downloads: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d, base = browser, live_server
    use_key(d, base, tenant)

    # upload with the form; the model shows up in the list and becomes ready
    d.find_element(By.ID, "modelfile").send_keys(str(zoo["tiny"]))
    d.find_element(By.CSS_SELECTOR, "#uploadform button").click()
    until(d, lambda d: "uploaded as" in text_of(d, "#uploadstate"), 30, "the upload")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#s_model option"), 60, "the model to be ready")
    row = d.find_element(By.CSS_SELECTOR, "#models tr[data-model]")
    assert "tiny.onnx" in row.text and "ready" in row.text

    # submit with the form: −30 % FLOPs, l1; the page moves to the job's own page
    Select(d.find_element(By.ID, "s_kind")).select_by_value("flops")
    frac = d.find_element(By.ID, "s_fraction")
    frac.clear()
    frac.send_keys("0.3")
    Select(d.find_element(By.ID, "s_criterion")).select_by_value("l1")
    d.find_element(By.ID, "s_name").send_keys("from the browser")
    d.find_element(By.CSS_SELECTOR, "#submitform button").click()
    until(d, lambda d: "/jobs/" in d.current_url, 20, "the job page")
    job_id = d.current_url.rsplit("/", 1)[1]
    until(d, lambda d: text_of(d, "#state") == "succeeded", 120, "the job to succeed")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#layers svg g[data-layer]"), 20, "the layer chart")

    # the figures are report.json's, the charts have a row per group and per layer
    report = api(base, tenant, "GET", f"/v1/jobs/{job_id}/artifacts/report.json")
    figures = text_of(d, "#figures")
    assert f"{report['macs']['before']:,}" in figures and f"{report['macs']['after']:,}" in figures
    assert "passed" in figures and "× faster" in figures
    assert len(d.find_elements(By.CSS_SELECTOR, "#groups svg g[data-group]")) == len(report["groups"])
    assert len(d.find_elements(By.CSS_SELECTOR, "#layers svg g[data-layer]")) == len(report["layers"])
    assert "null" not in text_of(d, "#figurescard")
    widths = [float(r.get_attribute("width")) for r in d.find_elements(By.CSS_SELECTOR, "#groups svg rect.gone")]
    assert any(w > 0 for w in widths), "no group drawn as losing channels"
    assert "stage" in text_of(d, "#events") and len(d.find_elements(By.CSS_SELECTOR, "#events tr")) >= 3
    assert d.find_element(By.ID, "cancel").is_displayed() is False
    shot(d, "job-succeeded")

    # a download under auth: the click fetches with the key (a plain link would get a 401)
    d.find_element(By.CSS_SELECTOR, 'a[data-artifact="report.json"]').click()
    target = downloads / "report.json"
    wait_for(lambda: target.exists() and target.stat().st_size > 0, 20, what="the downloaded report.json")
    assert json.loads(target.read_text())["macs"] == report["macs"]
    assert not js_errors(d), js_errors(d)

    # report.html, downloaded the same way, opens from disk with nothing to fetch
    d.find_element(By.CSS_SELECTOR, 'a[data-artifact="report.html"]').click()
    page = downloads / "report.html"
    wait_for(lambda: page.exists() and page.stat().st_size > 0, 20, what="the downloaded report.html")
    d.get(page.as_uri())
    assert "Summary" in text_of(d, "body") and f"{report['macs']['after']:,}" in text_of(d, "body")
    fetched = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched == [], fetched  # no script, style, font or image from anywhere
    shot(d, "report-html")

    # back on the list: the job is there with its name and figures, linked
    d.get(base + "/")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]'), 20, "the job row")
    job_row = text_of(d, f'#jobs tr[data-job="{job_id}"]')
    assert "from the browser" in job_row and "succeeded" in job_row and "×" in job_row
    shot(d, "dashboard")
    assert not js_errors(d), js_errors(d)


def test_model_page_failure_reasons_and_cancel(browser: Any, live_server: str, tenant: str,
                                               zoo: dict[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    d, base = browser, live_server
    use_key(d, base, tenant)

    # an invalid model says why, on the list and on its page; a hostile file name stays text
    hostile = tmp_path / "<img src=x onerror=alert(1)>.onnx"
    hostile.write_bytes(zoo["truncated"].read_bytes())
    with hostile.open("rb") as fh:
        bad = api(base, tenant, "POST", "/v1/models", files={"file": (hostile.name, fh)})
    d.get(f"{base}/models/{bad['id']}")
    until(d, lambda d: text_of(d, "#state") == "invalid", 60, "the model to be found invalid")
    assert d.find_element(By.ID, "failure").is_displayed() and len(text_of(d, "#failure")) > 10
    assert "<img src=x" in text_of(d, "#modelline") and not d.find_elements(By.CSS_SELECTOR, "main img")
    shot(d, "model-invalid")

    # a ready model lists its groups, the fixed ones with their reason
    with zoo["tiny"].open("rb") as fh:
        good = api(base, tenant, "POST", "/v1/models", files={"file": ("tiny.onnx", fh)})
    d.get(f"{base}/models/{good['id']}")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups tr[data-group]"), 60, "the groups")
    groups = api(base, tenant, "GET", f"/v1/models/{good['id']}/groups")["groups"]
    assert len(d.find_elements(By.CSS_SELECTOR, "#groups tr[data-group]")) == len(groups)
    fixed = [g for g in groups if not g["prunable"]]
    if fixed:
        assert fixed[0]["reasons"][0] in text_of(d, "#groups")
    assert "prunable" in text_of(d, "#summary")
    shot(d, "model-ready")

    # a job that cannot reach its target fails with a sentence, shown on its page and in the list
    failing = api(base, tenant, "POST", "/v1/jobs", json={
        "model_id": good["id"], "spec": {"target": {"flops": 0.5}, "max_group_ratio": 0.01, "measure": False}})
    d.get(f"{base}/jobs/{failing['id']}")
    until(d, lambda d: text_of(d, "#state") in ("failed", "succeeded"), 120, "the job to end")
    job = api(base, tenant, "GET", f"/v1/jobs/{failing['id']}")
    assert job["state"] == "failed", job
    assert job["error"] in text_of(d, "#failure")
    d.get(base + "/")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job="{failing["id"]}"]'), 20, "the row")
    assert job["error"][:40] in text_of(d, f'#jobs tr[data-job="{failing["id"]}"] td.why')

    # cancel from the job page while the slow model is being pruned
    with zoo["slow"].open("rb") as fh:
        slow = api(base, tenant, "POST", "/v1/models", files={"file": ("slow.onnx", fh)})
    wait_for(lambda: api(base, tenant, "GET", f"/v1/models/{slow['id']}")["state"] == "ready", 60, what="slow model")
    run = api(base, tenant, "POST", "/v1/jobs", json={"model_id": slow["id"], "spec": {"target": {"flops": 0.3}}})
    d.get(f"{base}/jobs/{run['id']}")
    until(d, lambda d: d.find_element(By.ID, "cancel").is_displayed(), 30, "the cancel button")
    d.find_element(By.ID, "cancel").click()
    until(d, lambda d: text_of(d, "#state") in ("cancelled", "cancelling"), 60, "the cancel")
    until(d, lambda d: text_of(d, "#state") == "cancelled", 90, "the job to stop")
    assert "cancel requested" in text_of(d, "#cancelstate")
    shot(d, "job-cancelled")
    assert not js_errors(d), js_errors(d)


def test_autobot_loss_curve(browser: Any, live_server: str, tenant: str, zoo: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    d, base = browser, live_server
    use_key(d, base, tenant)
    with zoo["tiny"].open("rb") as fh:
        m = api(base, tenant, "POST", "/v1/models", files={"file": ("tiny.onnx", fh)})
    wait_for(lambda: api(base, tenant, "GET", f"/v1/models/{m['id']}")["state"] == "ready", 60, what="model")
    job = api(base, tenant, "POST", "/v1/jobs", json={
        "model_id": m["id"], "spec": {"target": {"flops": 0.3}, "criterion": "autobot",
                                      "autobot": {"steps": 300, "batch_size": 8}, "measure": False}})
    d.get(f"{base}/jobs/{job['id']}")
    until(d, lambda d: text_of(d, "#state") in ("succeeded", "failed"), 180, "the AutoBot job to end")
    assert text_of(d, "#state") == "succeeded", text_of(d, "#failure")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#loss svg polyline"), 20, "the loss curve")
    points = int(d.find_element(By.CSS_SELECTOR, "#loss svg").get_attribute("data-points"))
    logged = [e for e in api(base, tenant, "GET", f"/v1/jobs/{job['id']}/events?limit=1000")["items"]
              if (e["message"] or "").startswith("autobot step")]
    assert points == len(logged) >= 2
    assert logged[-1]["message"].startswith("autobot step 300/300")  # the last step is never dropped
    assert text_of(d, "#steps") == "step 300 of 300"
    shot(d, "job-autobot")
    assert not js_errors(d), js_errors(d)


def test_without_a_key_the_page_says_what_to_do(browser: Any, live_server: str) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(live_server + "/")
    d.execute_script("localStorage.removeItem('spaKey')")
    d.refresh()
    until(d, lambda d: d.find_element(By.ID, "notice").is_displayed(), 20, "the notice")
    assert "paste an API key" in text_of(d, "#notice")
    # a page for an id that cannot exist says so instead of polling an API error
    d.get(live_server + "/jobs/not-an-id")
    assert "not a job id" in text_of(d, "main")
    time.sleep(0.2)
