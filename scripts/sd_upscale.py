"""SD upscale (img2img): upscale the init image, redraw it in overlapping tiles with img2img, blend the tiles.

The tile size is the request's width × height; neighbouring tiles overlap by `overlap` pixels and are
cross-faded there, as A1111's split_grid/combine_grid do. `n_iter` makes that many upscales (seed, seed+1, ...);
tiles go through img2img `batch_size` at a time.

A1111's script_args for `script_name: "sd upscale"`: [info (ignored), overlap, upscaler_index, scale_factor],
where upscaler_index counts in /sdapi/v1/upscalers' order (0 = None, 1 = Lanczos, 2 = Nearest, then models).
As in A1111, upscaler "None" leaves the size alone and only redraws the tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
from PIL import Image

from modules import upscaling
from modules.errors import ValidationError
from modules.request import GenerationRequest
from modules.builtin_scripts import (ScriptInterrupted, ScriptResult, add_infotext_params, fix_seed, run_job,
                                     save_sample)

if TYPE_CHECKING:
    from modules.engine import Engine

TITLE = "SD upscale"


@dataclass
class Tile:
    x: int
    y: int
    image: Image.Image


@dataclass
class TileGrid:
    tiles: list[list[Tile]]  # rows of tiles
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """A1111's split_grid: as few tiles as keep `overlap` between neighbours, spread evenly, last one flush."""
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = TileGrid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        line = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            line.append(Tile(x, y, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.tiles.append(line)
    return grid


def combine_grid(grid: TileGrid) -> Image.Image:
    """A1111's combine_grid: each tile's first `overlap` columns (then rows) fade in over what is already there."""
    overlap = grid.overlap
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / max(overlap, 1)).astype(np.uint8)
    mask_w = Image.fromarray(np.repeat(ramp.reshape(1, overlap), grid.tile_h, axis=0), "L") if overlap else None
    mask_h = Image.fromarray(np.repeat(ramp.reshape(overlap, 1), grid.image_w, axis=1), "L") if overlap else None
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for line in grid.tiles:
        y = line[0].y
        row = Image.new("RGB", (grid.image_w, grid.tile_h))
        for tile in line:
            if tile.x == 0 or not overlap:
                row.paste(tile.image, (tile.x, 0))
                continue
            row.paste(tile.image.crop((0, 0, overlap, grid.tile_h)), (tile.x, 0), mask=mask_w)
            row.paste(tile.image.crop((overlap, 0, grid.tile_w, grid.tile_h)), (tile.x + overlap, 0))
        if y == 0 or not overlap:
            combined.paste(row, (0, y))
            continue
        combined.paste(row.crop((0, 0, row.width, overlap)), (0, y), mask=mask_h)
        combined.paste(row.crop((0, overlap, row.width, grid.tile_h)), (0, y + overlap))
    return combined


def upscaled_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """A1111's Upscaler.upscale target: the scaled size rounded down to a multiple of 8."""
    return int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)


def resolve_upscaler(upscaler: Union[int, str]) -> upscaling.Upscaler:
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        names = [u["name"] for u in upscaling.list_upscalers()]
        if not 0 <= upscaler < len(names):
            raise ValidationError("upscaler_index", f"must be between 0 and {len(names) - 1}, got {upscaler}")
        upscaler = names[upscaler]
    return upscaling.get(str(upscaler), "upscaler_index")


def run_sd_upscale(engine: "Engine", request: GenerationRequest, overlap: int = 64,
                   upscaler: Union[int, str] = "None", scale_factor: float = 2.0) -> ScriptResult:
    """Upscale `request.init_images[0]` by `scale_factor` with `upscaler`, then img2img it tile by tile."""
    request = request.validate()
    if not request.is_img2img:
        raise ValidationError("init_images", "SD upscale works on an img2img request: give it an init image")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < min(request.width,
                                                                                          request.height):
        raise ValidationError("overlap", f"must be a whole number from 0 to below the tile size "
                                         f"({min(request.width, request.height)}), got {overlap!r}")
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) or not 1 <= scale_factor <= 16:
        raise ValidationError("scale_factor", f"must be between 1 and 16, got {scale_factor!r}")
    chosen = resolve_upscaler(upscaler)
    request = fix_seed(request)
    source = request.init_images[0].convert("RGB")
    if chosen.name != "None":
        image = chosen.run(source, *upscaled_size(source, scale_factor))
    else:
        image = source
    if image.width < request.width or image.height < request.height:
        raise ValidationError("scale_factor", f"the upscaled image ({image.width}x{image.height}) is smaller than "
                                              f"one tile ({request.width}x{request.height}); lower width/height")
    grid = split_grid(image, request.width, request.height, overlap)
    work = [tile for line in grid.tiles for tile in line]
    extras = {"SD upscale overlap": overlap, "SD upscale upscaler": chosen.name}
    result = ScriptResult(seed=request.seed)
    first_info = None
    for n in range(request.n_iter):
        start_seed = request.seed + n
        seed = start_seed
        finished: list[Image.Image] = []
        for i in range(0, len(work), request.batch_size):
            batch = [t.image for t in work[i:i + request.batch_size]]
            job = request.copy(init_images=batch, batch_size=len(batch), n_iter=1, seed=seed, resize_mode=0,
                               mask=None, do_not_save_samples=True, do_not_save_grid=True)
            try:
                output = run_job(engine, job)
            except ScriptInterrupted:
                result.interrupted = True
                return result
            if first_info is None and output.infotexts:
                first_info = add_infotext_params(output.infotexts[0], extras)
            finished.extend(output.images)
            seed += 1  # A1111: the next batch starts one past the previous batch's first seed
        for tile, redrawn in zip(work, finished):
            tile.image = redrawn
        combined = combine_grid(grid)
        result.images.append(combined)
        result.infotexts.append(first_info or "")
        path = save_sample(engine, request, combined, start_seed, first_info)
        if path:
            result.paths.append(path)
    return result


def run_from_args(engine: "Engine", request: GenerationRequest, args: Sequence[Any]) -> ScriptResult:
    """A1111's script_args: [info (ignored), overlap, upscaler_index, scale_factor]."""
    args = list(args)
    if len(args) < 4:
        raise ValidationError("script_args", "expected [_, overlap, upscaler_index, scale_factor]")
    _, overlap, upscaler_index, scale = args[:4]
    try:
        overlap = int(overlap)
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValidationError("script_args", f"overlap and scale_factor must be numbers, got {overlap!r}, {scale!r}")
    return run_sd_upscale(engine, request, overlap, upscaler_index if isinstance(upscaler_index, str)
                          else int(upscaler_index), scale)
