"""Pixel-space image work for img2img and inpaint: A1111's resize modes, mask blur, crop regions, overlays."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

LANCZOS = Image.Resampling.LANCZOS


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (RGBA, P, LA, CMYK, I;16 …) → RGB, flattening transparency onto black as A1111 does."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        array = (array / max(array.max(), 1.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize modes: 0 just resize, 1 crop and resize, 2 resize and fill (3 = 0 here; latent upscale
    only differs for hires)."""
    if mode in (0, 3):
        return image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        fit_w = width if ratio > src_ratio else image.width * height // image.height
        fit_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((fit_w, fit_h), LANCZOS)
        canvas = Image.new("RGB", (width, height))
        canvas.paste(resized, box=(width // 2 - fit_w // 2, height // 2 - fit_h // 2))
        return canvas
    fit_w = width if ratio < src_ratio else image.width * height // image.height
    fit_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((fit_w, fit_h), LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, box=(width // 2 - fit_w // 2, height // 2 - fit_h // 2))
    if ratio < src_ratio:  # fill the bands above and below by stretching the edge rows
        fill = height // 2 - fit_h // 2
        if fill > 0:
            canvas.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            canvas.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + fit_h))
    elif ratio > src_ratio:
        fill = width // 2 - fit_w // 2
        if fill > 0:
            canvas.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            canvas.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + fit_w, 0))
    return canvas


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """Mask as "L" at the image's size (white = repaint), resized like A1111 when sizes differ, then blurred."""
    if mask.mode in ("RGBA", "LA", "PA") and mask.getextrema()[-1][0] < 255:
        mask = mask.getchannel("A")  # a painted layer: its alpha is the stroke
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.size != size:
        mask = mask.resize(size, LANCZOS)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the masked area plus padding, clamped to the image; None if the mask is empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_to_ratio(box: tuple[int, int, int, int], width: int, height: int, image_w: int,
                    image_h: int) -> tuple[int, int, int, int]:
    """Grow a crop box to the generation's aspect ratio so "only masked" isn't stretched."""
    x1, y1, x2, y2 = box
    ratio, box_ratio = width / height, (x2 - x1) / max(y2 - y1, 1)
    if box_ratio > ratio:
        desired_h = (x2 - x1) / ratio
        diff = int(desired_h - (y2 - y1))
        y1, y2 = y1 - diff // 2, y2 + diff - diff // 2
        if y2 > image_h:
            y1, y2 = y1 - (y2 - image_h), image_h
        if y1 < 0:
            y2, y1 = min(y2 - y1, image_h), 0
    else:
        desired_w = (y2 - y1) * ratio
        diff = int(desired_w - (x2 - x1))
        x1, x2 = x1 - diff // 2, x2 + diff - diff // 2
        if x2 > image_w:
            x1, x2 = x1 - (x2 - image_w), image_w
        if x1 < 0:
            x2, x1 = min(x2 - x1, image_w), 0
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"fill" masked content: paint the hole with ever less blurred copies of the surroundings."""
    result = Image.new("RGBA", image.size, (0, 0, 0, 0))
    keep = ImageOps.invert(mask.convert("L")).point(lambda v: 255 if v > 128 else 0)
    source = image.convert("RGBA")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = source.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            layer = blurred.copy()
            layer.putalpha(keep)
            result.alpha_composite(layer)
    return result.convert("RGB")


def overlay_original(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste the original back wherever the (blurred) mask doesn't ask for change."""
    return Image.composite(generated, original.convert("RGB"), mask.convert("L"))


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(to_rgb(im), dtype=np.float32) / 127.5 - 1.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]
