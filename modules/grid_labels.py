"""Labelled grids (A1111's images.draw_grid_annotations): column labels on top, row labels on the left.

Text is drawn with Pillow's built-in font (no font files are fetched or shipped). Sizes follow A1111: the font is
(cell width + cell height) / 25 pixels (never below MIN_FONT_SIZE here, so small test images stay readable),
the left margin is 3/4 of a cell wide when rows are labelled, and the top margin fits the tallest column label.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from PIL import Image, ImageDraw, ImageFont

MIN_FONT_SIZE = 10
ACTIVE, INACTIVE = (0, 0, 0), (153, 153, 153)


@dataclass
class GridAnnotation:
    text: str = ""
    is_active: bool = True
    size: tuple[int, int] = field(default=(0, 0), repr=False)
    allowed_width: int = field(default=0, repr=False)


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(1, size))


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt: ImageFont.ImageFont, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=fnt) <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def draw_grid_annotations(grid: Image.Image, cell_width: int, cell_height: int,
                          hor_texts: list[list[GridAnnotation]], ver_texts: list[list[GridAnnotation]],
                          margin: int = 0) -> Image.Image:
    """A new image: `grid` (cells of cell_width × cell_height) spaced by `margin`, with the labels drawn around."""
    cols, rows = grid.width // cell_width, grid.height // cell_height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"grid has {cols}x{rows} cells but {len(hor_texts)}x{len(ver_texts)} labels")
    fontsize = max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)
    spacing = fontsize // 2
    fnt = font(fontsize)
    has_ver = any(line.text for lines in ver_texts for line in lines)
    pad_left = cell_width * 3 // 4 if has_ver else 0

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped_hor, wrapped_ver = [], []
    for texts, allowed, out in [(t, cell_width, wrapped_hor) for t in hor_texts] + \
                               [(t, pad_left, wrapped_ver) for t in ver_texts]:
        lines = []
        for item in texts:
            for piece in _wrap(measure, item.text, fnt, allowed):
                box = measure.multiline_textbbox((0, 0), piece, font=fnt)
                lines.append(GridAnnotation(piece, item.is_active, (box[2] - box[0], box[3] - box[1]), allowed))
        out.append(lines)
    hor_heights = [sum(line.size[1] + spacing for line in lines) - spacing for lines in wrapped_hor]
    ver_heights = [sum(line.size[1] + spacing for line in lines) - spacing * len(lines) for lines in wrapped_ver]
    pad_top = max(hor_heights) + spacing * 2 if any(h > 0 for h in hor_heights) else 0

    size = (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1))
    result = Image.new("RGB", size, "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((cell_width * col, cell_height * row, cell_width * (col + 1), cell_height * (row + 1)))
            result.paste(cell, (pad_left + (cell_width + margin) * col, pad_top + (cell_height + margin) * row))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(wrapped_hor):
        _draw_lines(draw, pad_left + (cell_width + margin) * col + cell_width / 2, pad_top / 2 - hor_heights[col] / 2,
                    lines, fontsize, spacing)
    for row, lines in enumerate(wrapped_ver):
        _draw_lines(draw, pad_left / 2, pad_top + (cell_height + margin) * row + cell_height / 2 - ver_heights[row] / 2,
                    lines, fontsize, spacing)
    return result


def _draw_lines(draw: ImageDraw.ImageDraw, x: float, y: float, lines: list[GridAnnotation], fontsize: int,
                spacing: int) -> None:
    for line in lines:
        size, fnt = fontsize, font(fontsize)
        while draw.multiline_textbbox((0, 0), line.text, font=fnt)[2] > line.allowed_width and size > 1:
            size -= 1  # a single long word: shrink it until it fits
            fnt = font(size)
        draw.multiline_text((x, y + line.size[1] / 2), line.text, font=fnt, anchor="mm", align="center",
                            fill=ACTIVE if line.is_active else INACTIVE)
        if not line.is_active:
            draw.line((x - line.size[0] // 2, y + line.size[1] // 2, x + line.size[0] // 2, y + line.size[1] // 2),
                      fill=INACTIVE, width=max(1, fontsize // 8))
        y += line.size[1] + spacing


def labels(texts: list[str]) -> list[list[GridAnnotation]]:
    return [[GridAnnotation(t)] for t in texts]


def failed_cell(size: tuple[int, int], reason: Optional[str] = None) -> Image.Image:
    """What a grid shows where a cell failed: dark grey, a red cross and the word "error"."""
    image = Image.new("RGB", size, (40, 40, 40))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line((0, 0, w - 1, h - 1), fill=(200, 30, 30), width=max(1, min(w, h) // 32))
    draw.line((0, h - 1, w - 1, 0), fill=(200, 30, 30), width=max(1, min(w, h) // 32))
    draw.text((w / 2, h / 2), "error", font=font(max(MIN_FONT_SIZE, min(w, h) // 8)), fill=(255, 255, 255),
              anchor="mm")
    return image
