"""The upscaler registry and the Upscale tab's stage (A1111's "Extras"): one place for every upscaler.

Built-ins now: None, Lanczos, Nearest. Model upscalers (ESRGAN family via spandrel) join the same list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from PIL import Image

from modules.errors import ValidationError


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
