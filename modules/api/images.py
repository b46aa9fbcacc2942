"""Images in and out of the API as base64: decoding (modules/image_input.py) checks everything a client can get
wrong, encoding writes the infotext into the file (PNG `parameters` chunk, or EXIF for JPEG/WEBP) as A1111's API
does."""
from __future__ import annotations

import base64
from typing import Optional

from PIL import Image

from modules import image_saving
# The decoder lives in the core (modules/image_input.py) so extensions can use it too; its names stay here.
from modules.image_input import (DEFAULT_MAX_PIXELS, MAX_INPUT_PIXELS, MAX_INPUT_SIDE, decode_base64,
                                 decode_image, normalize_image)

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_INPUT_PIXELS", "MAX_INPUT_SIDE", "decode_base64", "decode_image",
           "normalize_image", "encode_image"]


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
