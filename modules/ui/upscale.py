"""The Upscale tab (A1111's "Extras"): one image, several, or a folder, through upscaler 1 (+ upscaler 2 blended).

The work itself is `modules.upscaling.run_extras`. Results keep the source's generation parameters and add
A1111's `postprocessing` text chunk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr
from PIL import Image

from modules import image_saving, upscaling
from modules.infotext import read_image_infotext
from modules.ui import batch
from modules.ui.common import ICONS, UIContext, error_html, note_html, to_float, to_int, user_message
from modules.ui.outputs import infotext_html, open_in_file_manager, save_named

TAB = "extras"


@dataclass
class UpscaleTab:
    image: Any  # where "send to upscale" puts an image
    mode: Any
    mode_tabs: Any

    def send_image(self, image: Image.Image) -> dict:
        return {self.image: image, self.mode: "single", self.mode_tabs: gr.update(selected=f"{TAB}_single")}


def upscaler_names() -> list[str]:
    return [u["name"] for u in upscaling.list_upscalers()]


def build(ctx: UIContext) -> UpscaleTab:
    mode, resize_mode = gr.State("single"), gr.State(0)
    names = upscaler_names()
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, elem_id=f"{TAB}_settings", elem_classes=["settings-column"]):
            with gr.Tabs(elem_id=f"{TAB}_mode_tabs") as mode_tabs:
                with gr.Tab("Single Image", id=f"{TAB}_single") as single_tab:
                    image = gr.Image(label="Source", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                     elem_id=f"{TAB}_image", height=380, format="png")
                with gr.Tab("Batch Process", id=f"{TAB}_batch") as batch_tab:
                    files = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id=f"{TAB}_image_batch")
                with gr.Tab("Batch from Directory", id=f"{TAB}_folder") as folder_tab:
                    input_dir = gr.Textbox(label="Input directory", elem_id=f"{TAB}_batch_input_dir")
                    output_dir = gr.Textbox(label="Output directory (empty = outputs/extras-images)",
                                            elem_id=f"{TAB}_batch_output_dir")
                    show_results = gr.Checkbox(label="Show result images", value=True)
            generate = gr.Button("Generate", variant="primary", elem_id=f"{TAB}_generate", size="lg")
            with gr.Tabs(elem_id=f"{TAB}_resize_mode"):
                with gr.Tab("Scale by", id=f"{TAB}_scale_by") as scale_by_tab:
                    scale = ctx.add(TAB, "Resize", gr.Slider, minimum=1.0, maximum=8.0, step=0.05, value=2.0,
                                    elem_id=f"{TAB}_upscaling_resize")
                with gr.Tab("Scale to", id=f"{TAB}_scale_to") as scale_to_tab:
                    with gr.Row():
                        width = ctx.add(TAB, "Width", gr.Number, value=512, precision=0, minimum=1, maximum=16384,
                                        elem_id=f"{TAB}_upscaling_resize_w")
                        height = ctx.add(TAB, "Height", gr.Number, value=512, precision=0, minimum=1, maximum=16384,
                                         elem_id=f"{TAB}_upscaling_resize_h")
                        crop = ctx.add(TAB, "Crop to fit", gr.Checkbox, value=True, elem_id=f"{TAB}_upscaling_crop")
            with gr.Row():
                upscaler_1 = ctx.add(TAB, "Upscaler 1", gr.Dropdown, choices=names, value=_pick(names, "Lanczos"),
                                     elem_id=f"{TAB}_upscaler_1")
                upscaler_2 = ctx.add(TAB, "Upscaler 2", gr.Dropdown, choices=names, value="None",
                                     elem_id=f"{TAB}_upscaler_2")
                visibility = ctx.add(TAB, "Upscaler 2 visibility", gr.Slider, minimum=0.0, maximum=1.0, step=0.001,
                                     value=0.0, elem_id=f"{TAB}_upscaler_2_visibility")
        with gr.Column(scale=4, min_width=360):
            status = gr.HTML("", elem_id=f"{TAB}_progress")
            gallery = gr.Gallery(label="Result", show_label=False, elem_id=f"{TAB}_gallery", columns=3, height=480,
                                 format="png", object_fit="contain", interactive=False,
                                 buttons=["download", "fullscreen"])
            open_folder = gr.Button("Open output folder", icon=str(ICONS / "folder.svg"), size="sm",
                                    elem_id=f"{TAB}_open_folder")
            info = gr.HTML("", elem_id=f"{TAB}_html_info", elem_classes=["infotext"])

    for tab, value in ((single_tab, "single"), (batch_tab, "batch"), (folder_tab, "folder")):
        tab.select(lambda v=value: v, None, mode, queue=False, show_progress="hidden")
    scale_by_tab.select(lambda: 0, None, resize_mode, queue=False, show_progress="hidden")
    scale_to_tab.select(lambda: 1, None, resize_mode, queue=False, show_progress="hidden")
    for dropdown in (upscaler_1, upscaler_2):
        dropdown.focus(lambda: gr.update(choices=upscaler_names()), None, dropdown, queue=False,
                       show_progress="hidden")

    def default_folder() -> Path:
        custom = ctx.settings.get("outdir_extras_samples")
        return Path(custom) if custom else image_saving.dated_folder(ctx.engine.paths.outputs_dir, "extras-images")

    def run(mode_value, single, many, in_dir, out_dir, show, rmode, scale_v, w, h, crop_v, up1, up2, vis):
        options = dict(resize_mode=int(rmode), upscaling_resize=to_float(scale_v, 0.05, 16.0, 2.0),
                       upscaling_resize_w=to_int(w, 1, 16384, 512), upscaling_resize_h=to_int(h, 1, 16384, 512),
                       upscaling_crop=bool(crop_v), upscaler_1=up1, upscaler_2=up2,
                       extras_upscaler_2_visibility=to_float(vis, 0.0, 1.0))
        try:
            sources, target = _sources(mode_value, single, many, in_dir, out_dir)
            results, last_info = [], ""
            for name, source in sources:
                upscaled, extras_text = upscaling.run_extras(source, **options)
                parameters, _ = read_image_infotext(source)
                folder = target or default_folder()
                path = _save(folder, name if target else None, upscaled, parameters, extras_text, ctx)
                results.append(str(path))
                last_info = (parameters + "\n" if parameters else "") + extras_text
        except Exception as e:
            return error_html(user_message(e)), gr.update(), gr.update()
        shown = results if (show or mode_value != "folder") else []
        return (note_html(f"Upscaled {len(results)} image(s) into {Path(results[0]).parent}.") if results else "",
                gr.update(value=shown), infotext_html(last_info))

    generate.click(run, [mode, image, files, input_dir, output_dir, show_results, resize_mode, scale, width, height,
                         crop, upscaler_1, upscaler_2, visibility], [status, gallery, info])

    def open_output():
        folder = default_folder()
        if getattr(ctx.args, "listen", False) or not open_in_file_manager(folder):
            return note_html(f"Images are in {folder}")
        return note_html(f"Opened {folder}")

    open_folder.click(open_output, None, status, queue=False)
    return UpscaleTab(image, mode, mode_tabs)


def _pick(names: list[str], wanted: str) -> str:
    return wanted if wanted in names else names[0]


def _sources(mode: str, single: Optional[Image.Image], many: Optional[list], in_dir: str,
             out_dir: str) -> tuple[list[tuple[Optional[str], Image.Image]], Optional[Path]]:
    """(name, image) pairs to upscale, and the folder to write them to (None: the dated outputs folder)."""
    if mode == "single":
        if single is None:
            raise ValueError("No image yet: upload one, or send one here from another tab")
        return [(None, single)], None
    if mode == "batch":
        if not many:
            raise ValueError("No images yet: drop some files into Batch Process")
        return [(Path(f).stem, Image.open(f)) for f in many], None
    folder = Path(os.path.expanduser((in_dir or "").strip()))
    if not (in_dir or "").strip() or not folder.is_dir():
        raise ValueError(f"Input directory not found: {in_dir or '(empty)'}")
    files = batch.image_files(folder)
    if not files:
        raise ValueError(f"No images in {folder}")
    target = Path(os.path.expanduser(out_dir.strip())) if (out_dir or "").strip() else None
    return [(f.stem, Image.open(f)) for f in files], target


def _save(folder: Path, name: Optional[str], image: Image.Image, parameters: Optional[str], extras_text: str,
          ctx: UIContext) -> Path:
    fmt = ctx.settings.get("samples_format") or "png"
    extra = {"postprocessing": extras_text} if extras_text else None
    if name is None:
        return image_saving.save_image(image, folder, seed=None, infotext=parameters, extension=fmt,
                                       extra_pnginfo=extra)
    return save_named(folder, name, image, parameters, fmt, extra)
