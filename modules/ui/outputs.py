"""The output column of a generation tab: progress, live preview, gallery, infotext and the buttons under it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr
from PIL import Image

from modules import image_saving
from modules.jobs import Job
from modules.ui.common import UIContext, error_html, esc, note_html, tool_button


@dataclass
class OutputPanel:
    tab: str
    kind: str  # "txt2img" or "img2img": which outputs folder
    progress: Any
    preview: Any
    gallery: Any
    infotext: Any
    log: Any
    download: Any
    gen_info: Any  # gr.State: {"images", "infotexts", "seeds", "subseeds", "first"}
    selected: Any  # gr.State: index of the selected gallery item
    job_id: Any  # gr.BrowserState: the tab's job, kept across page reloads
    open_folder: Any
    save: Any
    send_img2img: Any
    send_inpaint: Any
    send_extras: Any

    @property
    def outputs(self) -> list:
        return [self.progress, self.preview, self.gallery, self.infotext, self.gen_info, self.selected, self.job_id]


def build_output_panel(ctx: UIContext, tab: str, kind: str) -> OutputPanel:
    with gr.Column(elem_id=f"{tab}_results", elem_classes=["results"]):
        progress = gr.HTML("", elem_id=f"{tab}_progress", elem_classes=["progress-box"])
        preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{tab}_preview",
                           height=320, format="jpeg", buttons=[])
        gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{tab}_gallery", columns=4, height=480,
                             format="png", object_fit="contain", interactive=False, preview=True,
                             buttons=["download", "fullscreen"])
        with gr.Row(elem_id=f"{tab}_output_buttons", elem_classes=["output-buttons"]):
            open_folder = tool_button("folder", f"{tab}_open_folder")
            save = tool_button("save", f"{tab}_save")
            send_img2img = tool_button("image", f"{tab}_send_to_img2img")
            send_inpaint = tool_button("brush", f"{tab}_send_to_inpaint")
            send_extras = tool_button("upscale", f"{tab}_send_to_extras")
        download = gr.File(label="Saved file", visible=False, interactive=False, elem_id=f"{tab}_download")
        infotext = gr.HTML("", elem_id=f"{tab}_html_info", elem_classes=["infotext"])
        log = gr.HTML("", elem_id=f"{tab}_html_log")
    panel = OutputPanel(tab, kind, progress, preview, gallery, infotext, log, download, gr.State({}), gr.State(0),
                        gr.BrowserState("", storage_key=f"atelier_{tab}_job"), open_folder, save, send_img2img,
                        send_inpaint, send_extras)
    _wire(ctx, panel)
    return panel


def infotext_html(text: str, extra: str = "") -> str:
    if not text:
        return extra
    lines = "<br>".join(esc(line) for line in text.split("\n"))
    return f'<div class="infotext-body"><p>{lines}</p>{extra}</div>'


def result_updates(ctx: UIContext, panel: OutputPanel, job: Job) -> dict:
    """Gallery, infotext and gen_info for a finished job (what it finished, if interrupted)."""
    out = job.result
    if out is None or not getattr(out, "images", None):
        return {panel.preview: gr.update(value=None, visible=False)}
    items: list = []
    infotexts = list(out.infotexts)
    first = 0
    if out.grid is not None and ctx.settings.get("return_grid"):
        items.append(out.grid)
        infotexts.insert(0, out.infotexts[0])
        first = 1
    saved = len(out.paths) == len(out.images)
    items += [str(p) for p in out.paths] if saved else list(out.images)
    taken = (job.finished or 0) - (job.started or job.created)
    notes = "".join(f'<p class="atelier-note">{esc(n)}</p>' for n in getattr(out.result, "notes", []))
    meta = f'<p class="meta">Time taken: {taken:.1f} s</p>{notes}' if taken > 0 else notes
    return show_images(panel, items, infotexts, first=first, meta=meta, seeds=getattr(out.result, "seeds", []),
                       subseeds=getattr(out.result, "subseeds", []))


def show_images(panel: OutputPanel, items: list, infotexts: list[str], *, first: int = 0, meta: str = "",
                seeds: list[int] = (), subseeds: list[int] = ()) -> dict:
    """Updates that put images (paths or PIL) in the gallery, with what the other buttons need to know."""
    info = {"images": items, "infotexts": infotexts, "first": first, "meta": meta, "seeds": list(seeds),
            "subseeds": list(subseeds)}
    return {panel.gallery: gr.update(value=items, selected_index=None), panel.gen_info: info, panel.selected: 0,
            panel.infotext: infotext_html(infotexts[0] if infotexts else "", meta)}


def selected_item(info: Optional[dict], index: Optional[int]) -> tuple[Optional[Image.Image], str, Optional[str]]:
    """(image, infotext, path) of the gallery item the artist selected (the first one if none)."""
    if not info or not info.get("images"):
        return None, "", None
    images = info["images"]
    i = min(max(int(index or 0), 0), len(images) - 1)
    item = images[i]
    text = info["infotexts"][i] if i < len(info["infotexts"]) else ""
    if isinstance(item, str):
        return Image.open(item), text, item
    return item, text, None


def save_named(folder: Path, stem: str, image: Image.Image, infotext: Optional[str], fmt: str,
               extra: Optional[dict] = None) -> Path:
    """Write `<folder>/<stem>.<fmt>` with its infotext (batch outputs keep their input's name, as in A1111)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.{fmt}"
    tmp = folder / f".{stem}.{fmt}.tmp"
    tmp.write_bytes(image_saving.encode_image(image, fmt, infotext, extra))
    os.replace(tmp, path)
    return path


def open_in_file_manager(folder: Path) -> bool:
    try:
        if sys.platform == "win32":
            os.startfile(str(folder))  # type: ignore[attr-defined]
        elif sys.platform == "darwin":
            subprocess.Popen(["open", str(folder)])
        elif shutil.which("xdg-open") and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            subprocess.Popen(["xdg-open", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            return False
    except OSError:
        return False
    return True


def _wire(ctx: UIContext, panel: OutputPanel) -> None:
    engine = ctx.engine

    def select(info: dict, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        _, text, _ = selected_item(info, index)
        return index, infotext_html(text, (info or {}).get("meta", ""))

    def open_folder(info: dict, index: int):
        _, _, path = selected_item(info, index)
        custom = ctx.settings.get(f"outdir_{panel.kind}_samples")
        folder = Path(path).parent if path else Path(custom) if custom else \
            image_saving.dated_folder(engine.paths.outputs_dir, f"{panel.kind}-images")
        if getattr(ctx.args, "listen", False) or not open_in_file_manager(folder):
            return note_html(f"Images are in {folder}")  # a remote browser can't see this machine's desktop
        return note_html(f"Opened {folder}")

    def save(info: dict, index: int):
        image, text, _ = selected_item(info, index)
        if image is None:
            return gr.update(visible=False), error_html("Nothing to save yet: generate an image first.")
        fmt = ctx.settings.get("samples_format") or "png"
        try:
            path = image_saving.save_image(image, engine.paths.outputs_dir / "saved", seed=None, infotext=text or None,
                                           extension=fmt)
        except OSError as e:
            return gr.update(visible=False), error_html(f"Could not save: {e}")
        return gr.update(value=str(path), visible=True), note_html(f"Saved {path}")

    panel.gallery.select(select, panel.gen_info, [panel.selected, panel.infotext], queue=False,
                         show_progress="hidden")
    panel.open_folder.click(open_folder, [panel.gen_info, panel.selected], panel.log, queue=False)
    panel.save.click(save, [panel.gen_info, panel.selected], [panel.download, panel.log])
