"""Saved images over HTTP, only from the output folders: the real path (symlinks resolved) must lie inside one."""
from __future__ import annotations

import io
import os
from pathlib import Path

from fastapi import Query
from fastapi.responses import FileResponse, Response
from PIL import Image

from modules.engine import Engine

from .errors import ApiError
from .routes import Routes

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


def allowed_roots(engine: Engine) -> list[Path]:
    roots = [engine.paths.outputs_dir]
    for option in ("outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples"):
        custom = engine.settings.get(option)
        if custom:
            roots.append(Path(custom))
    return [Path(os.path.realpath(root)) for root in roots]


def resolve_output_file(engine: Engine, path: str) -> Path:
    """The file for `path` (relative to outputs/, or absolute), or ApiError 403/404."""
    if not path or "\x00" in path:
        raise ApiError(404, "no such file", field="path")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = engine.paths.outputs_dir / candidate
    real = Path(os.path.realpath(candidate))
    if not any(real == root or root in real.parents for root in allowed_roots(engine)):
        raise ApiError(403, "files are served only from the output folders", field="path", error="Forbidden")
    if real.suffix.lower() not in IMAGE_SUFFIXES:
        raise ApiError(403, "only images are served", field="path", error="Forbidden")
    if not real.is_file():
        raise ApiError(404, "no such file", field="path")
    return real


def register(app, engine: Engine) -> None:
    router = Routes(app, "/atelier/v1", ["atelier files"])

    @router.get("/files/{path:path}", summary="A saved image, by its path under outputs/")
    def get_file(path: str) -> FileResponse:
        return FileResponse(resolve_output_file(engine, path))

    @router.get("/thumbnails/{path:path}", summary="A saved image scaled down to fit `size` (JPEG)")
    def get_thumbnail(path: str, size: int = Query(256, ge=16, le=1024)) -> Response:
        real = resolve_output_file(engine, path)
        try:
            with Image.open(real) as image:
                image.thumbnail((size, size))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            raise ApiError(422, "the file is not a readable image", field="path") from None
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

