"""The Script dropdown in the browser: built-in scripts' controls, X/Y/Z plot making a grid."""
from __future__ import annotations

import threading

import pytest

from modules.jobs import JobState
from tests.browser.conftest import JOB_TIMEOUT_MS, go_to_tab, shot

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect


def choose(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_script_dropdown_lists_the_tabs_scripts(page):
    box = page.locator("#txt2img_script input").first
    box.click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    names = [t.replace("✓", "").strip() for t in options.all_inner_texts()]
    assert names == ["None", "Prompts from file or textbox", "X/Y/Z plot"]
    page.keyboard.press("Escape")
    expect(page.locator("#txt2img_script_xyz_plot")).to_be_hidden()

    go_to_tab(page, "img2img")
    page.locator("#img2img_script input").first.click()
    names = [t.replace("✓", "").strip() for t in page.get_by_role("option").all_inner_texts()]
    assert names == ["None", "Prompts from file or textbox", "X/Y/Z plot", "Loopback", "SD upscale"]
    page.get_by_role("option", name="Loopback", exact=True).click()
    expect(page.locator("#img2img_script_loopback")).to_be_visible()
    expect(page.locator("#img2img_script_sd_upscale")).to_be_hidden()


def test_xyz_plot_with_steps_makes_a_grid(page, ui_server, submitted):
    page.locator("#txt2img_prompt textarea").fill("a blue boat")
    choose(page, "txt2img_script", "X/Y/Z plot")
    expect(page.locator("#txt2img_script_xyz_plot")).to_be_visible()
    expect(page.locator("#txt2img_script_prompts_from_file")).to_be_hidden()
    choose(page, "txt2img_xyz_x_type", "Steps")
    page.locator("#txt2img_xyz_x_values textarea, #txt2img_xyz_x_values input").first.fill("1,2")
    shot(page, "txt2img-xyz")
    threads = []
    original = ui_server.engine.generate

    def record(request, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(request, *args, **kwargs)

    ui_server.engine.generate = record
    try:
        page.click("#txt2img_generate")
        expect(page.locator("#txt2img_html_info")).to_contain_text("a blue boat", timeout=JOB_TIMEOUT_MS)
    finally:
        del ui_server.engine.generate
    # the grid first, then nothing else (no sub-images asked for); the cells' jobs ran with steps 1 and 2
    expect(page.locator("#txt2img_gallery img").first).to_be_visible()
    assert [r.steps for r in submitted] == [1, 2]
    assert all(r.script_name is None for r in submitted)
    assert threads and "atelier-jobs" not in threads
    jobs = ui_server.engine.queue.list()[-2:]
    assert all(j.state == JobState.done for j in jobs)
    expect(page.locator("#txt2img_progress .atelier-error")).to_have_count(0)
    shot(page, "txt2img-xyz-result")


def test_bad_xyz_values_name_the_axis(page):
    choose(page, "txt2img_script", "X/Y/Z plot")
    choose(page, "txt2img_xyz_x_type", "Steps")
    page.locator("#txt2img_xyz_x_values textarea, #txt2img_xyz_x_values input").first.fill("one, two")
    page.click("#txt2img_generate")
    expect(page.locator("#txt2img_progress .atelier-error")).to_contain_text("x_values", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#txt2img_generate")).to_be_visible()
