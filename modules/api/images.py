"""Images in and out of the API as base64: decoding checks everything a client can get wrong, encoding writes
the infotext into the file (PNG `parameters` chunk, or EXIF for JPEG/WEBP) as A1111's API does."""
from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Optional

from PIL import Image

from modules import image_saving
from modules.errors import ValidationError
from modules.request import MAX_SIDE

# Inputs may be larger than what we generate (an upscale source, a photo to inpaint), but not unbounded.
MAX_INPUT_SIDE = 2 * MAX_SIDE
MAX_INPUT_PIXELS = MAX_SIDE * MAX_SIDE


def decode_image(data: object, field: str) -> Image.Image:
    """A PIL image from base64, with or without a `data:image/...;base64,` prefix. Raises ValidationError(field)."""
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
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(field, "is not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            w, h = image.size
            if w > MAX_INPUT_SIDE or h > MAX_INPUT_SIDE or w * h > MAX_INPUT_PIXELS:
                raise ValidationError(field, f"image is {w}x{h}; at most {MAX_INPUT_SIDE} a side and "
                                             f"{MAX_INPUT_PIXELS} pixels")
            image.load()  # decode now, so a truncated file fails here and not in the worker
    except ValidationError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError(field, "is not a readable image (PNG, JPEG, WEBP, ...)") from None
    return image


def encode_image(image: Image.Image, fmt: str = "png", infotext: Optional[str] = None,
                 extra: Optional[dict[str, str]] = None) -> str:
    """Base64 of the image file, infotext inside. `fmt`: png, jpg or webp (A1111 uses samples_format)."""
    fmt = (fmt or "png").lower()
    if fmt not in image_saving.FORMATS:
        fmt = "png"
    if infotext is None:
        infotext = image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None
    data = image_saving.encode_image(image, fmt, infotext, extra)
    return base64.b64encode(data).decode("ascii")
