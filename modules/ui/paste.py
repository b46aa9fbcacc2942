""""Send to" buttons: an image and its infotext go to another tab, whose fields fill in from the infotext.

The infotext is read into a GenerationRequest (modules.infotext.request_from_infotext), and each tab maps
that request onto its own controls, override settings such as Clip skip included.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import gradio as gr
from PIL import Image

from modules.infotext import parse_infotext, request_from_infotext
from modules.request import GenerationRequest
from modules.ui.common import UIContext, user_message

# Infotext keys whose absence means "leave the control alone" when pasting (the rest have A1111 defaults).
PASTE_KEYS = {"Size-1", "Denoising strength", "Mask blur"}

ImageGetter = Callable[..., tuple[Optional[Image.Image], str]]  # source inputs -> (image, infotext)


def read(text: str) -> tuple[Optional[GenerationRequest], dict[str, Any]]:
    """The request an infotext describes, and its parameters by key (what targets test keys on, and where the
    scripts' controls read their own keys)."""
    if not text or not text.strip():
        return None, {}
    return request_from_infotext(text), parse_infotext(text)


def paste_outputs(ctx: UIContext, target: Any) -> list:
    """Every control a target's paste may set (found by pasting a request that uses everything)."""
    probe = GenerationRequest(enable_hr=True, subseed_strength=0.5, override_settings={"CLIP_stop_at_last_layers": 2})
    return list(target.paste(ctx, probe, PASTE_KEYS))


class SendTo:
    """Wires source buttons to one target tab."""

    def __init__(self, ctx: UIContext, tab_id: str, target: Any, image: bool, params: bool):
        self.ctx, self.tab_id, self.target = ctx, tab_id, target
        self.image, self.params = image, params
        outputs = [ctx.tabs]
        if image:
            outputs += list(target.send_image(Image.new("RGB", (8, 8))))
        if params:
            outputs += [c for c in paste_outputs(ctx, target) if c not in outputs]
        self.outputs = outputs

    def updates(self, image: Optional[Image.Image], text: str) -> dict:
        if self.image and image is None:
            gr.Warning("Nothing to send yet: generate or upload an image first.")
            return {}
        updates: dict[Any, Any] = {self.ctx.tabs: gr.update(selected=self.tab_id)}
        if self.image:
            updates.update(self.target.send_image(image))
        if self.params:
            try:
                request, carried = read(text)
            except Exception as e:  # a malformed infotext still sends the image
                gr.Warning(f"Could not read the parameters: {user_message(e)}")
                request = None
            if request is not None:
                updates.update(self.target.paste(self.ctx, request, carried))
        return updates

    def connect(self, button: Any, getter: ImageGetter, inputs: list) -> None:
        button.click(lambda *values: self.updates(*getter(*values)), inputs, self.outputs, show_progress="hidden")
