"""The page at ``/`` in headless Chromium (Debian's ``chromium``, driven by Playwright): a person types a
question, sees the answer stream in with its sources, and opens a cited passage. The screenshot is kept in
``test-artifacts/`` (or ``$RAG_TEST_ARTIFACTS``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from test_serving_app import build_tiny_collection
from test_serving_live import TOKEN, LiveServer, settings_for

pytestmark = pytest.mark.slow

ARTIFACTS = Path(
    os.environ.get("RAG_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts")
)
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    index_dir = build_tiny_collection(tmp_path_factory.mktemp("web-page"))
    server = LiveServer(settings_for(index_dir, default_max_tokens=32))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1200, "height": 800})
        browser.close()


def test_the_page_and_its_assets_are_served_without_a_token(live: LiveServer) -> None:
    for path, kind in (
        ("/", "text/html"),
        ("/web-assets/page.js", "javascript"),
        ("/web-assets/page.css", "css"),
    ):
        response = httpx.get(live.url + path, timeout=30)
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "cdn" not in httpx.get(live.url + "/", timeout=30).text.lower()  # works offline


def test_a_question_streams_in_with_its_sources(live: LiveServer, page: Page) -> None:
    page.goto(live.url + "/")
    page.wait_for_selector("#status:has-text('401')")  # the server needs a token: the page says why
    page.fill("#token", TOKEN)
    page.press("#token", "Tab")  # leaving the field saves the token and lists the collections
    page.wait_for_selector("#collection option[value='tiny']", state="attached")
    page.fill("#question", QUESTION)
    page.click("#ask")
    page.wait_for_selector("#answer[data-state='done'], #answer[data-state='failed']", timeout=180_000)
    assert page.get_attribute("#answer", "data-state") == "done", page.inner_text("#status")

    assert "Paris" in page.inner_text("#answer")
    assert int(page.get_attribute("#answer", "data-pieces") or 0) > 1  # streamed piece by piece
    sources = page.locator("#sources li")
    assert sources.count() == 2  # default_k of the served settings
    cited = page.locator("#sources li.cited")
    assert cited.count() >= 1 and cited.first.get_attribute("data-id") == "paris"
    assert page.locator("#sources li.shown").get_attribute("data-id") == "paris"  # first cited, opened
    assert "Paris is the capital of France." in page.inner_text("#sources li.shown .text")
    assert "first token" in page.inner_text("#timings")

    page.locator("#sources li .title").nth(1).click()  # open the other passage
    assert page.locator("#sources li.shown").get_attribute("data-id") != "paris"
    page.locator("#answer .marker").first.click()  # a citation marker opens its passage again
    assert page.locator("#sources li.shown").get_attribute("data-id") == "paris"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    assert page.locator("#status").inner_text() == ""


def test_a_failed_question_is_reported_on_the_page(live: LiveServer, page: Page) -> None:
    page.goto(live.url + "/")
    page.fill("#token", TOKEN)
    page.press("#token", "Tab")
    page.wait_for_selector("#collection option[value='tiny']", state="attached")
    page.fill("#question", "x" * 3_000)  # over the server's limit on a question
    page.click("#ask")
    page.wait_for_selector("#answer[data-state='failed']", timeout=60_000)
    assert "413" in page.inner_text("#status")
