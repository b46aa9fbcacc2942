"""Client images in: the one decoder of base64 images sent to Atelier (API bodies, and extensions' API fields
through `modules.extension_api`). It checks what a client can get wrong or abuse: not base64, a URL, a
decompression bomb (checked from the header, before any pixel is decoded), a truncated or corrupt file, more
pixels than --max-pixels; and it hands on an upright, single-frame image in RGB, RGBA or L whatever the file's
mode (P with transparency, LA, I;16, CMYK, 1-bit, animated GIF/WEBP, EXIF-rotated JPEG).
No web framework here: errors are ValidationError(field, reason), which the API answers as a 422."""
from __future__ import annotations

import base64
import binascii
import io
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from modules.errors import ValidationError
from modules.request import MAX_SIDE

# Inputs may be larger than what we generate (an upscale source, a photo to inpaint), but not unbounded.
MAX_INPUT_SIDE = 2 * MAX_SIDE
# --max-pixels' default: a decoded image, and a request's width x height x batch_size, at most 8192x8192.
DEFAULT_MAX_PIXELS = MAX_SIDE * MAX_SIDE
MAX_INPUT_PIXELS = DEFAULT_MAX_PIXELS
# Modes the pipeline takes as they are; everything else is converted here, once, with its meaning kept.
_KEPT_MODES = frozenset({"RGB", "RGBA", "L"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBa"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def decode_base64(data: object, field: str) -> bytes:
    """The bytes of a base64 image field, with or without a `data:image/...;base64,` prefix."""
    if not isinstance(data, str) or not data.strip():
        raise ValidationError(field, "must be a base64-encoded image")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ValidationError(field, "image URLs are not fetched; send the image as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ValidationError(field, "a data: URL must be base64 (data:image/png;base64,...)")
    text = "".join(text.split())  # MIME-style line breaks
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(field, "is not valid base64") from None


_max_pixels = DEFAULT_MAX_PIXELS  # the running app's --max-pixels (set_max_pixels); <= 0: no limit


def set_max_pixels(limit: int) -> None:
    """The process-wide default of decode_image's max_pixels (the API sets it from --max-pixels)."""
    global _max_pixels
    _max_pixels = int(limit)


def decode_image(data: object, field: str, max_pixels: Optional[int] = None) -> Image.Image:
    """The one decoder of client images: base64 -> a loaded, upright, single-frame PIL image in RGB, RGBA or L.

    The declared size is checked before any pixel is decoded (a 50000x50000 PNG of a few bytes never inflates),
    then the file is decoded at once so a truncated one fails here, as a 422 naming `field`, not in the worker.
    """
    if max_pixels is None:
        max_pixels = _max_pixels
    if max_pixels <= 0:
        max_pixels = 2**62
    raw = decode_base64(data, field)
    try:
        image = Image.open(io.BytesIO(raw))
        w, h = image.size
        if w > MAX_INPUT_SIDE or h > MAX_INPUT_SIDE or w * h > max_pixels:
            raise ValidationError(field, f"image is {w}x{h} = {w * h} pixels; at most {MAX_INPUT_SIDE} a side "
                                         f"and {max_pixels} pixels (--max-pixels)")
        image.seek(0)  # an animated GIF/WEBP/APNG: its first frame
        image.load()
        upright = normalize_image(image)
        upright.info = {**image.info, **upright.info}  # png-info and extras read the infotext from it
        return upright
    except ValidationError:
        raise
    except Image.DecompressionBombError:
        raise ValidationError(field, "image declares more pixels than Pillow will decode") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombWarning):
        raise ValidationError(field, "is not a readable image (PNG, JPEG, WEBP, ...): corrupt or truncated") from None


def normalize_image(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied) and in RGB, RGBA or L, keeping transparency and 16-bit levels."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in _KEPT_MODES:
        return image.copy() if getattr(image, "n_frames", 1) > 1 else image  # drop the other frames
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")  # masks painted as a layer keep their alpha, which is the stroke
    if mode in _SIXTEEN_BIT:
        levels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if levels.max(initial=0) > 255 else 1.0  # 16-bit levels -> 8-bit, not clipped to white
        return Image.fromarray((levels / scale).clip(0, 255).astype(np.uint8), "L")
    if mode == "F":
        levels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if levels.max(initial=0) <= 1.0 else 1.0  # float images are 0..1 or 0..255
        return Image.fromarray((levels * scale).clip(0, 255).astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV
