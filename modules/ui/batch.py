"""img2img's Batch sub-tab: every image of an input folder, one job each, optional masks and output folder.

As in A1111: a mask with the same file name (any image extension) in the mask folder makes that image an
inpaint; with an output folder, results are written there under the input's name instead of outputs/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr
from PIL import Image

from modules import builtin_scripts
from modules.jobs import JobState
from modules.ui.common import note_html, user_message
from modules.ui.outputs import save_named, show_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class BatchInputs:
    input_dir: Any
    output_dir: Any
    mask_dir: Any


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_mask(mask_dir: Optional[Path], image: Path) -> Optional[Path]:
    if mask_dir is None:
        return None
    for candidate in image_files(mask_dir):
        if candidate.stem == image.stem:
            return candidate
    return None


def build_batch_inputs(it, tab: str) -> BatchInputs:
    gr.Markdown("Process every image in a folder on this machine. A mask with the same name in the mask folder "
                "makes that image an inpaint. Leave the output folder empty to save in the usual outputs folder.")
    input_dir = gr.Textbox(label="Input directory", elem_id=f"{tab}_batch_input_dir")
    output_dir = gr.Textbox(label="Output directory", elem_id=f"{tab}_batch_output_dir")
    mask_dir = gr.Textbox(label="Inpaint batch mask directory (optional)", elem_id=f"{tab}_batch_inpaint_mask_dir")
    batch = BatchInputs(input_dir, output_dir, mask_dir)
    it.inputs |= {input_dir, output_dir, mask_dir}
    it.batch = batch
    return batch


def _folder(value: str, label: str, must_exist: bool = True) -> Optional[Path]:
    value = (value or "").strip()
    if not value:
        return None
    folder = Path(os.path.expanduser(value))
    if must_exist and not folder.is_dir():
        raise ValueError(f"{label} not found: {folder}")
    return folder


def run(it, view, data: dict) -> Iterator[dict]:
    batch: BatchInputs = it.batch
    try:
        input_dir = _folder(data[batch.input_dir], "Input directory")
        if input_dir is None:
            raise ValueError("Input directory: enter the folder of images to process")
        output_dir = _folder(data[batch.output_dir], "Output directory", must_exist=False)
        mask_dir = _folder(data[batch.mask_dir], "Mask directory")
        files = image_files(input_dir)
        if not files:
            raise ValueError(f"No images in {input_dir}")
    except (OSError, ValueError) as e:
        yield view.error(str(e))
        return
    items, infotexts, seeds = [], [], []
    job = None
    for number, path in enumerate(files, 1):
        try:
            image = Image.open(path)
            image.load()
            mask_path = find_mask(mask_dir, path)
            fields = {"init_images": [image], "mask": Image.open(mask_path) if mask_path else None}
            request = it.request(data, fields)
            if request.script_name and request.script_name.lower() in builtin_scripts.list_scripts()["img2img"]:
                raise ValueError(f"the {request.script_name} script doesn't run on a Batch folder; choose None")
            request.do_not_save_samples = output_dir is not None
            job = view.submit(request)
        except Exception as e:
            yield view.error(f"{path.name}: {user_message(e)}")
            return
        yield view.running(job) if number == 1 else {view.panel.job_id: job.id}
        yield from view.follow(job, prefix=f"Batch {number}/{len(files)} · ", final=False)
        out = job.result
        if out is not None:
            for i, (result, text) in enumerate(zip(out.images, out.infotexts)):
                if output_dir is not None:
                    stem = path.stem if i == 0 else f"{path.stem}-{i}"
                    fmt = it.ctx.settings.get("samples_format") or "png"
                    result = str(save_named(output_dir, stem, result, text, fmt))
                elif i < len(out.paths):
                    result = str(out.paths[i])
                items.append(result)
                infotexts.append(text)
            seeds += list(getattr(out.result, "seeds", []))
        if job.state is not JobState.done:
            break
    final = view.finished(job)
    if job.state is JobState.done:
        final[view.panel.progress] = note_html(f"Processed {len(files)} image(s)"
                                               + (f" into {output_dir}." if output_dir else "."))
    final.update(show_images(view.panel, items, infotexts, seeds=seeds, subseeds=seeds))
    yield final

