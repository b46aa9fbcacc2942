"""The PNG Info tab: drop an image, read its generation parameters and every other metadata key, send it on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr
from PIL import Image

from modules.infotext import read_image_infotext
from modules.ui.common import UIContext, error_html, esc

TAB = "pnginfo"


@dataclass
class PngInfoTab:
    image: Any
    html: Any
    infotext: Any  # gr.State: the parameters text, for the send buttons
    send_txt2img: Any
    send_img2img: Any
    send_inpaint: Any
    send_extras: Any


def describe(path: Optional[str]) -> tuple[str, str]:
    """(HTML listing the image's metadata, its parameters text)."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            text, items = read_image_infotext(image)
            size, fmt = image.size, image.format
    except OSError as e:
        return error_html(f"Not an image I can read: {e}"), ""
    rows = []
    if text:
        body = "<br>".join(esc(line) for line in text.split("\n"))
        rows.append(f'<div class="pnginfo-item"><h4>parameters</h4><p>{body}</p></div>')
    for key, value in items.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        body = "<br>".join(esc(line) for line in str(value).split("\n"))
        rows.append(f'<div class="pnginfo-item"><h4>{esc(key)}</h4><p>{body}</p></div>')
    header = f'<p class="meta">{esc(fmt or "image")}, {size[0]}×{size[1]}</p>'
    if not text:
        header += '<p class="atelier-note" id="pnginfo_no_parameters">This image has no parameters.</p>'
    return f'<div class="pnginfo">{header}{"".join(rows)}</div>', text or ""


def build(ctx: UIContext) -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id=f"{TAB}_image", height=480)
        with gr.Column(scale=1):
            html = gr.HTML("", elem_id=f"{TAB}_html_info", elem_classes=["infotext"])
            with gr.Row(elem_classes=["output-buttons"]):
                send_txt2img = gr.Button("Send to txt2img", elem_id=f"{TAB}_send_to_txt2img", size="sm",
                                         min_width=100)
                send_img2img = gr.Button("Send to img2img", elem_id=f"{TAB}_send_to_img2img", size="sm", min_width=100)
                send_inpaint = gr.Button("Send to inpaint", elem_id=f"{TAB}_send_to_inpaint", size="sm", min_width=100)
                send_extras = gr.Button("Send to upscale", elem_id=f"{TAB}_send_to_extras", size="sm", min_width=100)
    infotext = gr.State("")
    image.change(describe, image, [html, infotext], show_progress="hidden")
    return PngInfoTab(image, html, infotext, send_txt2img, send_img2img, send_inpaint, send_extras)
