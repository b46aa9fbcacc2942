"""The img2img tab: an uploaded image or a sketch as the starting point, or a whole folder (Batch)."""
from __future__ import annotations

from typing import Optional

import gradio as gr
from PIL import Image

from modules.image_ops import to_rgb
from modules.ui import batch
from modules.ui.common import UIContext
from modules.ui.image_tab import ImageTab, build_image_tab, require_image

TAB = "img2img"
SKETCH_COLORS = ["#000000", "#ffffff", "#e03131", "#f08c00", "#ffd43b", "#2f9e44", "#1971c2", "#9c36b5", "#868e96"]


def editor_composite(value: Optional[dict]) -> Optional[Image.Image]:
    """The picture an ImageEditor shows: its background with every painted layer on top."""
    if not value:
        return None
    composite = value.get("composite")
    if composite is None:
        background, layers = value.get("background"), value.get("layers") or []
        if background is None and not layers:
            return None
        composite = background.convert("RGBA") if background is not None else Image.new("RGBA", layers[0].size)
        for layer in layers:
            composite.alpha_composite(layer.convert("RGBA").resize(composite.size))
    return to_rgb(composite)


def editor_size(value: Optional[dict]) -> Optional[tuple[int, int]]:
    image = (value or {}).get("background") or (value or {}).get("composite")
    return image.size if image is not None else None


def build(ctx: UIContext) -> ImageTab:
    def inputs(it: ImageTab) -> None:
        def image_source(d: dict) -> dict:
            return {"init_images": [require_image(d[init])]}

        def sketch_source(d: dict) -> dict:
            return {"init_images": [require_image(editor_composite(d[sketch]), what="sketch")]}

        with it.input_tab("img2img", "img2img", source=image_source):
            init = gr.Image(label="Image for img2img", type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                            elem_id=f"{TAB}_image", height=440, format="png")
        with it.input_tab("Sketch", "sketch", source=sketch_source):
            sketch = gr.ImageEditor(label="Sketch", type="pil", sources=["upload", "clipboard"], layers=False,
                                    transforms=(), brush=gr.Brush(colors=SKETCH_COLORS, default_color="#000000"),
                                    eraser=gr.Eraser(), elem_id=f"{TAB}_sketch", height=440, format="png",
                                    canvas_size=(512, 512))
        with it.input_tab("Batch", "batch", runner=batch.run):
            batch.build_batch_inputs(it, TAB)
        it.inputs |= {init, sketch}
        it.image_target = init
        init.change(lambda im: im.size if im is not None else None, init, it.image_size, queue=False,
                    show_progress="hidden")
        sketch.upload(editor_size, sketch, it.image_size, queue=False, show_progress="hidden")

    return build_image_tab(ctx, TAB, inputs)
