"""X/Y/Z plot: one generation per combination of up to three axes' values, laid out as a labelled grid.

    run_xyz_plot(engine, request, "Steps", "10-30 (+10)", "CFG Scale", "5, 7.5") -> ScriptResult

Axis types are A1111's labels (or their index in A1111 1.10's list, as its API takes them), plus
"Setting: <option name>" for any setting, sent as the request's override_settings. Values are comma-separated
(CSV quoting allowed); number axes also take A1111's ranges:
    1-5          1, 2, 3, 4, 5             (integers: the end is included)
    1-10 (+2)    1, 3, 5, 7, 9             (a step)
    0.5-1 [3]    0.5, 0.75, 1.0            (a count, evenly spaced)
Bad values raise ValidationError naming the axis ("x_values", ...) before any image is made. A cell that fails
while running is drawn as a red cross and the plot goes on; its error is listed in the result.
"""
from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass, field
from io import StringIO
from itertools import chain, permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from modules import image_saving, samplers, upscaling
from modules.errors import ValidationError
from modules.grid_labels import GridAnnotation, draw_grid_annotations, failed_cell, labels
from modules.processing import LATENT_UPSCALE_MODES
from modules.request import GenerationRequest
from modules.builtin_scripts import (MAX_SEED, JobFailed, ScriptInterrupted, ScriptResult, add_infotext_params,
                                     fix_seed, run_job, save_grid)
from modules.settings import OPTIONS, Settings

if TYPE_CHECKING:
    from modules.engine import Engine

TITLE = "X/Y/Z plot"
SETTING_PREFIX = "Setting: "

# A1111's range syntax (scripts/xyz_grid.py).
RE_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_NUMBER = r"([+-]?\s*\d+(?:.\d*)?)"
RE_RANGE_FLOAT = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(rf"\s*{_NUMBER}\s*-\s*{_NUMBER}(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")

Apply = Callable[[GenerationRequest, Any, list], GenerationRequest]


@dataclass(frozen=True)
class Axis:
    label: str
    type: Callable[[Any], Any]  # int, float, str, or permutations for "Prompt order"
    apply: Apply
    show_label: bool = True  # "Steps: 10" rather than just "10"
    cost: float = 0.0  # the most expensive axis changes least often (checkpoints, VAEs)
    confirm: Optional[Callable[["Engine", GenerationRequest, list], None]] = None


def _field(name: str) -> Apply:
    return lambda req, value, values: req.copy(**{name: value})


def _override(name: str) -> Apply:
    return lambda req, value, values: req.copy(override_settings={**req.override_settings, name: value})


def _prompt_sr(req: GenerationRequest, value: str, values: list) -> GenerationRequest:
    return req.copy(prompt=req.prompt.replace(values[0], value),
                    negative_prompt=req.negative_prompt.replace(values[0], value))


def _prompt_order(req: GenerationRequest, value: Sequence[str], values: list) -> GenerationRequest:
    prompt, parts = req.prompt, []
    for _, token in sorted((prompt.find(token), token) for token in value):
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    return req.copy(prompt="".join(part + value[i] for i, part in enumerate(parts)) + prompt)


def _size(req: GenerationRequest, value: str, values: list) -> GenerationRequest:
    width, height = _parse_size(value)
    return req.copy(width=width, height=height)


def _parse_size(value: str) -> tuple[int, int]:
    width, sep, height = str(value).lower().partition("x")
    if not sep:
        raise ValueError(f"{value!r} is not WIDTHxHEIGHT")
    return int(width.strip()), int(height.strip())


def _confirm_prompt_sr(engine: "Engine", req: GenerationRequest, values: list) -> None:
    if values and values[0] not in req.prompt and values[0] not in req.negative_prompt:
        raise ValueError(f"{values[0]!r} is not in the prompt or the negative prompt")


def _confirm_samplers(engine: "Engine", req: GenerationRequest, values: list) -> None:
    for value in values:
        samplers.resolve_sampler(value, req.scheduler)


def _confirm_schedules(engine: "Engine", req: GenerationRequest, values: list) -> None:
    for value in values:
        samplers.resolve_sampler(req.sampler_name, value)


def _confirm_checkpoints(engine: "Engine", req: GenerationRequest, values: list) -> None:
    for value in values:
        engine.models.checkpoints.resolve(value)


def _confirm_vaes(engine: "Engine", req: GenerationRequest, values: list) -> None:
    for value in values:
        if value not in ("Automatic", "None"):
            engine.models.vaes.resolve(value)


def _confirm_hires_upscalers(engine: "Engine", req: GenerationRequest, values: list) -> None:
    for value in values:
        if value not in LATENT_UPSCALE_MODES:
            upscaling.get(value, "hr_upscaler")


def _fix_vae(req: GenerationRequest, value: str, values: list) -> GenerationRequest:
    return _override("sd_vae")(req, value, values)


AXES: list[Axis] = [
    Axis("Nothing", str, lambda req, value, values: req, show_label=False),
    Axis("Seed", int, _field("seed")),
    Axis("Var. seed", int, _field("subseed")),
    Axis("Var. strength", float, _field("subseed_strength")),
    Axis("Steps", int, _field("steps")),
    Axis("Hires steps", int, _field("hr_second_pass_steps")),
    Axis("CFG Scale", float, _field("cfg_scale")),
    Axis("Prompt S/R", str, _prompt_sr, show_label=False, confirm=_confirm_prompt_sr),
    Axis("Prompt order", permutations, _prompt_order, show_label=False),
    Axis("Sampler", str, _field("sampler_name"), show_label=False, confirm=_confirm_samplers),
    Axis("Checkpoint name", str, _override("sd_model_checkpoint"), show_label=False, cost=1.0,
         confirm=_confirm_checkpoints),
    Axis("Schedule type", str, _field("scheduler"), confirm=_confirm_schedules),
    Axis("Clip skip", int, _override("CLIP_stop_at_last_layers")),
    Axis("Denoising", float, _field("denoising_strength")),
    Axis("Hires upscaler", str, _field("hr_upscaler"), confirm=_confirm_hires_upscalers),
    Axis("VAE", str, _fix_vae, cost=0.7, confirm=_confirm_vaes),
    Axis("Size", str, _size),
]
_BY_LABEL = {axis.label.lower(): axis for axis in AXES}

# A1111 1.10's axis list, for API callers that send an index (`x_type: 4`). Indexes count only the entries
# shown for the tab: "t" = txt2img only, "i" = img2img only, "" = both. Entries Atelier lacks are refused.
A1111_AXIS_LABELS: list[tuple[str, str]] = [
    ("Nothing", ""), ("Seed", ""), ("Var. seed", ""), ("Var. strength", ""), ("Steps", ""), ("Hires steps", "t"),
    ("CFG Scale", ""), ("Image CFG Scale", "i"), ("Prompt S/R", ""), ("Prompt order", ""), ("Sampler", "t"),
    ("Hires sampler", "t"), ("Sampler", "i"), ("Checkpoint name", ""), ("Negative Guidance minimum sigma", ""),
    ("Sigma Churn", ""), ("Sigma min", ""), ("Sigma max", ""), ("Sigma noise", ""), ("Schedule type", ""),
    ("Schedule min sigma", ""), ("Schedule max sigma", ""), ("Schedule rho", ""), ("Beta schedule alpha", ""),
    ("Beta schedule beta", ""), ("Eta", ""), ("Clip skip", ""), ("Denoising", ""), ("Initial noise multiplier", ""),
    ("Extra noise", ""), ("Hires upscaler", "t"), ("Cond. Image Mask Weight", "i"), ("VAE", ""), ("Styles", ""),
    ("UniPC Order", ""), ("Face restore", ""), ("Token merging ratio", ""), ("Token merging ratio high-res", ""),
    ("Always discard next-to-last sigma", ""), ("SGM noise multiplier", ""), ("Refiner checkpoint", ""),
    ("Refiner switch at", ""), ("RNG source", ""), ("FP8 mode", ""), ("Size", ""),
]


def axis_labels(is_img2img: bool = False) -> list[str]:
    """The axis choices Atelier offers, for a UI dropdown ("Setting: <name>" is typed in addition)."""
    txt2img_only = {"Hires steps", "Hires upscaler"}
    return [a.label for a in AXES if not (is_img2img and a.label in txt2img_only)]


def resolve_axis(kind: Union[str, int], is_img2img: bool = False, field: str = "x_type") -> Axis:
    """An axis from its label, "Setting: <name>", or its index in A1111's list for the tab."""
    if isinstance(kind, int) and not isinstance(kind, bool):
        shown = [label for label, only in A1111_AXIS_LABELS if only != ("t" if is_img2img else "i")]
        if not 0 <= kind < len(shown):
            raise ValidationError(field, f"axis index {kind} is out of range (0-{len(shown) - 1})")
        kind = shown[kind]
    text = str(kind).strip()
    if text.lower().startswith(SETTING_PREFIX.lower()):
        return _setting_axis(text[len(SETTING_PREFIX):].strip(), field)
    if text in OPTIONS:
        return _setting_axis(text, field)
    axis = _BY_LABEL.get(text.lower())
    if axis is None:
        known = any(label.lower() == text.lower() for label, _ in A1111_AXIS_LABELS)
        reason = "is an A1111 axis Atelier doesn't support" if known else "is not an axis"
        raise ValidationError(field, f"{text!r} {reason}; choose one of {', '.join(axis_labels(is_img2img))}, "
                                     f"or '{SETTING_PREFIX}<setting name>'")
    if is_img2img and axis.label in ("Hires steps", "Hires upscaler"):
        raise ValidationError(field, f"{axis.label!r} is for txt2img only")
    return axis


def _setting_axis(name: str, field: str) -> Axis:
    option = OPTIONS.get(name)
    if option is None:
        raise ValidationError(field, f"unknown setting {name!r}")
    default = option.default
    kind: Callable[[Any], Any]
    if isinstance(default, bool):
        kind = lambda v: v if isinstance(v, bool) else str(v).strip().lower() == "true"  # noqa: E731
    elif isinstance(default, int):
        kind = int
    elif isinstance(default, float):
        kind = float
    else:
        kind = str

    def confirm(engine: "Engine", req: GenerationRequest, values: list) -> None:
        probe = Settings()
        for value in values:
            probe.set(name, value, save=False)  # the setting's own checks (type, choices, range)

    return Axis(f"{SETTING_PREFIX}{name}", kind, _override(name), cost=1.0 if name in ("sd_model_checkpoint",)
                else 0.0, confirm=confirm)


# --------------------------------------------------------------------------- values


def _csv(values: str) -> list[str]:
    return [v.strip() for v in chain.from_iterable(csv.reader(StringIO(values)))]


def parse_values(axis: Axis, values: Union[str, Sequence[Any]], field: str = "x_values") -> list[Any]:
    """A1111's process_axis: CSV (or a list from a dropdown), ranges for numbers, then the axis type."""
    if axis.label == "Nothing":
        return [0]
    items = _csv(values) if isinstance(values, str) else [str(v).strip() if isinstance(v, str) else v for v in values]
    items = [v for v in items if v != ""]
    if not items:
        raise ValidationError(field, f"{axis.label}: no values given")
    try:
        if axis.type is int:
            expanded: list[Any] = []
            for value in items:
                m, mc = RE_RANGE.fullmatch(str(value)), RE_RANGE_COUNT.fullmatch(str(value))
                if m is not None:
                    start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", "")) + 1
                    expanded += list(range(start, end, int(m.group(3)) if m.group(3) else 1))
                elif mc is not None:
                    start, end = int(mc.group(1).replace(" ", "")), int(mc.group(2).replace(" ", ""))
                    count = int(mc.group(3)) if mc.group(3) else 1
                    expanded += [int(x) for x in np.linspace(start, end, count).tolist()]
                else:
                    expanded.append(value)
            items = expanded
        elif axis.type is float:
            expanded = []
            for value in items:
                m, mc = RE_RANGE_FLOAT.fullmatch(str(value)), RE_RANGE_COUNT_FLOAT.fullmatch(str(value))
                if m is not None:
                    start, end = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", ""))
                    step = float(m.group(3)) if m.group(3) else 1.0
                    expanded += np.arange(start, end + step, step).tolist()
                elif mc is not None:
                    start, end = float(mc.group(1).replace(" ", "")), float(mc.group(2).replace(" ", ""))
                    count = int(float(mc.group(3))) if mc.group(3) else 1
                    expanded += np.linspace(start, end, count).tolist()
                else:
                    expanded.append(value)
            items = expanded
        if axis.type is permutations:
            return [tuple(p) for p in permutations(items)]
        if axis.type is int:  # "7.0" is not an int, as in A1111; say so plainly
            return [int(v) if not isinstance(v, str) else int(v.strip()) for v in items]
        return [axis.type(v) for v in items]
    except ValueError as e:
        raise ValidationError(field, f"{axis.label}: {_value_error(axis, e)}") from None


def _value_error(axis: Axis, error: ValueError) -> str:
    text = str(error)
    if axis.type is int:
        return f"every value must be an integer or a range like 1-5 ({text})"
    if axis.type is float:
        return f"every value must be a number or a range like 0.5-1 [3] ({text})"
    return text


def format_label(axis: Axis, value: Any) -> str:
    if axis.label == "Nothing":
        return ""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.type is permutations:
        return ", ".join(value)
    if axis.label == "Checkpoint name":
        return Path(str(value)).name
    return f"{axis.label}: {value}" if axis.show_label else str(value)


# --------------------------------------------------------------------------- the plot


@dataclass
class Cell:
    x: Any
    y: Any
    z: Any
    image: Optional[Image.Image] = None
    infotext: str = ""
    error: Optional[str] = None  # why the cell failed; its image is then the red-cross placeholder


@dataclass
class XYZResult(ScriptResult):
    cells: list[Cell] = field(default_factory=list)  # every cell, x fastest, then y, then z


def run_xyz_plot(engine: "Engine", request: GenerationRequest,
                 x_type: Union[str, int] = "Seed", x_values: Union[str, Sequence[Any]] = "",
                 y_type: Union[str, int] = "Nothing", y_values: Union[str, Sequence[Any]] = "",
                 z_type: Union[str, int] = "Nothing", z_values: Union[str, Sequence[Any]] = "",
                 draw_legend: bool = True, include_lone_images: bool = False, include_sub_grids: bool = False,
                 no_fixed_seeds: bool = False, margin_size: int = 0) -> XYZResult:
    """Generate every combination and return [grid, (sub-grids), (cell images)] with infotexts, as A1111 does.

    Raises ValidationError naming the axis field for bad types or values, before any image is made."""
    request = request.validate()
    img2img = request.is_img2img
    if not 0 <= int(margin_size) <= 500:
        raise ValidationError("margin_size", f"must be between 0 and 500, got {margin_size}")
    if not no_fixed_seeds:
        request = fix_seed(request)
    axes, value_lists, raw_values = [], [], []
    for letter, kind, values in (("x", x_type, x_values), ("y", y_type, y_values), ("z", z_type, z_values)):
        axis = resolve_axis(kind, img2img, f"{letter}_type")
        parsed = parse_values(axis, values, f"{letter}_values")
        if not no_fixed_seeds and axis.label in ("Seed", "Var. seed"):
            parsed = [random.randrange(MAX_SEED) if v in (-1, None, "") else v for v in parsed]
        _confirm(engine, request, axis, parsed, f"{letter}_values")
        axes.append(axis)
        value_lists.append(parsed)
        raw_values.append(values if isinstance(values, str) else ", ".join(map(str, values)))
    xs, ys, zs = value_lists
    x_axis, y_axis, z_axis = axes

    cells = [[[Cell(x, y, z) for x in xs] for y in ys] for z in zs]
    result = XYZResult(seed=request.seed)
    order = _order(axes, len(xs), len(ys), len(zs))
    for iz, iy, ix in order:
        cell = cells[iz][iy][ix]
        if result.interrupted:
            break
        cell_request = z_axis.apply(y_axis.apply(x_axis.apply(request, cell.x, xs), cell.y, ys), cell.z, zs)
        cell_request = cell_request.copy(do_not_save_grid=True)
        try:
            output = run_job(engine, cell_request)
        except ScriptInterrupted as stop:
            result.interrupted = True
            output = stop.output
            if output is None or not output.images:
                continue
        except JobFailed as e:
            cell.error = str(e)
            result.errors.append(f"{_cell_name(axes, cell)}: {e}")
            continue
        cell.image = output.grid if output.grid is not None else output.images[0]
        cell.infotext = output.infotexts[0] if output.infotexts else ""
        result.paths.extend(output.paths)

    done = [c for plane in cells for row in plane for c in row if c.image is not None]
    if not done:
        reason = result.errors[0] if result.errors else "interrupted before the first cell finished"
        raise JobFailed(f"{TITLE}: no cell produced an image ({reason})")
    size = (max(c.image.width for c in done), max(c.image.height for c in done))
    for plane in cells:
        for row in plane:
            for c in row:
                if c.image is None:
                    c.image = failed_cell(size, c.error)

    x_labels = [format_label(x_axis, x) for x in xs]
    y_labels = [format_label(y_axis, y) for y in ys]
    z_labels = [format_label(z_axis, z) for z in zs]
    sub_grids = []
    for plane in cells:
        grid = image_saving.make_grid([c.image for row in plane for c in row], rows=len(ys))
        if draw_legend:
            grid = draw_grid_annotations(grid, size[0], size[1], labels(x_labels), labels(y_labels), margin_size)
        sub_grids.append(grid)
    if len(zs) > 1:
        main = image_saving.make_grid(sub_grids, rows=1)
        if draw_legend:
            main = draw_grid_annotations(main, sub_grids[0].width, sub_grids[0].height, labels(z_labels),
                                         [[GridAnnotation()]])
    else:
        main = sub_grids[0]

    first_info = next((c.infotext for c in done if c.infotext), "")
    grid_params: dict[str, object] = {"Script": TITLE}
    for letter, axis, raw, values in zip("XYZ", axes, raw_values, value_lists):
        if axis.label == "Nothing":
            continue
        grid_params[f"{letter} Type"] = axis.label
        grid_params[f"{letter} Values"] = raw
        if axis.label in ("Seed", "Var. seed") and not no_fixed_seeds:
            grid_params[f"Fixed {letter} Values"] = ", ".join(map(str, values))
    grid_info = add_infotext_params(first_info, grid_params)

    result.images.append(main)
    result.infotexts.append(grid_info)
    saved = save_grid(engine, request, main, grid_info, basename="xyz_grid")
    if saved:
        result.paths.insert(0, saved)
    if include_sub_grids and len(zs) > 1:
        for z_index, grid in enumerate(sub_grids):
            result.images.append(grid)
            result.infotexts.append(grid_info)
            path = save_grid(engine, request, grid, grid_info, basename="xyz_grid")
            if path:
                result.paths.append(path)
    if include_lone_images:
        for plane in cells:
            for row in plane:
                for c in row:
                    result.images.append(c.image)
                    result.infotexts.append(c.infotext or f"error: {c.error}")
    result.cells = [c for plane in cells for row in plane for c in row]
    return result


def _confirm(engine: "Engine", request: GenerationRequest, axis: Axis, values: list, field: str) -> None:
    """Every value must make a valid request on its own; checkpoints, samplers etc. must exist."""
    try:
        if axis.confirm is not None:
            axis.confirm(engine, request, values)
        for value in values:
            axis.apply(request, value, values).validate()
    except ValidationError as e:
        raise ValidationError(field, f"{axis.label}: {e}") from None
    except ValueError as e:
        raise ValidationError(field, f"{axis.label}: {e}") from None


def _order(axes: list[Axis], nx: int, ny: int, nz: int) -> list[tuple[int, int, int]]:
    """A1111's loop order: the costliest axis (checkpoint, VAE) outermost, so it changes least often.
    Returns (z, y, x) indexes."""
    x, y, z = (axis.cost for axis in axes)
    first, second = "z", "y"
    if x > y and x > z:
        first, second = "x", ("y" if y > z else "z")
    elif y > x and y > z:
        first, second = "y", ("x" if x > z else "z")
    elif z > x and z > y:
        first, second = "z", ("x" if x > y else "y")
    third = next(a for a in "xyz" if a not in (first, second))
    sizes = {"x": nx, "y": ny, "z": nz}
    order = []
    for i in range(sizes[first]):
        for j in range(sizes[second]):
            for k in range(sizes[third]):
                index = {first: i, second: j, third: k}
                order.append((index["z"], index["y"], index["x"]))
    return order


def _cell_name(axes: list[Axis], cell: Cell) -> str:
    return ", ".join(format_label(axis, value) if axis.show_label else f"{axis.label}: {format_label(axis, value)}"
                     for axis, value in zip(axes, (cell.x, cell.y, cell.z)) if axis.label != "Nothing")


def run_from_args(engine: "Engine", request: GenerationRequest, args: Sequence[Any]) -> XYZResult:
    """A1111's script_args for "x/y/z plot": [x_type, x_values, x_values_dropdown, y_type, y_values,
    y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids,
    no_fixed_seeds, margin_size, csv_mode(, raw_mode)]. A dropdown list is used when the text is empty."""
    a = list(args) + [None] * max(0, 15 - len(args))

    def values(text: Any, dropdown: Any) -> Union[str, list]:
        if (text is None or str(text).strip() == "") and dropdown:
            return list(dropdown)
        return "" if text is None else str(text)

    return run_xyz_plot(engine, request, a[0] if a[0] is not None else 1, values(a[1], a[2]),
                        a[3] if a[3] is not None else 0, values(a[4], a[5]), a[6] if a[6] is not None else 0,
                        values(a[7], a[8]), draw_legend=True if a[9] is None else bool(a[9]),
                        include_lone_images=bool(a[10]), include_sub_grids=bool(a[11]),
                        no_fixed_seeds=bool(a[12]), margin_size=int(a[13] or 0))
