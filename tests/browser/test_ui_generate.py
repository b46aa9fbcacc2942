"""txt2img in the browser: type, generate, see the image and its infotext; bad input; interrupt; queue."""
from __future__ import annotations

import threading

import pytest
from PIL import Image

from modules.infotext import read_image_infotext
from modules.jobs import JobState
from modules.request import GenerationRequest
from tests.browser.conftest import JOB_TIMEOUT_MS, go_to_tab, open_ui, set_number, shot, wait_for_job

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect


def test_typed_prompt_generates_an_image_with_its_infotext(page, ui_server, submitted):
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red lighthouse")
    expect(page.locator("#txt2img_token_counter")).to_have_text("3/75")
    prompt.press("Control+Enter")  # A1111's shortcut

    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    info = page.locator("#txt2img_html_info")
    expect(info).to_contain_text("a red lighthouse")
    expect(info).to_contain_text("Steps: 3")
    expect(info).to_contain_text("Size: 64x64")
    expect(info).to_contain_text("Time taken")
    shot(page, "txt2img")

    [request] = submitted
    assert (request.prompt, request.steps, request.width, request.height) == ("a red lighthouse", 3, 64, 64)
    job = wait_for_job(ui_server.engine, lambda j: j.is_finished)
    assert job.state == JobState.done, job.error
    [path] = job.result.paths
    text, _ = read_image_infotext(Image.open(path))
    assert text.startswith("a red lighthouse\nSteps: 3")
    assert page.locator("#txt2img_generate").is_visible()


def test_img2img_without_an_image_says_so_and_stays_usable(page):
    go_to_tab(page, "img2img")
    page.click("#img2img_generate")
    expect(page.locator("#img2img_progress")).to_contain_text("no image yet")
    expect(page.locator("#img2img_generate")).to_be_visible()


def test_a_failing_job_shows_its_error_and_the_ui_keeps_working(page, ui_server, monkeypatch):
    engine = ui_server.engine
    original = engine.models.get

    def broken(*args, **kwargs):
        from modules.errors import CheckpointError
        raise CheckpointError("the checkpoint file is damaged")

    monkeypatch.setattr(engine.models, "get", broken)
    page.locator("#txt2img_prompt textarea").fill("a failing job")
    page.click("#txt2img_generate")
    expect(page.locator("#txt2img_progress .atelier-error")).to_contain_text("damaged", timeout=JOB_TIMEOUT_MS)
    monkeypatch.setattr(engine.models, "get", original)
    page.click("#txt2img_generate")
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)


def slow_steps(engine, seconds: float):
    """Make every denoise step of every job take a while (for queue and interrupt tests); returns an undo."""
    saved = engine.hooks
    engine.hooks = saved.copy()
    engine.hooks.add("after_step", lambda state: threading.Event().wait(seconds))
    return lambda: setattr(engine, "hooks", saved)


def test_queue_position_then_interrupt_after_a_page_reload(page, ui_server):
    engine = ui_server.engine
    undo = slow_steps(engine, 0.05)
    try:
        blocker = engine.submit(GenerationRequest(prompt="blocker", steps=400, width=64, height=64))
        page.locator("#txt2img_prompt textarea").fill("a long job")
        set_number(page, "txt2img_steps", 150)
        set_number(page, "txt2img_batch_count", 4)
        page.click("#txt2img_generate")
        expect(page.locator("#txt2img_progress")).to_contain_text("In queue: 1/1", timeout=JOB_TIMEOUT_MS)
        engine.queue.interrupt(blocker.id)

        running = page.locator("#txt2img_progress [data-state=running]")
        expect(running).to_contain_text("ETA", timeout=JOB_TIMEOUT_MS)
        job = wait_for_job(engine, lambda j: j.request.prompt == "a long job" and j.step > 0)
        expect(page.locator("#txt2img_preview img")).to_be_visible()

        page.reload()  # the bar comes back: the tab finds its job again
        open_ui(page, ui_server.url)
        expect(running).to_contain_text("ETA", timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#txt2img_interrupt")).to_be_visible()
        page.locator("body").press("Escape")  # A1111's shortcut for Interrupt
        engine.queue.wait(job, 30)
        assert job.state == JobState.interrupted
        assert job.step < job.total_steps
        expect(page.locator("#txt2img_progress")).to_contain_text("Interrupted")
        expect(page.locator("#txt2img_generate")).to_be_visible()
    finally:
        undo()
        engine.queue.interrupt()


def test_every_tab_renders_from_the_server_alone(page):
    landmarks = {"txt2img": "#txt2img_gallery", "img2img": "#img2img_image", "inpaint": "#inpaint_editor canvas",
                 "extras": "#extras_upscaler_1", "pnginfo": "#pnginfo_image", "settings": "#settings_submit",
                 "extensions": "#extensions_table table",
                 "modelmerger": "#modelmerger_merge"}
    for tab, landmark in landmarks.items():
        go_to_tab(page, tab)
        expect(page.locator(landmark).first).to_be_visible()
        page.wait_for_timeout(300)  # let images and fonts settle for the screenshot
        shot(page, f"tab-{tab}")
    assert page.watch.failed == []
