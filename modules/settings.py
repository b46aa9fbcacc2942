"""User settings (A1111 option names), stored in config.json.

Writes are atomic. A corrupt config.json is backed up and replaced by defaults with a warning,
never a crash. Unknown keys are kept, so settings of extensions that are off survive.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from modules.errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    default: Any
    label: str
    section: str
    choices: Optional[Sequence[Any]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None


OPTIONS: dict[str, Option] = {
    "sd_model_checkpoint": Option(None, "Stable Diffusion checkpoint", "Stable Diffusion"),
    "sd_vae": Option("Automatic", "SD VAE", "Stable Diffusion"),
    "CLIP_stop_at_last_layers": Option(1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
    "sd_checkpoint_cache": Option(1, "Checkpoints to keep in RAM besides the loaded one", "Stable Diffusion",
                                  minimum=0, maximum=10),
    "samples_save": Option(True, "Always save all generated images", "Saving images"),
    "samples_format": Option("png", "File format for images", "Saving images", choices=("png", "jpg", "webp")),
    "grid_save": Option(True, "Always save all generated image grids", "Saving images"),
    "grid_format": Option("png", "File format for grids", "Saving images", choices=("png", "jpg", "webp")),
    "return_grid": Option(True, "Show grid in gallery", "Saving images"),
    "outdir_txt2img_samples": Option("", "Output directory for txt2img images (empty = outputs/txt2img-images)",
                                     "Paths for saving"),
    "outdir_img2img_samples": Option("", "Output directory for img2img images (empty = outputs/img2img-images)",
                                     "Paths for saving"),
    "outdir_extras_samples": Option("", "Output directory for images from extras tab (empty = outputs/extras-images)",
                                    "Paths for saving"),
    "add_model_hash_to_info": Option(True, "Add model hash to infotext", "Infotext"),
    "add_model_name_to_info": Option(True, "Add model name to infotext", "Infotext"),
    "add_vae_hash_to_info": Option(True, "Add VAE hash to infotext", "Infotext"),
    "add_vae_name_to_info": Option(True, "Add VAE name to infotext", "Infotext"),
    "add_version_to_infotext": Option(True, "Add program version to infotext", "Infotext"),
    "show_progress_every_n_steps": Option(10, "Live preview every N steps (0 = off)", "Live previews",
                                          minimum=0, maximum=100),
    "emphasis": Option("Original", "Emphasis mode", "Stable Diffusion",
                       choices=("None", "Ignore", "Original", "No norm")),
    "comma_padding_backtrack": Option(20, "Prompt word wrap length limit", "Stable Diffusion", minimum=0, maximum=74),
    "enable_prompt_comments": Option(True, "Enable comments (# to the end of a line is left out of prompts)",
                                     "Stable Diffusion"),
    "show_progress_type": Option("Approx cheap", "Live preview method", "Live previews",
                                 choices=("Full", "Approx NN", "Approx cheap", "TAESD")),
    "token_merging_ratio": Option(0.0, "Token merging ratio (0 = off; higher is faster and changes the image more)",
                                  "Optimizations", minimum=0.0, maximum=0.9),
    "unet_compile": Option(False, "Compile the UNet with torch.compile (first image slow; applies on next load)",
                           "Optimizations"),
    "cpu_prepack": Option(True, "On the CPU, pack convolution weights once for oneDNN (faster; a second copy of "
                          "the conv weights in RAM)", "Optimizations"),
    "ESRGAN_tile": Option(192, "Tile size for ESRGAN upscalers (0 = no tiling)", "Upscaling", minimum=0, maximum=512),
    "ESRGAN_tile_overlap": Option(8, "Tile overlap for ESRGAN upscalers (low values = visible seam)", "Upscaling",
                                  minimum=0, maximum=48),
}


def _check(name: str, option: Option, value: Any) -> Any:
    default = option.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValidationError(name, f"must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValidationError(name, f"must be an integer, got {value!r}")
        value = int(value)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(name, f"must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {value!r}")
    if option.choices is not None and value not in option.choices:
        raise ValidationError(name, f"must be one of {', '.join(map(str, option.choices))}, got {value!r}")
    if option.minimum is not None and value < option.minimum:
        raise ValidationError(name, f"must be at least {option.minimum}, got {value}")
    if option.maximum is not None and value > option.maximum:
        raise ValidationError(name, f"must be at most {option.maximum}, got {value}")
    return value


@dataclass
class Settings:
    file: Optional[Path] = None
    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    on_change: list[Callable[[str, Any], None]] = field(default_factory=list, repr=False)  # (name, new value)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, file: Optional[Path]) -> "Settings":
        settings = cls(file=file)
        if file is None or not file.exists():
            return settings
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            backup = file.with_name(f"{file.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(file, backup)
            message = f"{file.name} was unreadable ({e}); it was moved to {backup.name} and defaults are in use"
            log.warning(message)
            settings.warnings.append(message)
            return settings
        for name, value in data.items():
            option = OPTIONS.get(name)
            try:
                settings.values[name] = _check(name, option, value) if option else value
            except ValidationError as e:
                settings.warnings.append(f"ignored a bad saved setting: {e}")
        return settings

    def get(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        option = OPTIONS.get(name)
        return option.default if option else None

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def set(self, name: str, value: Any, save: bool = True) -> None:
        option = OPTIONS.get(name)
        value = _check(name, option, value) if option else value
        with self._lock:
            self.values[name] = value
            if save:
                self._save()
        self._notify({name: value})

    def update(self, changes: dict[str, Any]) -> None:
        """All or nothing: every value is checked before any is stored."""
        checked = {k: (_check(k, OPTIONS[k], v) if k in OPTIONS else v) for k, v in changes.items()}
        with self._lock:
            self.values.update(checked)
            self._save()
        self._notify(checked)

    def _notify(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            for listener in list(self.on_change):
                listener(name, value)

    def all(self) -> dict[str, Any]:
        merged = {name: option.default for name, option in OPTIONS.items()}
        merged.update(self.values)
        return merged

    def _save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.values, f, indent=4, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)
