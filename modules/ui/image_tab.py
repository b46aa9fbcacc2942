"""What the img2img and Inpaint tabs share: input sub-tabs, resize mode, resize to / resize by, denoising strength.

A tab supplies its input sub-tabs; each sub-tab registers a *source*: a function from the form values to the
request's image fields (init image, mask, size), raising ValidationError when something is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import gradio as gr
from PIL import Image

from modules.errors import ValidationError
from modules.request import RESIZE_MODES, GenerationRequest
from modules.ui import extra_networks_ui
from modules.ui import params as P
from modules.ui.common import UIContext, to_float, to_size
from modules.ui.outputs import OutputPanel, build_output_panel
from modules.ui.progress import JobView
from modules.ui.toprow import Toprow, build_toprow

Source = Callable[[dict], dict]  # form values -> GenerationRequest image fields
Runner = Callable[["ImageTab", JobView, dict], Iterator[dict]]  # a source that runs its own jobs (batch)


@dataclass
class ImageTab:
    ctx: UIContext
    tab: str
    toprow: Optional[Toprow] = None
    params: P.Params = None  # type: ignore[assignment]
    panel: Optional[OutputPanel] = None
    mode: Any = None  # gr.State: the selected input sub-tab
    mode_tabs: Any = None  # the gr.Tabs holding the input sub-tabs
    resize_mode: Any = None
    resize_by: Any = None  # gr.State: True on the "Resize by" sub-tab
    scale: Any = None
    scale_info: Any = None
    image_size: Any = None  # gr.State: (w, h) of the current input image, for "Resize by"
    denoising: Any = None
    sources: dict[str, Source] = field(default_factory=dict)
    runners: dict[str, Runner] = field(default_factory=dict)
    inputs: set = field(default_factory=set)
    extra_fields: list[Callable[[dict], dict]] = field(default_factory=list)
    paste_targets: list[Callable[[GenerationRequest, set], dict]] = field(default_factory=list)
    image_target: Any = None  # where "send to" puts an image
    view: Optional[JobView] = None
    batch: Any = None  # the Batch sub-tab's folder inputs (img2img)

    def input_tab(self, label: str, mode: str, source: Optional[Source] = None, runner: Optional[Runner] = None):
        """A sub-tab for one way of giving the input image; use as a context manager."""
        tab = gr.Tab(label, id=f"{self.tab}_{mode}", elem_id=f"{self.tab}_{mode}_tab")
        tab.select(lambda: mode, None, self.mode, queue=False, show_progress="hidden")
        if source is not None:
            self.sources[mode] = source
        if runner is not None:
            self.runners[mode] = runner
        return tab

    def request(self, data: dict, image_fields: dict) -> GenerationRequest:
        """A request from the form plus a source's image fields (init_images, mask, maybe width/height)."""
        fields = {**self.toprow.request_fields(data), **self.params.request_fields(self.ctx, data)}
        init = image_fields["init_images"][0]
        if data[self.resize_by] and "width" not in image_fields:
            scale = to_float(data[self.scale], 0.05, 8.0, 1.0)
            fields["width"], fields["height"] = to_size(init.width * scale), to_size(init.height * scale)
        for extra in self.extra_fields:
            fields.update(extra(data))
        fields.update(image_fields)
        return GenerationRequest(resize_mode=RESIZE_MODES.index(data[self.resize_mode]),
                                 denoising_strength=to_float(data[self.denoising], 0.0, 1.0, 0.75), **fields)

    def paste(self, ctx: UIContext, req: GenerationRequest, carried: set[str]) -> dict:
        updates = {self.toprow.prompt: req.prompt, self.toprow.negative_prompt: req.negative_prompt,
                   **self.params.paste(ctx, req, carried)}
        if "Denoising strength" in carried:
            updates[self.denoising] = req.denoising_strength
        for target in self.paste_targets:
            updates.update(target(req, carried))
        return updates

    def send_image(self, image: Image.Image) -> dict:
        """Put an image into the first input sub-tab and switch to it."""
        first = next(iter(self.sources))
        return {self.image_target: image, self.image_size: image.size, self.mode: first,
                self.mode_tabs: gr.update(selected=f"{self.tab}_{first}")}


def scale_text(size: Optional[tuple], scale: float) -> str:
    if not size:
        return '<span class="hires-info">Resize: upload an image to see the new size</span>'
    w, h = size
    scale = to_float(scale, 0.05, 8.0, 1.0)
    new_w, new_h = to_size(w * scale), to_size(h * scale)
    return f'<span class="hires-info">Resize: from <b>{w}×{h}</b> to <b>{new_w}×{new_h}</b></span>'


def build_image_tab(ctx: UIContext, tab: str, build_inputs: Callable[[ImageTab], None],
                    build_controls: Optional[Callable[[ImageTab], None]] = None) -> ImageTab:
    it = ImageTab(ctx, tab)
    it.toprow = build_toprow(ctx, tab)
    extra_networks_ui.build(ctx, tab, it.toprow.prompt)
    it.params = p = P.Params(tab)
    it.mode, it.resize_by, it.image_size = gr.State(""), gr.State(False), gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, elem_id=f"{tab}_settings", elem_classes=["settings-column"]):
            with gr.Tabs(elem_id=f"{tab}_mode_tabs") as it.mode_tabs:
                build_inputs(it)
            it.mode.value = next(iter({**it.sources, **it.runners}))
            if build_controls is not None:
                build_controls(it)
            it.resize_mode = ctx.add(tab, "Resize mode", gr.Radio, choices=list(RESIZE_MODES), value=RESIZE_MODES[0],
                                     elem_id=f"{tab}_resize_mode")
            P.build_sampler(ctx, tab, p)
            with gr.Tabs(elem_id=f"{tab}_resize_tabs"):
                with gr.Tab("Resize to", id=f"{tab}_resize_to") as resize_to_tab:
                    P.build_size(ctx, tab, p)
                with gr.Tab("Resize by", id=f"{tab}_resize_by") as resize_by_tab:
                    it.scale = ctx.add(tab, "Scale", gr.Slider, minimum=0.05, maximum=4.0, step=0.05, value=1.0,
                                       elem_id=f"{tab}_scale")
                    it.scale_info = gr.HTML(scale_text(None, 1.0), elem_id=f"{tab}_scale_info")
            P.build_batch(ctx, tab, p)
            P.build_cfg(ctx, tab, p)
            it.denoising = ctx.add(tab, "Denoising strength", gr.Slider, minimum=0.0, maximum=1.0, step=0.01,
                                   value=0.75, elem_id=f"{tab}_denoising_strength")
            P.build_seed(ctx, tab, p)
            P.build_overrides_and_script(ctx, tab, p)
        with gr.Column(scale=4, min_width=360):
            it.panel = build_output_panel(ctx, tab, kind="img2img")
    p.wire(it.panel.gen_info, it.panel.selected)
    it.toprow.wire_token_counters(ctx, p.steps)
    resize_to_tab.select(lambda: False, None, it.resize_by, queue=False, show_progress="hidden")
    resize_by_tab.select(lambda: True, None, it.resize_by, queue=False, show_progress="hidden")
    for source in (it.scale, it.image_size):
        source.change(lambda size, scale: scale_text(size, scale), [it.image_size, it.scale], it.scale_info,
                      queue=False, show_progress="hidden")

    it.view = view = JobView(ctx, it.toprow, it.panel, kind="img2img")

    def run(data: dict) -> Iterator[dict]:
        mode = data[it.mode]
        if mode in it.runners:
            yield from it.runners[mode](it, view, data)
            return
        yield from view.run_single(lambda d: it.request(d, it.sources[mode](d)))(data)

    inputs = it.toprow.inputs | p.inputs | it.inputs | {it.mode, it.resize_mode, it.resize_by, it.scale,
                                                          it.denoising}
    view.wire(run, inputs)
    return it


def require_image(image: Optional[Image.Image], field_name: str = "init_images", what: str = "image") -> Image.Image:
    if image is None:
        raise ValidationError(field_name, f"no {what} yet: upload one (or send one here from another tab)")
    return image
