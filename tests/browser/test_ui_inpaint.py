"""Inpaint in the browser: a mask painted with the mouse reaches the core exactly, and only the stroke changes."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from modules.jobs import JobState
from tests.browser.conftest import JOB_TIMEOUT_MS, go_to_tab, shot, wait_for_job

expect = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright").expect

SIZE = 128
STROKE_Y = 64
STROKE_X = (32, 96)


def source_image() -> Image.Image:
    """A picture with detail everywhere, so any change outside the mask would show."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 2, y * 2, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def image_to_page(page, editor: str, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of an image pixel: the editor centres the picture on its canvas at its zoom level."""
    box = page.locator(f"{editor} canvas").first.bounding_box()
    zoom_text = page.locator(f"{editor}").inner_text()
    zoom = float(re.search(r"(\d+)%", zoom_text).group(1)) / 100
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    return cx + (x - SIZE / 2) * zoom, cy + (y - SIZE / 2) * zoom


def test_painted_mask_reaches_the_core_and_only_the_stroke_changes(page, ui_server, submitted, tmp_path):
    source = source_image()
    source.save(tmp_path / "source.png")
    go_to_tab(page, "inpaint")
    editor = "#inpaint_editor"
    # An upload before the editor has mounted its canvas is lost (Gradio's editor throws on `reset_layers` and
    # sends a blank canvas): wait until its canvas and tools are there.
    expect(page.locator(f"{editor} canvas").first).to_be_visible()
    expect(page.locator(f"{editor} button[aria-label='Brush']")).to_be_visible()
    page.wait_for_timeout(300)
    page.locator(f"{editor} input[type=file]").set_input_files(str(tmp_path / "source.png"))
    expect(page.locator(editor)).to_contain_text("%")
    page.wait_for_timeout(500)  # the picture settles on the canvas
    page.locator(f"{editor} button[aria-label='Brush']").click()

    start = image_to_page(page, editor, STROKE_X[0], STROKE_Y)
    end = image_to_page(page, editor, STROKE_X[1], STROKE_Y)
    page.mouse.move(*start)
    page.mouse.down()
    for t in (0.33, 0.66, 1.0):  # each move redraws the canvas (slow without a GPU): a few points suffice
        page.mouse.move(start[0] + (end[0] - start[0]) * t, start[1])
    page.mouse.up()
    page.wait_for_timeout(300)
    shot(page, "inpaint-painted")
    page.locator("#inpaint_prompt textarea").fill("a blue bird")
    page.click("#inpaint_generate")
    expect(page.locator("#inpaint_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    shot(page, "inpaint-result")

    [request] = submitted
    # What the artist gave is exactly what the core received: the picture, and the stroke as an "L" mask.
    assert np.array_equal(np.asarray(request.init_images[0].convert("RGB")), np.asarray(source))
    mask = request.mask
    assert mask.mode == "L" and mask.size == (SIZE, SIZE)
    m = np.asarray(mask)
    assert (m[STROKE_Y, STROKE_X[0] + 2:STROKE_X[1] - 2] == 255).all(), "the stroke's centre line is masked"
    x1, y1, x2, y2 = mask.getbbox()
    assert STROKE_X[0] - 20 <= x1 < STROKE_X[0] and STROKE_X[1] < x2 <= STROKE_X[1] + 20
    assert STROKE_Y - 20 <= y1 < STROKE_Y < y2 <= STROKE_Y + 20

    job = wait_for_job(ui_server.engine, lambda j: j.is_finished)
    assert job.state == JobState.done, job.error
    [path] = job.result.paths
    output = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blur_reach = 4 * request.mask_blur  # where the blurred mask edge can still touch pixels
    near_stroke = np.asarray(mask.filter(ImageFilter.MaxFilter(2 * blur_reach + 1))) > 0
    diff = np.abs(output - np.asarray(source).astype(int)).max(axis=-1)
    assert diff[~near_stroke].max() <= 2, "pixels away from the stroke are unchanged"
    assert diff[m == 255].mean() > 5, "the stroke was repainted"
