"""A1111's `modules.images` functions over modules/image_saving.py, modules/image_ops.py and infotext."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from PIL import Image

from modules import extension_callbacks as callbacks
from modules import image_ops, image_saving, infotext


def save_image(image: Image.Image, path: str, basename: str = "", seed: Optional[int] = None,
               prompt: Optional[str] = None, extension: str = "png", info: Optional[str] = None,
               short_filename: bool = False, no_prompt: bool = False, grid: bool = False,
               pnginfo_section_name: str = "parameters", p: Any = None, existing_info: Optional[dict] = None,
               forced_filename: Optional[str] = None, suffix: str = "",
               save_to_dirs: Optional[bool] = None) -> tuple[str, Optional[str]]:
    """Save with infotext `info` under `path` (Atelier's numbering), or as `forced_filename`; runs the
    on_before_image_saved / on_image_saved callbacks. Returns (file path, None)."""
    pnginfo = {k: str(v) for k, v in (existing_info or {}).items()}
    if info:
        pnginfo[pnginfo_section_name] = info
    params = callbacks.ImageSaveParams(image, p, str(path), pnginfo)
    callbacks.run_before_image_saved(params)
    ext = extension.lower().lstrip(".")
    text = params.pnginfo.get("parameters")
    extra = {k: str(v) for k, v in params.pnginfo.items() if k != "parameters"}
    if forced_filename:
        target = Path(path) / f"{forced_filename}{suffix}.{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image_saving.encode_image(params.image, ext, text, extra))
    else:
        target = image_saving.save_image(params.image, path, seed=seed, infotext=text, extension=ext,
                                         extra_pnginfo=extra, basename=basename if not grid else basename or "grid")
    params.filename = str(target)
    callbacks.run_image_saved(params)
    return str(target), None


def image_grid(imgs: list[Image.Image], batch_size: int = 1, rows: Optional[int] = None) -> Image.Image:
    return image_saving.make_grid(imgs, rows=rows if rows and rows > 0 else None)


def read_info_from_image(image: Image.Image) -> tuple[Optional[str], dict[str, Any]]:
    return infotext.read_image_infotext(image)


def resize_image(resize_mode: int, im: Image.Image, width: int, height: int,
                 upscaler_name: Optional[str] = None) -> Image.Image:
    return image_ops.resize_image(resize_mode, im, width, height)
