"""A ControlNet unit: what one entry of `alwayson_scripts.controlnet.args` says, read the way
sd-webui-controlnet reads it (field names case-insensitive, `input_image` for `image`, enums as names or ints),
and its infotext entry, `ControlNet 0: "Module: canny, Model: name [hash], Weight: 1.0, ..."`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Optional

import numpy as np
from PIL import Image

from modules import extension_api as api

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
# Older clients' spellings (sd-webui-controlnet accepts them too).
_RESIZE_ALIASES = {"envelope (outer fit)": 2, "scale to fit (inner fit)": 1, "just resize": 0, "inner fit": 1,
                   "outer fit": 2, "resize": 0, "crop and resize": 1, "resize and fill": 2}
_CONTROL_ALIASES = {"balanced": 0, "my prompt is more important": 1, "controlnet is more important": 2,
                    "prompt": 1, "controlnet": 2}


class UnitError(ValueError):
    pass


@dataclass
class ControlUnit:
    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Optional[Image.Image] = None
    mask: Optional[Image.Image] = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"
    save_detected_map: bool = True
    use_img2img_image: bool = False  # Atelier's UI: take the img2img tab's image (and mask)


_FIELDS = {f.name: f for f in fields(ControlUnit)}
_ALIASES = {"input_image": "image", "mask_image": "mask", "guessmode": "control_mode"}


def _enum(value: Any, names: tuple[str, ...], aliases: dict[str, int], what: str) -> str:
    if isinstance(value, bool):
        raise UnitError(f"{what}: {value!r} is not one of {', '.join(names)}")
    if isinstance(value, (int, float)) and int(value) == value and 0 <= int(value) < len(names):
        return names[int(value)]
    text = str(value).strip()
    if text.isdigit() and int(text) < len(names):
        return names[int(text)]
    index = aliases.get(text.lower())
    if index is None:
        index = next((i for i, n in enumerate(names) if n.lower() == text.lower()), None)
    if index is None:
        raise UnitError(f"{what}: {value!r} is not one of {', '.join(names)}")
    return names[index]


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def decode_image(value: Any, field: str = "image") -> Optional[Image.Image]:
    """A PIL image from base64 (raw or a data URL, checked by the app's decoder), a numpy array, a PIL image,
    or Gradio's {"composite"/"background"/"image"} shapes. File paths are refused: a client must never make
    the server read its files."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value.astype(np.uint8))
    if isinstance(value, dict):  # Gradio ImageEditor shapes
        for key in ("composite", "background", "image"):
            if value.get(key) is not None:
                return decode_image(value[key], field)
        if value.get("path") is not None:
            raise UnitError(f"{field}: file paths are not read; send the image as base64")
        return None
    if isinstance(value, str):
        try:
            return api.decode_image(value, field)
        except api.ValidationError as e:
            raise UnitError(f"{field}: {e.reason}") from None
    raise UnitError(f"{field}: unsupported value of type {type(value).__name__}")


def _split_image(value: Any) -> tuple[Any, Any]:
    """sd-webui-controlnet's image forms: base64, {"image", "mask"}, [image, mask]."""
    if isinstance(value, dict) and ("image" in value or "mask" in value) and "composite" not in value:
        return value.get("image"), value.get("mask")
    if isinstance(value, (list, tuple)) and len(value) == 2 and not isinstance(value[0], (int, float)):
        return value[0], value[1]
    return value, None


def unit_from_args(arg: Any) -> ControlUnit:
    """One unit from an alwayson_scripts arg (a dict, or a ControlUnit); None or {} is a disabled unit."""
    if isinstance(arg, ControlUnit):
        return arg
    if arg is None or arg == {}:
        return ControlUnit()
    if not isinstance(arg, dict):
        raise UnitError(f"a ControlNet unit must be an object of fields, got {type(arg).__name__}")
    given = {}
    for key, value in arg.items():
        name = _ALIASES.get(str(key).lower(), str(key).lower())
        if name in _FIELDS:
            given[name] = value
    # A unit sent through the API is on unless it says otherwise (sd-webui-controlnet's default).
    unit = ControlUnit(enabled=True)
    image, mask = _split_image(given.pop("image", None))
    unit.image, unit.mask = decode_image(image, "image"), decode_image(given.pop("mask", None) or mask, "mask")
    for name, value in given.items():
        setattr(unit, name, _typed(name, value))
    if unit.guidance_start > unit.guidance_end:
        raise UnitError(f"guidance_start ({unit.guidance_start}) is after guidance_end ({unit.guidance_end})")
    return unit


def _typed(name: str, value: Any) -> Any:
    if name == "resize_mode":
        return _enum(value, RESIZE_MODES, _RESIZE_ALIASES, name)
    if name == "control_mode":
        return _enum(value, CONTROL_MODES, _CONTROL_ALIASES, name)
    if name == "hr_option":
        return _enum(value, HR_OPTIONS, {n.lower(): i for i, n in enumerate(HR_OPTIONS)}, name)
    kind = type(getattr(ControlUnit(), name))
    try:
        if kind is bool:
            return _bool(value)
        if kind in (int, float):
            return kind(float(value))
        return "None" if value is None and name == "model" else str(value)
    except (TypeError, ValueError):
        raise UnitError(f"{name}: {value!r} is not a {kind.__name__}") from None


# -- infotext ---------------------------------------------------------------------------------------------

INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "low_vram", "processor_res", "threshold_a",
                   "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode", "hr_option",
                   "save_detected_map")


def _display(field_name: str) -> str:
    return " ".join(word.capitalize() for word in field_name.split("_"))


def infotext_entry(unit: ControlUnit) -> str:
    """sd-webui-controlnet's serialize_unit: `Module: canny, Model: x [hash], Weight: 1.0, ...`."""
    return ", ".join(f"{_display(name)}: {getattr(unit, name)}" for name in INFOTEXT_FIELDS)


def _parse_value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_infotext_entry(text: str) -> dict[str, Any]:
    """`Module: canny, Weight: 1.0, ...` → {"module": "canny", "weight": 1.0, ...} (an enabled unit)."""
    values: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if sep:
            values["_".join(w.lower() for w in key.split(" "))] = _parse_value(value.strip())
    return values


UNIT_KEY = re.compile(r"^ControlNet (\d+)$")


def on_infotext_pasted(infotext: str, params: dict) -> None:
    """As sd-webui-controlnet: each `ControlNet N` entry also becomes `ControlNet N <field>` keys."""
    for key, value in list(params.items()):
        if UNIT_KEY.match(str(key)) and isinstance(value, str):
            for name, field_value in parse_infotext_entry(value).items():
                params[f"{key} {name}"] = field_value


def units_from_infotext(params: dict) -> list[dict[str, Any]]:
    """Unit args (API form, ordered by unit index) from a parsed infotext: what pasting restores."""
    found = {}
    for key, value in params.items():
        match = UNIT_KEY.match(str(key))
        if match and isinstance(value, str):
            found[int(match.group(1))] = parse_infotext_entry(value)
    return [found[i] for i in sorted(found)]
