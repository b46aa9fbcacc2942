"""What every tab shares: the UI context, ui-config.json (per-control defaults and slider limits), small helpers.

ui-config.json uses A1111's keys, `"<tab>/<label>/<attribute>"` (e.g. `"txt2img/Sampling steps/value"`,
`"txt2img/Sampling steps/maximum"`), so an A1111 user's habit of editing that file still works.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from modules.engine import Engine
from modules.errors import AtelierError, ValidationError

log = logging.getLogger(__name__)

SAVED_ATTRS = ("value", "minimum", "maximum", "step")


@dataclass
class Control:
    component: Any
    defaults: dict[str, Any]  # the attributes ui-config.json may set, as the code declares them


class UIConfig:
    """Per-control defaults. Read at start-up; `updates()` re-applies them on each page load."""

    def __init__(self, file: Optional[Path]):
        self.file = file
        self.values: dict[str, Any] = {}
        self.controls: dict[str, Control] = {}
        self.warnings: list[str] = []
        if file is not None and file.exists():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                self.values = data
            except (OSError, ValueError) as e:
                backup = file.with_name(f"{file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(file, backup)
                self.warnings.append(f"{file.name} was unreadable ({e}); moved to {backup.name}")
                log.warning(self.warnings[-1])

    def add(self, tab: str, label: str, factory: Callable[..., Any], **kwargs: Any) -> Any:
        """Create a control whose value (and limits, for sliders) ui-config.json may override."""
        key = f"{tab}/{label}"
        defaults = {attr: kwargs[attr] for attr in SAVED_ATTRS if attr in kwargs}
        for attr in defaults:
            saved = self.values.get(f"{key}/{attr}")
            if saved is not None and _fits(kwargs, attr, saved):
                kwargs[attr] = saved
        component = factory(label=label, **kwargs)
        self.controls[key] = Control(component, defaults)
        return component

    def current(self, key: str, attr: str) -> Any:
        return self.values.get(f"{key}/{attr}", self.controls[key].defaults.get(attr))

    def updates(self) -> dict[Any, Any]:
        """gr.update for every control whose saved default differs from what the page was built with."""
        result = {}
        for key, control in self.controls.items():
            built = {attr: getattr(control.component, attr, None) for attr in control.defaults}
            wanted = {attr: self.current(key, attr) for attr in control.defaults}
            changed = {a: v for a, v in wanted.items() if v is not None and v != built[a]}
            if changed:
                result[control.component] = gr.update(**changed)
        return result

    def save_values(self, values: dict[Any, Any]) -> int:
        """Store the given current control values as defaults; returns how many changed."""
        by_component = {id(c.component): key for key, c in self.controls.items()}
        changed = 0
        for component, value in values.items():
            key = by_component.get(id(component))
            if key is None or "value" not in self.controls[key].defaults:
                continue
            if self.values.get(f"{key}/value") != value:
                self.values[f"{key}/value"] = value
                changed += 1
        self.save()
        return changed

    def replace(self, data: dict[str, Any]) -> None:
        self.values = dict(data)
        self.save()

    def with_defaults(self) -> dict[str, Any]:
        """Every known key: saved values first, the code's defaults for the rest (A1111 writes them all)."""
        merged = {f"{key}/{attr}": value for key, c in self.controls.items() for attr, value in c.defaults.items()}
        merged.update(self.values)
        return merged

    def write_missing(self) -> None:
        merged = self.with_defaults()
        if merged != self.values:
            self.values = merged
            self.save()

    def save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        tmp.write_text(json.dumps(self.values, indent=4, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.file)


def _fits(kwargs: dict[str, Any], attr: str, saved: Any) -> bool:
    """A saved default that no longer fits the control (a removed choice, a bad type) is ignored."""
    default = kwargs[attr]
    if isinstance(default, bool) or isinstance(saved, bool):
        return isinstance(default, bool) and isinstance(saved, bool)
    if isinstance(default, (int, float)):
        return isinstance(saved, (int, float))
    if attr == "value" and kwargs.get("choices") is not None:
        choices = [c[1] if isinstance(c, tuple) else c for c in kwargs["choices"]]
        values = saved if isinstance(saved, list) else [saved]
        return all(v in choices for v in values)
    return isinstance(saved, type(default)) or default is None


@dataclass
class UIContext:
    engine: Engine
    args: argparse.Namespace
    ui_config: UIConfig
    styles: Any = None  # StyleStore, shared by every tab's styles dropdown
    blocks: Any = None  # the gr.Blocks being built, for page-load events
    tabs: Any = None  # the top-level gr.Tabs, for "send to" buttons
    loaders: list[Callable[[], dict]] = field(default_factory=list)  # page-load updates

    @property
    def settings(self):
        return self.engine.settings

    def add(self, tab: str, label: str, factory: Callable[..., Any], **kwargs: Any) -> Any:
        return self.ui_config.add(tab, label, factory, **kwargs)

    def on_load(self, fn: Callable[[], dict]) -> None:
        """Register a function returning {component: update} to run on every page load."""
        self.loaders.append(fn)


ICONS = Path(__file__).with_name("assets") / "icons"


def tool_button(icon: str, elem_id: str) -> gr.Button:
    """A small square icon button where A1111 has its 🎲 ♻️ 🔄 buttons (SVG icons: they render without
    an emoji font). Tooltips come from assets/script.js, by elem_id."""
    return gr.Button("", icon=str(ICONS / f"{icon}.svg"), elem_id=elem_id, elem_classes=["tool"], scale=0,
                     min_width=40, size="sm", variant="secondary")


def esc(text: Any) -> str:
    return html.escape(str(text))


def error_html(message: Any) -> str:
    return f'<div class="atelier-error" role="alert">{esc(message)}</div>'


def note_html(message: Any) -> str:
    return f'<div class="atelier-note">{esc(message)}</div>'


def user_message(error: Exception) -> str:
    """What the artist reads for an error: AtelierError texts as they are; anything else with its type."""
    if isinstance(error, ValidationError):
        return f"{field_label(error.field)}: {error.reason}"
    if isinstance(error, AtelierError):
        return str(error)
    return f"{type(error).__name__}: {error}"


FIELD_LABELS = {
    "width": "Width", "height": "Height", "steps": "Sampling steps", "batch_size": "Batch size",
    "n_iter": "Batch count", "seed": "Seed", "subseed": "Variation seed", "cfg_scale": "CFG Scale",
    "subseed_strength": "Variation strength", "denoising_strength": "Denoising strength", "mask_blur": "Mask blur",
    "inpaint_full_res_padding": "Only masked padding, pixels", "hr_scale": "Upscale by",
    "hr_resize_x": "Resize width to", "hr_resize_y": "Resize height to", "hr_second_pass_steps": "Hires steps",
    "sampler_name": "Sampling method", "scheduler": "Schedule type", "prompt": "Prompt",
    "override_settings.CLIP_stop_at_last_layers": "Clip skip", "init_images": "Image", "mask": "Mask",
    "sd_model_checkpoint": "Stable Diffusion checkpoint",
}


def field_label(name: str) -> str:
    return FIELD_LABELS.get(name, name)


def to_int(value: Any, low: int, high: int, default: int = 0) -> int:
    """A number from a form, rounded and clamped into [low, high] (out-of-range input is clamped, not refused)."""
    try:
        number = int(round(float(value)))
    except (TypeError, ValueError):
        number = default
    return max(low, min(high, number))


def to_float(value: Any, low: float, high: float, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = default
    if number != number:  # NaN
        number = default
    return max(low, min(high, number))


def to_size(value: Any, low: int = 64, high: int = 2048) -> int:
    """Width/height: clamped, then down to a multiple of 8 as the model needs."""
    return to_int(value, low, high, 512) // 8 * 8
