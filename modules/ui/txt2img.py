"""The txt2img tab: prompts, parameters, hires fix, scripts placeholder, output panel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import upscaling
from modules.processing import LATENT_UPSCALE_MODES, hires_size
from modules.request import MAX_STEPS, GenerationRequest
from modules.ui import extra_networks_ui
from modules.ui import params as P
from modules.ui.common import UIContext, esc, to_float, to_int, to_size
from modules.ui.outputs import OutputPanel, build_output_panel
from modules.ui.progress import JobView
from modules.ui.toprow import Toprow, build_toprow

TAB = "txt2img"


@dataclass
class Hires:
    enable: Any
    upscaler: Any
    steps: Any
    denoising: Any
    scale: Any
    resize_x: Any
    resize_y: Any
    info: Any

    @property
    def inputs(self) -> set:
        return {self.enable, self.upscaler, self.steps, self.denoising, self.scale, self.resize_x, self.resize_y}


@dataclass
class Txt2ImgTab:
    toprow: Toprow
    params: P.Params
    hires: Hires
    panel: OutputPanel

    def paste(self, ctx: UIContext, req: GenerationRequest, carried: set[str]) -> dict:
        h = self.hires
        updates = {self.toprow.prompt: req.prompt, self.toprow.negative_prompt: req.negative_prompt,
                   **self.params.paste(ctx, req, carried), h.enable: req.enable_hr}
        if req.enable_hr:
            updates.update({h.scale: req.hr_scale, h.steps: req.hr_second_pass_steps, h.resize_x: req.hr_resize_x,
                            h.resize_y: req.hr_resize_y, h.denoising: req.denoising_strength})
            if req.hr_upscaler in hires_upscalers():
                updates[h.upscaler] = req.hr_upscaler
        return updates


def hires_upscalers() -> list[str]:
    names = list(LATENT_UPSCALE_MODES)
    names += [u["name"] for u in upscaling.list_upscalers() if u["name"] not in names]
    return names


def hires_text(width: float, height: float, scale: float, resize_x: float, resize_y: float) -> str:
    req = GenerationRequest(width=to_size(width), height=to_size(height), hr_scale=to_float(scale, 1.0, 8.0, 2.0),
                            hr_resize_x=to_int(resize_x, 0, 8192), hr_resize_y=to_int(resize_y, 0, 8192))
    target_w, target_h = hires_size(req)
    return (f'<span class="hires-info">from <b>{req.width}×{req.height}</b> to '
            f'<b>{esc(target_w)}×{esc(target_h)}</b></span>')


def build_hires(ctx: UIContext) -> Hires:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{TAB}_hires_fix"):
        with gr.Row():
            enable = ctx.add(TAB, "Hires. fix", gr.Checkbox, value=False, elem_id=f"{TAB}_enable_hr", scale=1)
            info = gr.HTML(hires_text(512, 512, 2.0, 0, 0), elem_id=f"{TAB}_hr_info", scale=3)
        with gr.Row():
            names = hires_upscalers()
            upscaler = ctx.add(TAB, "Upscaler", gr.Dropdown, choices=names, value=names[0],
                               elem_id=f"{TAB}_hr_upscaler")
            steps = ctx.add(TAB, "Hires steps", gr.Slider, minimum=0, maximum=150, step=1, value=0,
                            elem_id=f"{TAB}_hires_steps")
            denoising = ctx.add(TAB, "Denoising strength", gr.Slider, minimum=0.0, maximum=1.0, step=0.01,
                                value=0.7, elem_id=f"{TAB}_denoising_strength")
        with gr.Row():
            scale = ctx.add(TAB, "Upscale by", gr.Slider, minimum=1.0, maximum=4.0, step=0.05, value=2.0,
                            elem_id=f"{TAB}_hr_scale")
            resize_x = ctx.add(TAB, "Resize width to", gr.Slider, minimum=0, maximum=2048, step=8, value=0,
                               elem_id=f"{TAB}_hr_resize_x")
            resize_y = ctx.add(TAB, "Resize height to", gr.Slider, minimum=0, maximum=2048, step=8, value=0,
                               elem_id=f"{TAB}_hr_resize_y")
    return Hires(enable, upscaler, steps, denoising, scale, resize_x, resize_y, info)


def wire_hires_info(hires: Hires, p: P.Params) -> None:
    """Keep "from W×H to W'×H'" true as the size or the hires settings change."""
    sources = [p.width, p.height, hires.scale, hires.resize_x, hires.resize_y]
    for source in sources:
        source.change(hires_text, sources, hires.info, queue=False, show_progress="hidden",
                      trigger_mode="always_last")


def build(ctx: UIContext) -> Txt2ImgTab:
    toprow = build_toprow(ctx, TAB)
    extra_networks_ui.build(ctx, TAB, toprow.prompt)
    p = P.Params(TAB)
    with gr.Row(elem_id=f"{TAB}_extra_networks_and_settings", equal_height=False):
        with gr.Column(scale=5, elem_id=f"{TAB}_settings", elem_classes=["settings-column"]):
            P.build_sampler(ctx, TAB, p)
            hires = build_hires(ctx)
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    P.build_size(ctx, TAB, p)
                with gr.Column(scale=2):
                    P.build_batch(ctx, TAB, p)
            P.build_cfg(ctx, TAB, p)
            P.build_seed(ctx, TAB, p)
            P.build_overrides_and_script(ctx, TAB, p)
        with gr.Column(scale=4, min_width=360):
            panel = build_output_panel(ctx, TAB, kind="txt2img")
    p.wire(panel.gen_info, panel.selected)
    wire_hires_info(hires, p)
    toprow.wire_token_counters(ctx, p.steps)
    tab = Txt2ImgTab(toprow, p, hires, panel)

    def build_request(data: dict) -> GenerationRequest:
        h = hires
        return GenerationRequest(
            **toprow.request_fields(data), **p.request_fields(ctx, data),
            enable_hr=bool(data[h.enable]), hr_scale=to_float(data[h.scale], 1.0, 8.0, 2.0),
            hr_upscaler=data[h.upscaler], hr_second_pass_steps=to_int(data[h.steps], 0, MAX_STEPS),
            hr_resize_x=to_int(data[h.resize_x], 0, 8192) // 8 * 8,
            hr_resize_y=to_int(data[h.resize_y], 0, 8192) // 8 * 8,
            denoising_strength=to_float(data[h.denoising], 0.0, 1.0, 0.7))

    view = JobView(ctx, toprow, panel, kind="txt2img")
    view.wire(view.run_single(build_request), toprow.inputs | p.inputs | hires.inputs)
    return tab
