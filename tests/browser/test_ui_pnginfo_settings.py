"""PNG Info → txt2img fills every field (override settings included); settings survive a reload."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from modules.jobs import JobState
from modules.request import GenerationRequest
from tests.browser.conftest import go_to_tab, number_value, open_ui, set_number, text_value

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect


def test_png_info_reads_a_generated_png_and_sends_its_parameters_to_txt2img(page, ui_server, tmp_path):
    request = GenerationRequest(prompt="a castle on a hill, (oil paint:1.2)", negative_prompt="blurry, dark",
                                steps=4, cfg_scale=5.5, seed=1234, sampler_name="Euler a", scheduler="Karras",
                                width=72, height=64, override_settings={"CLIP_stop_at_last_layers": 2})
    job = ui_server.engine.generate(request, timeout=120)
    assert job.state == JobState.done, job.error
    [png] = job.result.paths

    go_to_tab(page, "pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
    info = page.locator("#pnginfo_html_info")
    expect(info).to_contain_text("a castle on a hill")
    expect(info).to_contain_text("Clip skip: 2")
    page.click("#pnginfo_send_to_txt2img")

    expect(page.locator("#tab_txt2img")).to_be_visible()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value(request.prompt)
    assert text_value(page, "txt2img_neg_prompt") == "blurry, dark"
    assert number_value(page, "txt2img_steps") == "4"
    assert number_value(page, "txt2img_cfg_scale") == "5.5"
    assert number_value(page, "txt2img_width") == "72"
    assert number_value(page, "txt2img_height") == "64"
    assert text_value(page, "txt2img_seed") == "1234"
    assert text_value(page, "txt2img_sampling") == "Euler a"
    assert text_value(page, "txt2img_scheduler") == "Karras"
    expect(page.locator("#txt2img_override_settings")).to_contain_text("Clip skip: 2")

    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), "teal").save(plain)
    go_to_tab(page, "pnginfo")
    page.locator("#pnginfo_image button[aria-label='Remove Image']").first.click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(plain))
    expect(info).to_contain_text("no parameters")


def test_a_changed_setting_is_kept_after_a_reload(page, ui_server):
    settings = ui_server.engine.settings
    assert settings.get("add_version_to_infotext") is True
    try:
        go_to_tab(page, "settings")
        page.locator("#settings_search input, #settings_search textarea").first.fill("version")
        expect(page.locator("#setting_samples_format")).to_be_hidden()
        checkbox = page.locator("#setting_add_version_to_infotext input[type=checkbox]")
        checkbox.uncheck()
        page.click("#settings_submit")
        expect(page.locator("#settings_result")).to_contain_text("Add program version to infotext")

        open_ui(page, ui_server.url)  # a fresh page load
        go_to_tab(page, "settings")
        expect(page.locator("#setting_add_version_to_infotext input[type=checkbox]")).not_to_be_checked()
        assert settings.get("add_version_to_infotext") is False
        saved = json.loads((ui_server.data_dir / "config.json").read_text(encoding="utf-8"))
        assert saved["add_version_to_infotext"] is False
    finally:
        settings.set("add_version_to_infotext", True)


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"ul[role=listbox] li[role=option]:has-text('{option}')").first.click()


def test_switching_the_checkpoint_loads_it_and_saves_the_choice(page, ui_server):
    engine = ui_server.engine
    try:
        choose(page, "setting_sd_model_checkpoint", "tiny-sd1-inpainting")
        expect(page.locator("#quicksettings_status")).to_contain_text("Loaded: tiny-sd1-inpainting.safetensors")
        assert engine.models.current_file.name == "tiny-sd1-inpainting.safetensors"
        assert engine.settings.get("sd_model_checkpoint") == "tiny-sd1-inpainting.safetensors"
    finally:
        engine.settings.set("sd_model_checkpoint", "tiny-sd1.safetensors")
        engine.models.get("tiny-sd1.safetensors")


def save_current_values_as_defaults(page) -> None:
    go_to_tab(page, "settings")
    page.click("#settings_defaults_tab-button")
    page.click("#defaults_save_current")
    expect(page.locator("#defaults_result")).to_contain_text("Saved")


def test_saved_ui_defaults_apply_on_the_next_page_load(page, ui_server):
    config = ui_server.data_dir / "ui-config.json"
    set_number(page, "txt2img_steps", 5)
    save_current_values_as_defaults(page)
    try:
        assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Sampling steps/value"] == 5
        assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Sampling steps/maximum"] == 150
        open_ui(page, ui_server.url)
        expect(page.locator("#txt2img_steps input[type=number]")).to_have_value("5")
    finally:
        set_number(page, "txt2img_steps", 3)
        save_current_values_as_defaults(page)
