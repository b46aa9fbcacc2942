"""GenerationRequest: the one description of a generation that every entry point builds.

Field names follow A1111's API (`/sdapi/v1/txt2img` and `img2img`), so API JSON, UI forms,
infotext and scripts all map onto it without renaming. Validation happens here, once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image

from modules.errors import ValidationError

MAX_SIDE = 8192
MAX_STEPS = 1000
MAX_BATCH_SIZE = 64
MAX_N_ITER = 1000

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)

    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0

    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1

    # img2img and inpaint. A request with init_images is img2img; with a mask too, inpaint.
    init_images: list[Image.Image] = field(default_factory=list)
    mask: Optional[Image.Image] = None
    resize_mode: int = 0  # index into RESIZE_MODES
    denoising_strength: float = 0.75
    mask_blur: int = 4
    inpainting_fill: int = 1  # index into INPAINTING_FILL
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0  # 1 = inpaint the unmasked area

    # hires fix (txt2img only)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0 = same as steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0

    # Settings that apply to this request only, by A1111 option name:
    # sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers, ...
    override_settings: dict[str, Any] = field(default_factory=dict)

    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    script_name: Optional[str] = None
    script_args: list[Any] = field(default_factory=list)
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)

    @property
    def is_img2img(self) -> bool:
        return bool(self.init_images)

    @property
    def clip_skip(self) -> int:
        return int(self.override_settings.get("CLIP_stop_at_last_layers", 1))

    @property
    def checkpoint(self) -> Optional[str]:
        return self.override_settings.get("sd_model_checkpoint")

    @property
    def vae(self) -> Optional[str]:
        return self.override_settings.get("sd_vae")

    def copy(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "GenerationRequest":
        """Raise ValidationError naming the first bad field; return self so calls chain."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValidationError(name, f"must be an integer, got {value!r}")
            if value < 64 or value > MAX_SIDE:
                raise ValidationError(name, f"must be between 64 and {MAX_SIDE}, got {value}")
            if value % 8:
                raise ValidationError(name, f"must be a multiple of 8, got {value}")
        _check_int(self, "steps", 1, MAX_STEPS)
        _check_int(self, "batch_size", 1, MAX_BATCH_SIZE)
        _check_int(self, "n_iter", 1, MAX_N_ITER)
        _check_int(self, "seed", -1, 2**32 - 1)
        _check_int(self, "subseed", -1, 2**32 - 1)
        _check_number(self, "cfg_scale", 0.0, 100.0)
        _check_number(self, "subseed_strength", 0.0, 1.0)
        _check_number(self, "denoising_strength", 0.0, 1.0)
        _check_int(self, "resize_mode", 0, len(RESIZE_MODES) - 1)
        _check_int(self, "inpainting_fill", 0, len(INPAINTING_FILL) - 1)
        _check_int(self, "mask_blur", 0, 256)
        _check_int(self, "inpaint_full_res_padding", 0, 1024)
        _check_int(self, "inpainting_mask_invert", 0, 1)
        _check_int(self, "clip_skip", 1, 12, field="override_settings.CLIP_stop_at_last_layers")
        for name in ("seed_resize_from_w", "seed_resize_from_h"):  # noise is drawn at this size
            _check_int(self, name, -1, MAX_SIDE)
        if self.enable_hr:
            _check_number(self, "hr_scale", 1.0, 8.0)
            _check_int(self, "hr_second_pass_steps", 0, MAX_STEPS)
            for name in ("hr_resize_x", "hr_resize_y"):
                value = getattr(self, name)
                _check_int(self, name, 0, MAX_SIDE)
                if value and value % 8:
                    raise ValidationError(name, f"must be a multiple of 8, got {value}")
        if self.mask is not None and not self.init_images:
            raise ValidationError("mask", "a mask needs an init image to inpaint")
        if not isinstance(self.prompt, str):
            raise ValidationError("prompt", "must be a string")
        if not isinstance(self.negative_prompt, str):
            raise ValidationError("negative_prompt", "must be a string")
        return self


def check_pixel_budget(req: GenerationRequest, max_pixels: int) -> None:
    """--max-pixels on what a request makes at once: width x height x batch_size, for the first pass and, with
    hires fix, for its target size. Call after validate(). Raises ValidationError naming the field to change."""
    if max_pixels <= 0:
        return
    sizes = [("width", req.width, req.height)]
    if req.enable_hr:
        from modules.processing import hires_size  # the one rule for the target size; processing imports us

        tw, th = hires_size(req)
        sizes.append(("hr_resize_x" if req.hr_resize_x or req.hr_resize_y else "hr_scale", tw, th))
    for name, w, h in sizes:
        if w * h > max_pixels:
            raise ValidationError(name, f"{w}x{h} is {w * h} pixels; at most {max_pixels} (--max-pixels)")
        if w * h * req.batch_size > max_pixels:
            raise ValidationError("batch_size", f"{req.batch_size} images of {w}x{h} are {w * h * req.batch_size} "
                                                f"pixels at once; at most {max_pixels} (--max-pixels)")


def _check_int(req: GenerationRequest, name: str, low: int, high: int, field: Optional[str] = None) -> None:
    value = getattr(req, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(field or name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(field or name, f"must be between {low} and {high}, got {value}")


def _check_number(req: GenerationRequest, name: str, low: float, high: float) -> None:
    value = getattr(req, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(name, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(name, f"must be between {low} and {high}, got {value}")
