"""The audit review page in a real browser (headless Chromium driven by Playwright)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest

from orthanc_hardening.commands.posture import load_orthanc_configuration
from tests.support.dicom import make_series
from tests.support.server import OrthancServer

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review-ui.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(start_orthanc_module) -> OrthancServer:
    return start_orthanc_module()


@pytest.fixture(scope="module")
def trail(server: OrthancServer) -> dict[str, str]:
    """A series with a read by "user" and an upload by "admin"."""
    series = make_series(2, patient_id="UI-PATIENT")
    answers = [server.upload(item) for item in series]
    instance = answers[0]["ID"]
    assert server.get(f"/instances/{instance}/file", user="user").status_code == 200
    info = server.get(f"/series/{answers[0]['ParentSeries']}").json()
    return {"series": answers[0]["ParentSeries"], "series_uid": info["MainDicomTags"]["SeriesInstanceUID"],
            "instance": instance}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("chromium is missing: run `make deps`")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield instance
        finally:
            instance.close()


def context_for(browser, server: OrthancServer, user: str):
    return browser.new_context(http_credentials={"username": user, "password": server.credentials[user]},
                               ignore_https_errors=True, accept_downloads=True,
                               # The page forbids eval (CSP); Playwright's waits evaluate strings.
                               bypass_csp=True, viewport={"width": 1400, "height": 900})


def rows(page) -> list[dict[str, str]]:
    page.wait_for_selector("#timeline tbody tr.event")
    return page.eval_on_selector_all(
        "#timeline tbody tr.event",
        "trs => trs.map(tr => ({who: tr.querySelector('td.who').textContent,"
        " detail: tr.querySelector('td.detail').textContent, text: tr.textContent}))")


def test_auditor_sees_the_series_trail_filters_and_exports_csv(browser, server: OrthancServer, trail) -> None:
    context = context_for(browser, server, "auditor")
    page = context.new_page()
    response = page.goto(f"{server.url}/hardening/ui/?series={trail['series']}")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_function("document.getElementById('f-series').value.length > 0")
    assert page.input_value("#f-series") == trail["series_uid"]
    shown = rows(page)
    assert any(r["who"] == "user" and "instance file" in r["detail"] for r in shown), shown
    assert all(trail["series_uid"] in r["text"] for r in shown)
    page.wait_for_selector("#chain-status.ok")
    assert "chain intact" in page.text_content("#chain-status")
    page.wait_for_selector("#seal-status.ok")
    assert "2 of 2 instances verified" in page.text_content("#seal-status")
    page.wait_for_selector("#posture-card", state="hidden")  # the auditor is not an administrator

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.fill("#f-user", "user")
    page.click("#apply")
    page.wait_for_function(
        "[...document.querySelectorAll('#timeline tbody tr.event td.who')].every(td => td.textContent === 'user')")
    filtered = rows(page)
    assert filtered and all(r["who"] == "user" for r in filtered)

    with page.expect_download() as download_info:
        page.click("#csv")
    text = Path(download_info.value.path()).read_text(encoding="utf-8")
    records = list(csv.DictReader(io.StringIO(text)))
    assert records and all(r["user"] == "user" for r in records)
    assert any(r["series_uid"] == trail["series_uid"] and r["event"] == "110103" for r in records)
    context.close()


def test_explorer_series_page_has_an_audit_trail_button(browser, server: OrthancServer, trail) -> None:
    context = context_for(browser, server, "auditor")
    page = context.new_page()
    page.goto(f"{server.url}/app/explorer.html#series?uuid={trail['series']}")
    button = page.wait_for_selector("#series-audit-trail", state="attached", timeout=15000)
    assert button.get_attribute("href") == f"../hardening/ui/?series={trail['series']}"
    context.close()


@pytest.mark.attack
def test_non_auditor_is_refused_the_review_page(browser, server: OrthancServer) -> None:
    context = context_for(browser, server, "user")
    page = context.new_page()
    response = page.goto(f"{server.url}/hardening/ui/")
    assert response is not None and response.status == 403
    assert "Auditors" in page.content()
    for asset in ("app.js", "style.css"):
        assert server.get(f"/hardening/ui/{asset}", user="user").status_code == 403
    assert server.get("/hardening/ui/app.js", user="auditor").status_code == 200
    context.close()


@pytest.mark.attack
def test_path_traversal_in_ui_route_gets_nothing(server: OrthancServer) -> None:
    for name in ("..%2F..%2Fconfig.py", "%2e%2e/review.py", "nothere.js", "x.py"):
        answer = server.get(f"/hardening/ui/{name}", user="auditor")
        # civetweb decodes and removes dot segments: "..%2F..%2Fconfig.py" is GET /config.py and
        # "%2e%2e/x" GET /hardening/x, no routes of the table (they need "all": 403); the others
        # reach the page's route (404).
        assert answer.status_code == (403 if "%2" in name else 404), (name, answer.status_code)


def _explorer2_buttons() -> dict[str, list[dict[str, str]]]:
    configuration, _base = load_orthanc_configuration(Path(__file__).resolve().parents[2] / "orthanc.json",
                                                      {"HARDENING_HOME": "/unused"})
    buttons: dict[str, list[dict[str, str]]] = configuration["OrthancExplorer2"]["UiOptions"]["CustomButtons"]
    return buttons


def test_review_page_is_the_plugins_web_page(server: OrthancServer) -> None:
    # Orthanc Explorer's plugin list and Orthanc Explorer 2's settings link to RootUri,
    # which is relative to /app/explorer.html.
    info = server.get("/plugins/python").json()
    assert info["RootUri"] == "../hardening/ui/"
    target = urljoin(f"{server.url}/app/explorer.html", info["RootUri"])
    assert target == f"{server.url}/hardening/ui/"
    assert server.get("/hardening/ui/", user="auditor").status_code == 200
    assert server.get("/hardening/ui/", user="user").status_code == 403


def test_explorer2_audit_buttons_open_the_review_page_of_that_resource(browser, server: OrthancServer,
                                                                        trail) -> None:
    # Orthanc Explorer 2 (the Docker image's UI) shows orthanc.json's CustomButtons on each study
    # and series, replacing {UUID} with the resource's Orthanc id.
    buttons = _explorer2_buttons()
    study = server.get(f"/series/{trail['series']}").json()["ParentStudy"]
    for level, resource in (("series", trail["series"]), ("study", study)):
        (button,) = buttons[level]
        assert (button["HttpMethod"], button["Target"]) == ("GET", "_blank")
        url = server.url + button["Url"].replace("{UUID}", resource)
        context = context_for(browser, server, "auditor")
        try:
            page = context.new_page()
            response = page.goto(url)
            assert response is not None and response.status == 200
            shown = rows(page)
            assert shown and any(trail["series_uid"] in r["text"] for r in shown)
        finally:
            context.close()
