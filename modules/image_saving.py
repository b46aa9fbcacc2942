"""Writing images to disk as A1111 names and tags them: `00012-1234.png`, `grid-0003.png`, infotext inside.

Every write is atomic: the bytes go to a hidden temp file in the same folder, are fsynced, and only
then appear under the final name, so a crash never leaves a half-written image behind a real name.
"""
from __future__ import annotations

import datetime
import io
import math
import os
import threading
import uuid
from pathlib import Path
from typing import Optional, Union

import piexif
import piexif.helper
from PIL import Image, ImageColor, PngImagePlugin

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# Largest side each lossy format can hold; past it A1111 falls back to PNG.
_MAX_SIDE = {"jpg": 65535, "jpeg": 65535, "webp": 16383}
# One lock for every folder: it is held only while a number is picked and the file linked into place.
_naming_lock = threading.Lock()


def dated_folder(root: Union[str, Path], kind: str) -> Path:
    """`root/<kind>/YYYY-MM-DD` (kind: "txt2img-images", "img2img-grids", ...), created."""
    folder = Path(root) / kind / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def next_sequence_number(folder: Union[str, Path], basename: str = "") -> int:
    """A1111's rule: one more than the largest leading number among `[basename-]N[-...]` files; 0 if none."""
    prefix = f"{basename}-" if basename else ""
    result = -1
    for name in os.listdir(folder):
        if name.startswith(".") or not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        try:
            result = max(result, int(first))
        except ValueError:
            pass
    return result + 1


def file_name(number: int, *, seed: Optional[int], extension: str, basename: str = "") -> str:
    # Samples: 5 digits then the seed. Grids ("grid"): 4 digits, no seed (A1111's short grid names).
    if basename:
        return f"{basename}-{number:04}.{extension}"
    return f"{number:05}-{seed}.{extension}" if seed is not None else f"{number:05}.{extension}"


def encode_image(
    image: Image.Image,
    extension: str,
    infotext: Optional[str],
    extra_pnginfo: Optional[dict[str, str]] = None,
    *,
    quality: int = 80,
    webp_lossless: bool = False,
) -> bytes:
    """The file's bytes. PNG: text chunks. JPEG/WEBP: infotext as EXIF UserComment, as A1111 does."""
    ext = extension.lower()
    if ext not in FORMATS:
        raise ValueError(f"can't save images as {extension!r}; use one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    if ext == "png":
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in (extra_pnginfo or {}).items():
            if key != "parameters":
                pnginfo.add_text(key, str(value))
        if infotext is not None:
            pnginfo.add_text("parameters", infotext)  # tEXt, or iTXt when it isn't Latin-1
        image.save(buffer, format="PNG", pnginfo=pnginfo)
        return buffer.getvalue()

    if image.mode == "I;16":  # 16-bit to 8-bit, A1111's scale factor (255/65535)
        image = image.point(lambda p: p * 0.0038910505836576).convert("RGB" if ext == "webp" else "L")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG can't hold alpha or palettes; A1111 drops alpha for WEBP too
    options = {"lossless": webp_lossless} if ext == "webp" else {}
    image.save(buffer, format=FORMATS[ext], quality=quality, **options)
    data = buffer.getvalue()
    if infotext is None:
        return data
    comment = piexif.helper.UserComment.dump(infotext, encoding="unicode")
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})
    out = io.BytesIO()
    piexif.insert(exif, data, out)
    return out.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable too. Not possible on Windows, where it isn't needed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place(temp: Path, final: Path) -> bool:
    """Give the finished temp file its final name unless that name is taken. True when placed."""
    try:
        os.link(temp, final)  # fails if `final` exists, so another process's file is never overwritten
        return True
    except FileExistsError:
        return False
    except OSError:  # filesystem without hard links: the lock still keeps our own threads apart
        if final.exists():
            return False
        os.replace(temp, final)
        return True


def save_image(
    image: Image.Image,
    folder: Union[str, Path],
    *,
    seed: Optional[int],
    infotext: Optional[str],
    extension: str = "png",
    extra_pnginfo: Optional[dict[str, str]] = None,
    basename: str = "",
    quality: int = 80,
    webp_lossless: bool = False,
) -> Path:
    """Save under the folder's next number (`NNNNN-SEED.ext`, or `BASENAME-NNNN.ext`); return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = extension.lower().lstrip(".")
    if ext in _MAX_SIDE and max(image.size) > _MAX_SIDE[ext]:
        ext = "png"
    data = encode_image(image, ext, infotext, extra_pnginfo, quality=quality, webp_lossless=webp_lossless)

    # Encoding and writing happen outside the lock; only naming is serialized.
    temp = folder / f".tmp-{uuid.uuid4().hex}.{ext}"
    _write_synced(temp, data)
    try:
        with _naming_lock:
            number = next_sequence_number(folder, basename)
            while True:
                final = folder / file_name(number, seed=seed, extension=ext, basename=basename)
                if _place(temp, final):
                    break
                number += 1
        _fsync_dir(folder)
        return final
    finally:
        temp.unlink(missing_ok=True)  # after os.link the temp name is still there


def grid_rows(count: int, prevent_empty_spots: bool = False) -> int:
    """A1111's automatic row count (n_rows = -1): round(sqrt(n)), or, with "prevent empty spots",
    the largest divisor of n not above sqrt(n) so the last row is full."""
    if prevent_empty_spots:
        rows = math.floor(math.sqrt(count))
        while count % rows:
            rows -= 1
        return rows
    return round(math.sqrt(count))


def make_grid(
    images: list[Image.Image],
    rows: Optional[int] = None,
    *,
    prevent_empty_spots: bool = False,
    background: str = "#ffffff",
) -> Image.Image:
    """A1111's image_grid: row-major cells the size of the largest image, smaller images centred."""
    if not images:
        raise ValueError("a grid needs at least one image")
    if rows is None:
        rows = grid_rows(len(images), prevent_empty_spots)
    if rows < 1:
        raise ValueError(f"a grid needs at least one row, got {rows}")
    rows = min(rows, len(images))
    cols = math.ceil(len(images) / rows)
    cell_w = max(img.width for img in images)
    cell_h = max(img.height for img in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), ImageColor.getcolor(background, "RGB"))
    for i, img in enumerate(images):
        x = i % cols * cell_w + (cell_w - img.width) // 2
        y = i // cols * cell_h + (cell_h - img.height) // 2
        grid.paste(img, (x, y))
    return grid


def save_grid(
    grid: Image.Image,
    folder: Union[str, Path],
    *,
    infotext: Optional[str],
    extension: str = "png",
) -> Path:
    """Save a grid as `grid-NNNN.ext`, numbered apart from the samples."""
    return save_image(grid, folder, seed=None, infotext=infotext, extension=extension, basename="grid")
