"""The Gradio web UI: a thin adapter that turns the artist's forms into GenerationRequests for the engine.

One module per tab (txt2img, img2img, inpaint, upscale, pnginfo, settings_tab), with what they share in
toprow (prompts, buttons, styles), params (sampler, size, seed…), outputs and progress (gallery, job display).
"""
from __future__ import annotations


def build_ui(engine, args):
    from modules.ui.app import build_ui as build

    return build(engine, args)
