"""img2img and Upscale in the browser: send a result on, generate from it, upscale it; a batch over a folder."""
from __future__ import annotations

import pytest
from PIL import Image

from modules.infotext import read_image_infotext
from tests.browser.conftest import JOB_TIMEOUT_MS, go_to_tab, shot

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect


def test_a_result_goes_on_to_img2img_and_then_to_upscale(page, ui_server, submitted):
    page.locator("#txt2img_prompt textarea").fill("a quiet harbour")
    page.click("#txt2img_generate")
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)

    page.click("#txt2img_send_to_img2img")
    expect(page.locator("#tab_img2img")).to_be_visible()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("a quiet harbour")
    expect(page.locator("#img2img_image img")).to_be_visible()
    page.click("#img2img_generate")
    expect(page.locator("#img2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    assert submitted[-1].init_images[0].size == (64, 64) and submitted[-1].prompt == "a quiet harbour"

    page.click("#img2img_send_to_extras")
    expect(page.locator("#tab_extras")).to_be_visible()
    expect(page.locator("#extras_image img")).to_be_visible()
    page.click("#extras_generate")
    expect(page.locator("#extras_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#extras_html_info")).to_contain_text("Postprocess upscale by: 2")
    shot(page, "extras-result")
    [upscaled] = list((ui_server.data_dir / "outputs" / "extras-images").rglob("*.png"))
    image = Image.open(upscaled)
    assert image.size == (128, 128)
    text, items = read_image_infotext(image)
    assert text.startswith("a quiet harbour") and "Postprocess upscaler: Lanczos" in items["postprocessing"]


def test_img2img_batch_runs_over_a_folder(page, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name, colour in (("apple", "red"), ("sky", "blue")):
        Image.new("RGB", (64, 64), colour).save(source / f"{name}.png")
    go_to_tab(page, "img2img")
    page.click("#img2img_batch_tab-button")
    page.locator("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input").first.fill(str(source))
    page.locator("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input").first.fill(str(target))
    page.locator("#img2img_prompt textarea").fill("autumn colours")
    page.click("#img2img_generate")
    expect(page.locator("#img2img_progress")).to_contain_text("Processed 2 image(s)", timeout=JOB_TIMEOUT_MS)
    assert sorted(p.name for p in target.iterdir()) == ["apple.png", "sky.png"]
    text, _ = read_image_infotext(Image.open(target / "apple.png"))
    assert text.startswith("autumn colours")
    expect(page.locator("#img2img_gallery img")).to_have_count(2)
