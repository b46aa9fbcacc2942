"""Browser tests: the real server (UI + API app) on a free loopback port with tiny models, driven by Chromium.

Debian's /usr/bin/chromium (or ATELIER_CHROMIUM) is used through Playwright, never a downloaded browser;
without it, or without playwright, the browser tests skip with the reason. ATELIER_UI_SHOTS=<folder> keeps
screenshots of what the tests saw.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium"))
HEADLESS_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Tiny models want small images and few steps: the UI's own defaults file (ui-config.json) sets them.
TINY_UI_DEFAULTS = {
    **{f"{tab}/{label}/value": value for tab in ("txt2img", "img2img", "inpaint")
       for label, value in (("Sampling steps", 3), ("Width", 64), ("Height", 64))},
    "inpaint/Width/value": 128, "inpaint/Height/value": 128, "inpaint/Sampling steps/value": 4,
}
LOAD_TIMEOUT_MS = 60_000
JOB_TIMEOUT_MS = 90_000


def skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"browser tests need Debian's chromium at {CHROMIUM} (run .ci/install-browser.sh as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests need playwright (pip install -r requirements-test.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class UIServer:
    url: str
    engine: Any
    data_dir: Path


@pytest.fixture(scope="session")
def browser_available() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def ui_server(browser_available, tiny_dir, policy, tmp_path_factory):
    import uvicorn

    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths
    from modules.api.server import create_app
    from modules.settings import Settings

    data = tmp_path_factory.mktemp("ui-data")
    (data / "ui-config.json").write_text(json.dumps(TINY_UI_DEFAULTS), encoding="utf-8")
    paths = Paths.from_flags(data_dir=str(data), ckpt_dir=str(tiny_dir / "models" / "Stable-diffusion"))
    paths.ensure()
    settings = Settings.load(paths.config_file)
    settings.update({"sd_model_checkpoint": "tiny-sd1.safetensors", "show_progress_every_n_steps": 1})
    engine = Engine(paths, policy, settings)
    engine.models.get()  # load once here, so the first test doesn't pay for it inside a timeout
    port = free_port()
    app = create_app(engine, cmd_args.parse(["--port", str(port)]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI server did not start")
        time.sleep(0.05)
    yield UIServer(f"http://127.0.0.1:{port}", engine, data)
    server.should_exit = True
    thread.join(10)
    engine.shutdown()


@pytest.fixture(scope="session")
def browser(ui_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh temporary profile (the --user-data-dir of the plain flags).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=HEADLESS_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watch:
    """What the page asked the network for and what went wrong on it."""

    local_prefix: str
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith((self.local_prefix, "data:", "blob:"))]


@pytest.fixture()
def page(browser, ui_server):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch = Watch(ui_server.url)
    page.on("request", lambda r: watch.requests.append(r.url))
    # Reloads abort open event streams; that is not a failure of the page.
    page.on("requestfailed", lambda r: watch.failed.append(f"{r.url} {r.failure}")
            if "ERR_ABORTED" not in (r.failure or "") else None)
    page.on("pageerror", lambda e: watch.errors.append(str(e)))
    page.watch = watch
    open_ui(page, ui_server.url)
    yield page
    context.close()
    assert watch.external() == [], f"the page fetched from outside the server: {watch.external()}"
    assert watch.errors == [], f"JavaScript errors: {watch.errors}"


def open_ui(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#txt2img_generate", timeout=LOAD_TIMEOUT_MS)


def shot(page, name: str) -> None:
    """Keep a screenshot when ATELIER_UI_SHOTS names a folder."""
    folder = os.environ.get("ATELIER_UI_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def go_to_tab(page, tab_id: str) -> None:
    page.click(f"#tab_{tab_id}-button")
    page.wait_for_selector(f"#tab_{tab_id}", state="visible")


def set_number(page, elem_id: str, value: Any) -> None:
    """Type into a slider's or number's input box, as an artist would, and leave the box."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def number_value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").first.input_value()


def text_value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def last_job(engine):
    jobs = engine.queue.list()
    return jobs[-1] if jobs else None


def wait_for_job(engine, predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = last_job(engine)
        if job is not None and predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"no job matched in {timeout}s; last: {last_job(engine)}")


@pytest.fixture()
def submitted(ui_server, monkeypatch):
    """Every GenerationRequest the UI submits, as the engine receives it."""
    seen = []
    original = ui_server.engine.submit

    def record(request, *args, **kwargs):
        seen.append(request)
        return original(request, *args, **kwargs)

    monkeypatch.setattr(ui_server.engine, "submit", record)
    return seen
