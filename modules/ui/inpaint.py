"""The Inpaint tab: paint the mask in the browser, sketch in colour, upload a mask, or extend the canvas (outpaint).

The mask the core receives is exactly what was painted: the painted layers' alpha, as an "L" image the size
of the picture (white = repaint). Outpainting pads the picture (edge pixels stretched outwards) and masks the
new area plus a small overlap, so the model blends the seam.
"""
from __future__ import annotations

from typing import Optional

import gradio as gr
import numpy as np
from PIL import Image, ImageChops

from modules.errors import ValidationError
from modules.image_ops import to_rgb
from modules.request import INPAINTING_FILL, GenerationRequest
from modules.ui.common import UIContext, to_int
from modules.ui.image_tab import ImageTab, build_image_tab, require_image
from modules.ui.img2img import SKETCH_COLORS, editor_composite, editor_size

TAB = "inpaint"
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
DIRECTIONS = ("left", "right", "up", "down")
MASK_COLOR = "#ffffff"


def painted_mask(value: Optional[dict]) -> Optional[Image.Image]:
    """Union of the editor's painted layers' alpha, at the background's size; None when nothing is painted."""
    if not value:
        return None
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    background = value.get("background")
    size = background.size if background is not None else (layers[0].size if layers else None)
    if size is None:
        return None
    mask = Image.new("L", size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha)
    return mask if mask.getbbox() else None


def uploaded_mask(image: Optional[Image.Image]) -> Optional[Image.Image]:
    """An uploaded mask as "L": its alpha if it has transparency, else its brightness."""
    if image is None:
        return None
    if image.mode in ("RGBA", "LA", "PA") and image.getextrema()[-1][0] < 255:
        return image.getchannel("A")
    return image.convert("L")


def outpaint_canvas(image: Image.Image, pixels: int, directions: list[str], overlap: int) -> dict:
    """The picture padded in the chosen directions (edges stretched), a mask of the new area, and the new size."""
    if not directions:
        raise ValidationError("Outpainting direction", "choose at least one side to extend")
    image = to_rgb(image)
    w, h = image.size
    pad = {d: (pixels if d in directions else 0) for d in DIRECTIONS}
    pad["right"] += (-(w + pad["left"] + pad["right"])) % 8  # keep the size a multiple of 8
    pad["down"] += (-(h + pad["up"] + pad["down"])) % 8
    array = np.pad(np.asarray(image), ((pad["up"], pad["down"]), (pad["left"], pad["right"]), (0, 0)), mode="edge")
    canvas = Image.fromarray(array)
    mask = Image.new("L", canvas.size, 255)
    inner = [pad["left"] + (overlap if pad["left"] else 0), pad["up"] + (overlap if pad["up"] else 0),
             pad["left"] + w - (overlap if pad["right"] else 0), pad["up"] + h - (overlap if pad["down"] else 0)]
    if inner[2] > inner[0] and inner[3] > inner[1]:
        mask.paste(0, tuple(inner))
    return {"init_images": [canvas], "mask": mask, "width": canvas.width, "height": canvas.height}


def _require_mask(mask: Optional[Image.Image]) -> Image.Image:
    return require_image(mask, "mask", what="mask: paint over the area to repaint")


def build(ctx: UIContext) -> ImageTab:
    controls = {}

    def inputs(it: ImageTab) -> None:
        def inpaint_source(d: dict) -> dict:
            value = d[editor]
            background = require_image((value or {}).get("background"))
            return {"init_images": [to_rgb(background)], "mask": _require_mask(painted_mask(value))}

        def sketch_source(d: dict) -> dict:
            value = d[sketch]
            image = require_image(editor_composite(value))
            return {"init_images": [image], "mask": _require_mask(painted_mask(value))}

        def upload_source(d: dict) -> dict:
            return {"init_images": [require_image(d[upload_image])],
                    "mask": _require_mask(uploaded_mask(d[upload_mask]))}

        def outpaint_source(d: dict) -> dict:
            image = require_image(d[out_image])
            overlap = max(4, to_int(d[controls["blur"]], 0, 64, 4) * 2)
            return outpaint_canvas(image, to_int(d[out_pixels], 8, 1024, 128), d[out_directions] or [], overlap)

        with it.input_tab("Inpaint", "inpaint", source=inpaint_source):
            editor = gr.ImageEditor(label="Image for inpainting with mask", type="pil", sources=["upload", "clipboard"],
                                    layers=False, transforms=(), elem_id=f"{TAB}_editor", height=480, format="png",
                                    brush=gr.Brush(colors=[MASK_COLOR], default_color=MASK_COLOR, color_mode="fixed",
                                                   default_size=16),
                                    eraser=gr.Eraser(default_size=16))
        with it.input_tab("Inpaint sketch", "sketch", source=sketch_source):
            sketch = gr.ImageEditor(label="Color sketch inpainting", type="pil", sources=["upload", "clipboard"],
                                    layers=False, transforms=(), elem_id=f"{TAB}_sketch", height=480, format="png",
                                    brush=gr.Brush(colors=SKETCH_COLORS, default_color="#e03131"))
        with it.input_tab("Inpaint upload", "upload", source=upload_source):
            with gr.Row():
                upload_image = gr.Image(label="Image", type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                        elem_id=f"{TAB}_upload_image", height=320, format="png")
                upload_mask = gr.Image(label="Mask (white = repaint)", type="pil", image_mode="RGBA",
                                       sources=["upload", "clipboard"], elem_id=f"{TAB}_upload_mask", height=320,
                                       format="png")
        with it.input_tab("Outpaint", "outpaint", source=outpaint_source):
            out_image = gr.Image(label="Image to extend", type="pil", image_mode="RGBA",
                                 sources=["upload", "clipboard"], elem_id=f"{TAB}_outpaint_image", height=320,
                                 format="png")
            with gr.Row():
                out_pixels = ctx.add(TAB, "Pixels to expand", gr.Slider, minimum=8, maximum=512, step=8, value=128,
                                     elem_id=f"{TAB}_outpaint_pixels")
                out_directions = ctx.add(TAB, "Outpainting direction", gr.CheckboxGroup, choices=list(DIRECTIONS),
                                         value=list(DIRECTIONS), elem_id=f"{TAB}_outpaint_directions")
            gr.Markdown('The new area is masked, with a little overlap, and the result has the extended size '
                        '(Resize to / by don\'t apply). Masked content "fill" or "latent noise" usually blends best.',
                        elem_classes=["hint"])
        it.inputs |= {editor, sketch, upload_image, upload_mask, out_image, out_pixels, out_directions}
        it.image_target = editor
        editor.upload(editor_size, editor, it.image_size, queue=False, show_progress="hidden")
        sketch.upload(editor_size, sketch, it.image_size, queue=False, show_progress="hidden")
        upload_image.change(lambda im: im.size if im is not None else None, upload_image, it.image_size,
                            queue=False, show_progress="hidden")

    def mask_controls(it: ImageTab) -> None:
        with gr.Row():
            controls["blur"] = ctx.add(TAB, "Mask blur", gr.Slider, minimum=0, maximum=64, step=1, value=4,
                                       elem_id=f"{TAB}_mask_blur")
            controls["mode"] = ctx.add(TAB, "Mask mode", gr.Radio, choices=list(MASK_MODES), value=MASK_MODES[0],
                                       elem_id=f"{TAB}_mask_mode")
        controls["fill"] = ctx.add(TAB, "Masked content", gr.Radio, choices=list(INPAINTING_FILL),
                                   value=INPAINTING_FILL[1], elem_id=f"{TAB}_inpainting_fill")
        with gr.Row():
            controls["area"] = ctx.add(TAB, "Inpaint area", gr.Radio, choices=list(INPAINT_AREAS),
                                       value=INPAINT_AREAS[0], elem_id=f"{TAB}_inpaint_full_res")
            controls["padding"] = ctx.add(TAB, "Only masked padding, pixels", gr.Slider, minimum=0, maximum=256,
                                          step=4, value=32, elem_id=f"{TAB}_inpaint_full_res_padding")
        it.inputs |= set(controls.values())
        it.extra_fields.append(lambda d: {
            "mask_blur": to_int(d[controls["blur"]], 0, 256, 4),
            "inpainting_mask_invert": MASK_MODES.index(d[controls["mode"]]),
            "inpainting_fill": INPAINTING_FILL.index(d[controls["fill"]]),
            "inpaint_full_res": d[controls["area"]] == INPAINT_AREAS[1],
            "inpaint_full_res_padding": to_int(d[controls["padding"]], 0, 1024, 32)})
        it.paste_targets.append(paste_mask_controls)

    def paste_mask_controls(req: GenerationRequest, carried: set[str]) -> dict:
        updates = {controls["mode"]: MASK_MODES[req.inpainting_mask_invert],
                   controls["fill"]: INPAINTING_FILL[req.inpainting_fill],
                   controls["area"]: INPAINT_AREAS[int(req.inpaint_full_res)],
                   controls["padding"]: req.inpaint_full_res_padding}
        if "Mask blur" in carried:
            updates[controls["blur"]] = req.mask_blur
        return updates

    return build_image_tab(ctx, TAB, inputs, mask_controls)
