"""The upscaler registry and the Upscale tab's stage (A1111's "Extras"): one place for every upscaler.

Built-ins: None, Lanczos, Nearest. Model upscalers (ESRGAN, DAT, SwinIR, HAT, ... via spandrel) join the same
list through `refresh_model_upscalers` (modules/model_upscalers.py), so hires fix, SD upscale and the Upscale
tab all see them. This module stays light: torch and spandrel load only when a model upscaler is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

from PIL import Image

from modules.errors import ValidationError

if TYPE_CHECKING:
    from modules.devices import DevicePolicy
    from modules.paths import Paths
    from modules.settings import Settings


@dataclass(frozen=True)
class Upscaler:
    name: str
    scale: int  # the model's native scale; 4 for built-ins, as A1111 reports them
    run: Callable[[Image.Image, int, int], Image.Image]  # (image, width, height) -> image
    model_path: Optional[str] = None


def _resample(method: Image.Resampling) -> Callable[[Image.Image, int, int], Image.Image]:
    return lambda image, w, h: image.resize((w, h), method)


_BUILTINS = [
    Upscaler("None", 4, lambda image, w, h: image),
    Upscaler("Lanczos", 4, _resample(Image.Resampling.LANCZOS)),
    Upscaler("Nearest", 4, _resample(Image.Resampling.NEAREST)),
]
_registry: dict[str, Upscaler] = {u.name: u for u in _BUILTINS}


def register(upscaler: Upscaler) -> None:
    _registry[upscaler.name] = upscaler


def unregister(name: str) -> None:
    """Remove an upscaler (built-ins stay)."""
    if name not in {u.name for u in _BUILTINS}:
        _registry.pop(name, None)


def refresh_model_upscalers(paths: "Paths", policy: "DevicePolicy", settings: Optional["Settings"] = None) -> list[str]:
    """Rescan models/ESRGAN, RealESRGAN, DAT, SwinIR and HAT and (re)register their models; returns their names.

    Call at startup and from the UI's refresh button. Tile size and overlap are read from `settings` on each run."""
    from modules import model_upscalers

    return [u.name for u in model_upscalers.refresh_model_upscalers(paths, policy, settings)]


def list_upscalers() -> list[dict]:
    """In /sdapi/v1/upscalers' shape."""
    return [{"name": u.name, "model_name": None if u.model_path is None else u.name, "model_path": u.model_path,
             "model_url": None, "scale": u.scale} for u in _registry.values()]


def get(name: str, field: str = "upscaler_1") -> Upscaler:
    found = _registry.get(name) or next((u for u in _registry.values() if u.name.lower() == str(name).lower()), None)
    if found is None:
        raise ValidationError(field, f"unknown upscaler '{name}'; valid: {', '.join(_registry)}")
    return found


def target_size(image: Image.Image, resize_mode: int, scale: float, width: int, height: int) -> tuple[int, int]:
    if resize_mode == 1:
        if width <= 0 or height <= 0:
            raise ValidationError("upscaling_resize_w", "scale-to needs a width and height above 0")
        return width, height
    if not 0 < scale <= 16:
        raise ValidationError("upscaling_resize", f"must be between 0 and 16, got {scale}")
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def run_extras(image: Image.Image, *, resize_mode: int = 0, upscaling_resize: float = 2.0,
               upscaling_resize_w: int = 512, upscaling_resize_h: int = 512, upscaling_crop: bool = True,
               upscaler_1: str = "None", upscaler_2: str = "None",
               extras_upscaler_2_visibility: float = 0.0) -> tuple[Image.Image, str]:
    """Upscale with upscaler 1, blend in upscaler 2 by its visibility; returns the image and A1111's `extras` text."""
    first, second = get(upscaler_1, "upscaler_1"), get(upscaler_2, "upscaler_2")
    if not 0 <= extras_upscaler_2_visibility <= 1:
        raise ValidationError("extras_upscaler_2_visibility", "must be between 0 and 1")
    source = image.convert("RGB")
    if first.name == "None":  # as in A1111: no upscaler, no upscale stage
        return source, ""
    w, h = target_size(source, resize_mode, upscaling_resize, upscaling_resize_w, upscaling_resize_h)
    fit_w, fit_h = w, h
    if resize_mode == 1 and upscaling_crop:  # scale to cover, then crop to the exact size
        ratio = max(w / source.width, h / source.height)
        fit_w, fit_h = round(source.width * ratio), round(source.height * ratio)
    result = first.run(source, fit_w, fit_h)
    if second.name != "None" and extras_upscaler_2_visibility > 0:
        result = Image.blend(result, second.run(source, fit_w, fit_h), extras_upscaler_2_visibility)
    if resize_mode == 1:
        if upscaling_crop:
            left, top = (result.width - w) // 2, (result.height - h) // 2
            result = result.crop((left, top, left + w, top + h))
        else:
            result = result.resize((w, h), Image.Resampling.LANCZOS)
    info: dict[str, object] = {}
    if resize_mode == 1:
        info["Postprocess upscale to"] = f"{w}x{h}"
    else:
        info["Postprocess upscale by"] = upscaling_resize
    info["Postprocess upscaler"] = first.name
    if second.name != "None" and extras_upscaler_2_visibility > 0:
        info["Postprocess upscaler 2"] = second.name
        info["Postprocess upscaler 2 visibility"] = extras_upscaler_2_visibility
    return result, ", ".join(f"{k}: {v}" for k, v in info.items())


def extras_folder(outputs_dir: Union[str, Path], custom: str = "") -> Path:
    """Where the Upscale tab saves: the `outdir_extras_samples` setting, else outputs/extras-images (no date
    folder, as A1111 saves extras)."""
    folder = Path(custom) if custom else Path(outputs_dir) / "extras-images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_extras(image: Image.Image, folder: Union[str, Path], extras_info: str, *,
                source: Optional[Image.Image] = None, source_infotext: Optional[str] = None,
                extension: str = "png") -> Path:
    """Save an Upscale-tab result as A1111 does (`NNNNN.png`, no seed in the name).

    PNG: the source image's chunks are kept (its `parameters` infotext included, so the generation can still be
    pasted back) and the stage's text is added as `postprocessing` and `extras` chunks. JPEG/WEBP carry one
    comment, which A1111 fills with the extras text. `source_infotext` overrides what `source` holds."""
    from modules import image_saving
    from modules.infotext import read_image_infotext

    parameters, items = read_image_infotext(source) if source is not None else (None, {})
    if source_infotext is not None:
        parameters = source_infotext
    ext = extension.lower().lstrip(".")
    if ext != "png":
        return image_saving.save_image(image, folder, seed=None, infotext=extras_info or None, extension=ext)
    chunks = {k: v for k, v in items.items() if isinstance(v, str) and k not in ("parameters", "extras",
                                                                                   "postprocessing")}
    if extras_info:
        chunks["postprocessing"] = extras_info
        chunks["extras"] = extras_info
    return image_saving.save_image(image, folder, seed=None, infotext=parameters, extension="png",
                                   extra_pnginfo=chunks)
