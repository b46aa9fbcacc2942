"""build_ui: the quicksettings row, the tabs, the "send to" wiring and what happens on page load."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.engine import Engine
from modules.extension_callbacks import run_ui_tabs
from modules.ui import (component_hooks, extensions_tab, img2img, merger_tab, inpaint, pnginfo, quicksettings,
                        settings_tab, txt2img, upscale)
from modules.ui.common import UIConfig, UIContext
from modules.ui.outputs import selected_item
from modules.ui.paste import SendTo
from modules.ui.styles_store import StyleStore

log = logging.getLogger(__name__)
ASSETS = Path(__file__).with_name("assets")


def head_html() -> str:
    """Our CSS and JS, inlined into the page's <head>: nothing is fetched from anywhere else."""
    css = (ASSETS / "style.css").read_text(encoding="utf-8")
    js = (ASSETS / "script.js").read_text(encoding="utf-8")
    return f"<style>{css}</style><script>{js}</script>"


def build_ui(engine: Engine, args: argparse.Namespace) -> gr.Blocks:
    ctx = UIContext(engine, args, UIConfig(engine.paths.data_dir / "ui-config.json"),
                    styles=StyleStore(engine.paths.styles_file))
    with component_hooks.installed() as hooks:  # extensions' before/after_component, as A1111 calls them
        extension_tabs = run_ui_tabs()  # each callback builds its own Blocks, outside ours
        blocks = _build_blocks(ctx, hooks, extension_tabs)
    ctx.ui_config.write_missing()
    for warning in ctx.ui_config.warnings:
        log.warning(warning)
    return blocks


def _build_blocks(ctx: UIContext, hooks: component_hooks.ComponentHooks, extension_tabs: list) -> gr.Blocks:
    scripts = ctx.engine.scripts
    with gr.Blocks(title="Atelier", analytics_enabled=False, fill_width=True) as blocks:
        ctx.blocks = blocks
        gr.HTML("", head=head_html(), elem_id="atelier_head", padding=False)
        quick = quicksettings.build(ctx)
        with gr.Tabs(elem_id="tabs") as ctx.tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"), hooks.scripts(scripts.txt2img):
                t2i = txt2img.build(ctx)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"), hooks.scripts(scripts.img2img):
                i2i = img2img.build(ctx)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"), hooks.scripts(scripts.img2img):
                inp = inpaint.build(ctx)  # A1111's inpaint is part of img2img: its scripts see these
            with gr.Tab("Upscale", id="extras", elem_id="tab_extras"):
                ups = upscale.build(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build(ctx)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                merger_tab.build(ctx, quick.checkpoint)
            extensions_tab.render_extension_tabs(extension_tabs)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_tab.build(ctx)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(ctx)
        _wire_send_to(ctx, t2i, i2i, inp, ups, png)
        _wire_page_load(ctx)
    return blocks


def _wire_send_to(ctx: UIContext, t2i, i2i, inp, ups, png) -> None:
    to_txt2img = SendTo(ctx, "txt2img", t2i, image=False, params=True)
    to_img2img = SendTo(ctx, "img2img", i2i, image=True, params=True)
    to_inpaint = SendTo(ctx, "inpaint", inp, image=True, params=True)
    to_extras = SendTo(ctx, "extras", ups, image=True, params=False)

    def from_gallery(info, index):
        image, text, _ = selected_item(info, index)
        return image, text

    for panel in (t2i.panel, i2i.panel, inp.panel):
        inputs = [panel.gen_info, panel.selected]
        to_img2img.connect(panel.send_img2img, from_gallery, inputs)
        to_inpaint.connect(panel.send_inpaint, from_gallery, inputs)
        to_extras.connect(panel.send_extras, from_gallery, inputs)

    def from_file(path, text):
        return (Image.open(path) if path else None), text or ""

    inputs = [png.image, png.infotext]
    to_txt2img.connect(png.send_txt2img, lambda path, text: (None, text or ""), inputs)
    to_img2img.connect(png.send_img2img, from_file, inputs)
    to_inpaint.connect(png.send_inpaint, from_file, inputs)
    to_extras.connect(png.send_extras, from_file, inputs)


def _wire_page_load(ctx: UIContext) -> None:
    """One load event: saved defaults (ui-config.json), settings and quicksettings as they are now."""
    outputs = {c.component for c in ctx.ui_config.controls.values()}

    def collect() -> dict:
        updates = ctx.ui_config.updates()
        for loader in ctx.loaders:
            updates.update(loader())
        return updates

    probe = {}
    for loader in ctx.loaders:
        probe.update(loader())
    outputs |= set(probe)
    ctx.blocks.load(collect, None, list(outputs), show_progress="hidden")
