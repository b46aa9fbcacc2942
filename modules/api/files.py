"""Saved images over HTTP, only from the output folders: the real path (symlinks resolved) must lie inside one."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Optional

from fastapi import Query
from fastapi.responses import FileResponse, Response
from PIL import Image

from modules.engine import Engine

from .errors import ApiError
from .routes import Routes

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
# On POSIX a backslash or a drive letter is never part of a path we wrote: it is a Windows path (`..\\x`, `C:\\`,
# `\\\\server\\share`) aimed at a server that might treat it as one. Refuse it rather than look for such a file.
_WINDOWS_PATH = re.compile(r"\\|^[A-Za-z]:")


def path_text_problem(value: str) -> Optional[str]:
    """Why a client's path text can't name one of our files (empty, NUL bytes, a Windows form on POSIX), or None."""
    if not value or "\x00" in value:
        return "must be a non-empty path without NUL bytes"
    if os.sep == "/" and _WINDOWS_PATH.search(value):
        return "Windows-style paths (\\, C:, \\\\server\\share) are not accepted"
    return None


def is_inside(real: Path, roots: list[Path]) -> bool:
    return any(real == root or root in real.parents for root in roots)


def allowed_roots(engine: Engine) -> list[Path]:
    roots = [engine.paths.outputs_dir]
    for option in ("outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples"):
        custom = engine.settings.get(option)
        if custom:
            roots.append(Path(custom))
    return [Path(os.path.realpath(root)) for root in roots]


def resolve_output_file(engine: Engine, path: str) -> Path:
    """The file for `path` (relative to outputs/, or absolute), or ApiError 403/404."""
    problem = path_text_problem(path)
    if problem:
        raise ApiError(404 if "NUL" in problem else 403, problem, field="path",
                       error="NotFound" if "NUL" in problem else "Forbidden")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = engine.paths.outputs_dir / candidate
    real = Path(os.path.realpath(candidate))
    if not is_inside(real, allowed_roots(engine)):
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

