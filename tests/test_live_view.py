"""``taskbed serve`` tested as a person uses it: a real server process, a real browser.

The server is the ``taskbed serve`` command in its own process (SQLite file, loopback port);
the browser is Debian's chromium driven by Playwright (no browser download: it is launched
from ``/usr/bin/chromium``). The test picks a user, calls the example module's action, sees
the card's progress advance, answers the confirmation, sees the result, and sees another
user's page stay empty. Screenshots of the run go to docs/assets/live-view/ when
``TASKBED_SCREENSHOTS`` names that folder (how the guide's images are made).

Outside CI the browser tests are skipped when chromium is missing (with the reason); in CI
(``CI`` set) a missing chromium is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MODULE = ROOT / "docs" / "examples" / "live_export.py"
CHROMIUM = os.environ.get("TASKBED_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = os.environ.get("TASKBED_SCREENSHOTS")

if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)):
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the browser tests: no chromium at {CHROMIUM}")
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

if os.environ.get("CI"):
    import playwright.sync_api as sync_api  # in CI a missing package is a failure, not a skip
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev)")
expect = sync_api.expect


class Serve:
    """``taskbed serve docs/examples/live_export.py`` in its own process, on a SQLite file."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "tasks.db"
        self.errors = tmp_path / "serve.stderr"
        self.cwd = tmp_path
        self.proc: subprocess.Popen[str] | None = None

    def start(self, port: int = 0) -> str:
        """Start it; the page's URL."""
        with self.errors.open("a") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskbed_harness._cli", "serve", str(MODULE),
                 "--db", str(self.db), "--port", str(port)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=self.cwd,
            )  # fmt: skip
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline() + self.proc.stdout.readline()
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", banner)
        if not found:
            self.kill()
            raise AssertionError(f"no URL in {banner!r}; stderr: {self.errors.read_text()}")
        return found[1]

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is cleaned up."""
        if self.proc is not None:
            self.proc.kill()
            self._reap()

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C: the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reap()
        return code

    def _reap(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``taskbed serve docs/examples/live_export.py`` on a free port; its page's URL."""
    serve = Serve(tmp_path)
    url = serve.start()
    try:
        yield url
    finally:
        code = serve.stop()
    assert code == 0, f"taskbed serve exited {code}; stderr: {serve.errors.read_text()}"


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page: object, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _connect(page: object, url: str, user: str, org: str) -> None:
    page.goto(url)  # type: ignore[attr-defined]
    page.fill("#user", user)  # type: ignore[attr-defined]
    page.fill("#org", org)  # type: ignore[attr-defined]
    page.click("#connect")  # type: ignore[attr-defined]
    expect(page.locator("#status")).to_have_text(re.compile(f"connected as user {user}"))  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.rule("WS-3")
def test_a_job_runs_live_in_the_browser_and_only_its_owner_sees_it(
    server: str, browser: object
) -> None:
    owner = browser.new_page(viewport={"width": 900, "height": 720})  # type: ignore[attr-defined]
    stranger = browser.new_page(viewport={"width": 900, "height": 500})  # type: ignore[attr-defined]
    _connect(owner, server, "7", "10")
    _connect(stranger, server, "8", "10")
    expect(owner.locator("#module")).to_have_text("module live_export")
    owner.select_option("#action", "start_export")
    owner.fill("#ctx", '{"steps": 8, "delay": 0.4, "rows": 1200}')
    owner.click("#call")

    card = owner.locator(".card").first
    expect(card.locator(".status")).to_have_text("running")
    bar = card.locator("progress")
    seen: list[float] = []
    for _ in range(600):  # bounded: 8 steps of 0.4 s take ~3 s
        value = float(bar.get_attribute("value") or 0)
        if not seen or value != seen[-1]:
            seen.append(value)
            if 0.4 <= value < 0.7:
                _shot(owner, "1-progress")
        if value >= 1.0:
            break
        owner.wait_for_timeout(20)
    assert seen[-1] == 1.0, seen
    assert len([v for v in seen if 0 < v < 1]) >= 3, f"progress did not advance live: {seen}"
    assert seen == sorted(seen)

    expect(card.locator(".status")).to_have_text("waiting confirmation")
    prompt = card.locator(".prompt")
    expect(prompt).to_contain_text("Publish 1200 rows?")
    _shot(owner, "2-confirmation")
    prompt.get_by_role("button", name="Publish").click()

    expect(card.locator(".status")).to_have_text("completed")
    expect(card.locator(".outcome")).to_contain_text('"published":true')
    expect(card.locator(".cancel")).to_be_hidden()
    _shot(owner, "3-completed")

    stranger.wait_for_timeout(200)
    expect(stranger.locator(".card")).to_have_count(0)
    expect(stranger.locator("#empty")).to_be_visible()
    _shot(stranger, "4-other-user")

    # The owner's reloaded page rebuilds its cards from the task list.
    owner.reload()
    _connect(owner, server, "7", "10")
    expect(owner.locator(".card")).to_have_count(1)
    expect(owner.locator(".card .status")).to_have_text("completed")


@pytest.mark.slow
def test_cancel_and_failure_show_on_the_cards(server: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    _connect(page, server, '"ana"', "")
    page.select_option("#action", "start_export")
    page.fill("#ctx", '{"steps": 50, "delay": 0.2}')
    page.click("#call")
    card = page.locator(".card").first
    expect(card.locator(".status")).to_have_text("running")
    card.locator(".cancel").click()
    expect(card.locator(".status")).to_have_text("interrupted")
    expect(card.locator(".outcome")).to_have_class(re.compile("error"))

    page.select_option("#action", "fail_fast")
    page.fill("#ctx", '{"message": "disk full"}')
    page.click("#call")
    failed = page.locator(".card").first
    expect(failed.locator(".status")).to_have_text("failed")
    expect(failed.locator(".outcome")).to_have_text("disk full")

    page.fill("#ctx", "{not json")
    page.click("#call")
    expect(page.locator("#result")).to_contain_text("ctx is not JSON")


@pytest.mark.slow
@pytest.mark.rule("REC-3")
def test_the_page_comes_back_after_a_crash_and_shows_what_happened(
    tmp_path: Path, browser: object
) -> None:
    with socket.socket() as probe:  # a free port, to restart the server on the same one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = Serve(tmp_path)
    url = serve.start(port)
    try:
        page = browser.new_page()  # type: ignore[attr-defined]
        _connect(page, url, "7", "10")
        page.select_option("#action", "start_export")
        page.fill("#ctx", '{"steps": 500, "delay": 0.1}')
        page.click("#call")
        card = page.locator(".card").first
        expect(card.locator(".status")).to_have_text("running")
        serve.kill()
        expect(page.locator("#status")).to_have_text(re.compile("offline"))
        serve.start(port)  # recovery interrupts the task; the page reconnects by itself
        expect(page.locator("#status")).to_have_text(
            re.compile("connected as user 7"), timeout=15_000
        )
        card = page.locator(".card").first
        # Recovered once the killed run's lease (5 s in `taskbed serve`) has run out.
        expect(card.locator(".status")).to_have_text("interrupted", timeout=20_000)
        expect(card.locator(".outcome")).to_contain_text("restart")
        expect(page.locator(".card")).to_have_count(1)  # the queued error and the row: one card
    finally:
        if serve.proc is not None:
            assert serve.stop() == 0
