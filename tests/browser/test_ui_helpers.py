"""The UI's own small pieces, without a browser: masks, outpainting, ui-config.json, progress text, overrides."""
from __future__ import annotations

import json
import threading
import time

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.jobs import JobQueue
from modules.request import GenerationRequest
from modules.ui.common import UIConfig, to_size
from modules.ui.inpaint import outpaint_canvas, painted_mask, uploaded_mask
from modules.ui.params import parse_overrides
from modules.ui.progress import format_eta, progress_html


def layer_with_stroke(box: tuple[int, int, int, int], size=(64, 48)) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    return layer


def test_painted_mask_is_the_union_of_the_layers_alpha_as_L():
    value = {"background": Image.new("RGB", (64, 48), "gray"),
             "layers": [layer_with_stroke((0, 0, 10, 10)), layer_with_stroke((30, 20, 40, 30))]}
    mask = painted_mask(value)
    assert mask.mode == "L" and mask.size == (64, 48)
    m = np.asarray(mask)
    assert m[5, 5] == 255 and m[25, 35] == 255 and m[40, 60] == 0
    assert int((m == 255).sum()) == 200
    assert painted_mask({"background": Image.new("RGB", (8, 8)), "layers": [Image.new("RGBA", (8, 8))]}) is None
    assert painted_mask(None) is None


def test_an_uploaded_mask_uses_transparency_when_it_has_some_and_brightness_otherwise():
    transparent = layer_with_stroke((0, 0, 4, 4), (8, 8))
    assert np.asarray(uploaded_mask(transparent))[1, 1] == 255
    assert np.asarray(uploaded_mask(transparent))[6, 6] == 0
    opaque = Image.new("RGB", (8, 8), "white")
    assert uploaded_mask(opaque).mode == "L" and np.asarray(uploaded_mask(opaque)).min() == 255


def test_outpainting_pads_the_picture_and_masks_only_the_new_area_plus_overlap():
    image = Image.new("RGB", (60, 40), (10, 20, 30))
    fields = outpaint_canvas(image, 32, ["left", "down"], overlap=4)
    canvas, mask = fields["init_images"][0], fields["mask"]
    assert (fields["width"], fields["height"]) == canvas.size == (96, 72)  # 60+32 → 96, 40+32 → 72
    assert canvas.getpixel((32 + 10, 10)) == (10, 20, 30)  # the original, moved right
    assert canvas.getpixel((0, 0)) == (10, 20, 30)  # edges stretched outwards
    m = np.asarray(mask)
    assert m[10, 0] == 255 and m[60, 50] == 255  # new area
    assert m[10, 32 + 4] == 0 and m[10, 32 + 2] == 255  # overlap into the original on the padded side
    assert m[0, 50] == 0  # the top wasn't extended: no overlap there
    with pytest.raises(ValidationError):
        outpaint_canvas(image, 32, [], overlap=4)


def test_ui_config_applies_saved_defaults_that_fit_and_ignores_the_rest(tmp_path):
    file = tmp_path / "ui-config.json"
    file.write_text(json.dumps({"txt2img/Sampling steps/value": 7, "txt2img/Sampling steps/maximum": 300,
                                "txt2img/Sampler/value": "no such sampler", "txt2img/Extra/value": "yes"}))
    config = UIConfig(file)
    with gr.Blocks():
        steps = config.add("txt2img", "Sampling steps", gr.Slider, minimum=1, maximum=150, step=1, value=20)
        sampler = config.add("txt2img", "Sampler", gr.Dropdown, choices=["Euler", "DDIM"], value="Euler")
        extra = config.add("txt2img", "Extra", gr.Checkbox, value=False)
    assert (steps.value, steps.maximum) == (7, 300)
    assert sampler.value == "Euler" and extra.value is False
    config.write_missing()
    saved = json.loads(file.read_text())
    assert saved["txt2img/Sampling steps/minimum"] == 1 and saved["txt2img/Sampling steps/value"] == 7
    assert config.save_values({steps: 9, sampler: "DDIM"}) == 2
    assert json.loads(file.read_text())["txt2img/Sampler/value"] == "DDIM"
    assert config.updates()[steps]["value"] == 9  # applied on the next page load, no restart


def test_a_corrupt_ui_config_is_set_aside(tmp_path):
    file = tmp_path / "ui-config.json"
    file.write_text("{not json")
    config = UIConfig(file)
    assert config.values == {} and config.warnings
    assert list(tmp_path.glob("ui-config.json.corrupt-*"))


def test_progress_text_for_queued_and_running_jobs():
    release = threading.Event()
    queue = JobQueue(lambda job: release.wait(10))
    try:
        running, queued = queue.submit(GenerationRequest()), queue.submit(GenerationRequest())
        deadline = time.monotonic() + 10
        while running.started is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "In queue: 1/1" in progress_html(queued)
        assert 'data-state="running"' in progress_html(running)
    finally:
        release.set()
        queue.shutdown(10)
    assert format_eta(5.2) == "5s" and format_eta(125) == "2m 5s" and format_eta(None) == ""


def test_override_choices_parse_back_to_settings_and_sizes_clamp():
    assert parse_overrides(["Clip skip: 2", "Model: tiny-sd1", "Unknown: 1"]) == {
        "CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny-sd1"}
    assert to_size(70) == 64 and to_size(10) == 64 and to_size(99999) == 2048 and to_size("abc") == 512
