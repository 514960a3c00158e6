"""The example app's page in a real headless browser (Debian's chromium), on two uvicorn workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from nerfcache import warm
from nerfcache.testing import FakeProject, make_fake_project, write_png
from tests.conftest import process_gone
from tests.example_server import Server, running_app

pytestmark = pytest.mark.slow

# As the machine notes start it: no sandbox as root, and no calls home on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)  # waits for a condition; the test's own timeout still holds


@pytest.fixture
def project(tmp_path: Path) -> FakeProject:
    project = make_fake_project(tmp_path / "project", real_video=True)  # a real MP4 to play
    warm("ayanami", "ffhq.pkl", settings=project.settings)
    return project


@pytest.fixture
def server(project: FakeProject, tmp_path: Path) -> Iterator[Server]:
    # A new character's PTI takes a minute: long enough to cancel it, whatever the machine.
    with running_app(project, tmp_path / "data", FAKE_NERF_PTI_S="60") as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "Debian's chromium is not installed: run scripts/test, which installs it"
            " (apt-get install chromium); Playwright's own browser download does not work here"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url)
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    yield page
    page.close()


def test_make_a_video_watch_it_and_cancel_another(page: Page, project: FakeProject, tmp_path):
    characters = page.locator("#characters tbody tr")
    expect(characters).to_have_count(1)
    expect(characters.first).to_contain_text("ayanami")
    expect(characters.first).to_contain_text("warm")
    expect(page.locator("#model option")).to_have_text(["ffhq.pkl"])

    # A video of a warm character: the bar reaches 100 %, the player gets the MP4.
    page.select_option("#character", "ayanami")
    page.set_input_files("#audio", project.audio)
    page.click("#start")
    card = page.locator("article.job", has_text="ayanami")
    expect(card.locator(".status")).to_have_text("done")
    expect(card.locator(".percent")).to_have_text("100 %")
    assert card.locator("progress").evaluate("bar => bar.value") == 100
    expect(card.locator(".stage")).to_contain_text("skipped: learning the face (PTI)")
    video = card.locator("video")
    expect(video).to_be_visible()
    video.evaluate(
        "v => new Promise((ok, fail) => v.readyState >= 1 ? ok() :"
        " (v.onloadedmetadata = ok, v.onerror = () => fail(v.error.message)))"
    )
    assert video.evaluate("v => v.duration") > 0
    content_type, head = video.evaluate(
        """async v => {
            const response = await fetch(v.src);
            const head = new Uint8Array(await response.arrayBuffer()).slice(4, 8);
            return [response.headers.get("content-type"), String.fromCharCode(...head)];
        }"""
    )
    assert (content_type, head) == ("video/mp4", "ftyp")

    # A new character from an uploaded portrait: cold, so PTI runs, and is cancelled.
    page.select_option("#character", "__new__")
    page.fill("#new-name", "rei")
    page.set_input_files("#portrait", write_png(tmp_path / "rei.png", (200, 120, 90)))
    page.set_input_files("#audio", project.audio)
    page.click("#start")
    card = page.locator("article.job", has_text="rei")
    expect(card).to_have_attribute("data-stage", "pti")
    expect(card.locator(".stage")).to_contain_text("PTI")
    page.locator("#characters tbody tr", has_text="rei").wait_for()
    card.locator(".cancel").click()
    expect(card.locator(".status")).to_have_text("cancelled")
    call = project.calls()[-1]
    assert call.exit is None
    assert process_gone(call.pid)


def test_failures_are_shown(page: Page, project: FakeProject, tmp_path):
    # Refused before it starts: a portrait for a character that has one.
    page.select_option("#character", "__new__")
    page.fill("#new-name", "ayanami")
    page.set_input_files("#portrait", write_png(tmp_path / "other.png", (1, 2, 3)))
    page.set_input_files("#audio", project.audio)
    page.click("#start")
    expect(page.locator("#form-error")).to_contain_text("already has a portrait")
    expect(page.locator("article.job")).to_have_count(0)

    # Failed while running: the installation broke after the page was loaded.
    project.settings.conda_python.unlink()
    page.select_option("#character", "ayanami")
    page.click("#start")
    card = page.locator("article.job", has_text="ayanami")
    expect(card.locator(".status")).to_have_text("failed")
    expect(card.locator(".error")).to_contain_text("NERFCACHE_CONDA_PYTHON")
    expect(card.locator("video")).to_be_hidden()
