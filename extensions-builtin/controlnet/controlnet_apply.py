"""Turning enabled units into UNet residuals inside the denoise loop.

For a job, each enabled unit's input image is preprocessed once (at its processor resolution, or the "pixel
perfect" one), then fitted to each pass's size with the unit's resize mode, so hires fix gets a control map at
its own size. Every UNet call asks each unit's ControlNet for residuals (a residual provider, see
DenoiseState.residual_providers); the loop adds them up across units. As sd-webui-controlnet does:
- guidance start/end compare the step's fraction of its pass with the unit's range;
- "My prompt is more important" scales the 13 residuals by weight × 0.825^(12 − i), weakest at full resolution;
- "ControlNet is more important" does the same and leaves the unconditional (negative prompt) rows alone, so
  classifier-free guidance pushes toward the control.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np
import torch
from PIL import Image

from modules import extension_api as api

from controlnet_models import ControlNetError, ControlNetLibrary, check_fits
from controlnet_preprocessors import find_preprocessor, preprocess
from controlnet_units import ControlUnit, infotext_entry

SOFT_SCALES = [0.825 ** float(12 - i) for i in range(13)]


def pixel_perfect_resolution(height: int, width: int, target_h: int, target_w: int, resize_mode: str) -> int:
    """The processor resolution at which the map comes out at the target size, for the image's short side."""
    k0, k1 = target_h / height, target_w / width
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(round(k * min(height, width)))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Hard-edged maps (edges, masks with the -1 marker) stay hard: interpolating would invent grey lines.
    hard = bool(np.isin(image, (0.0, 1.0, -1.0)).all())
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_NEAREST if hard else (cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    out = cv2.resize(image, (max(1, width), max(1, height)), interpolation=interpolation)
    return out if out.ndim == 3 else out[..., None].repeat(3, axis=2)


def fit_map(image: np.ndarray, height: int, width: int, resize_mode: str) -> np.ndarray:
    """A map at exactly height × width: stretched, cropped to fill, or fitted inside and padded with black."""
    h, w = image.shape[:2]
    if resize_mode == "Just Resize":
        return _resize(image, width, height)
    k = max(height / h, width / w) if resize_mode == "Crop and Resize" else min(height / h, width / w)
    scaled = _resize(image, int(round(w * k)), int(round(h * k)))
    sh, sw = scaled.shape[:2]
    if resize_mode == "Crop and Resize":
        top, left = (sh - height) // 2, (sw - width) // 2
        return scaled[top:top + height, left:left + width]
    out = np.zeros((height, width, 3), np.float32)
    top, left = (height - sh) // 2, (width - sw) // 2
    out[top:top + sh, left:left + sw] = scaled
    return out


def map_to_image(control_map: np.ndarray) -> Image.Image:
    """A viewable picture of a map (the -1 "inpaint here" marker shows black)."""
    return Image.fromarray((control_map.clip(0, 1) * 255).round().astype(np.uint8))


def detect(unit: ControlUnit, image: Image.Image, mask: Optional[Image.Image], target: tuple[int, int]) -> np.ndarray:
    """The unit's preprocessed map for an input image; `target` (height, width) serves pixel perfect."""
    rgb = np.asarray(image.convert("RGB"))
    mask_array = np.asarray(mask.convert("L").resize(image.size)) if mask is not None else None
    resolution = unit.processor_res
    if unit.pixel_perfect:
        resolution = pixel_perfect_resolution(rgb.shape[0], rgb.shape[1], target[0], target[1], unit.resize_mode)
    a = unit.threshold_a if unit.threshold_a is not None else -1
    b = unit.threshold_b if unit.threshold_b is not None else -1
    return preprocess(unit.module, rgb, resolution, a, b, mask_array)


@dataclass
class ActiveUnit:
    """One enabled unit for one job: its ControlNet and preprocessed map, and its fitted hints by size."""

    index: int
    unit: ControlUnit
    net: Any
    control_map: np.ndarray
    hints: dict = field(default_factory=dict)

    def wants(self, step: int, total_steps: int, pass_name: str, hires: bool) -> bool:
        if self.unit.weight == 0:
            return False
        if hires and (pass_name, self.unit.hr_option) in (("first", "High res only"), ("hires", "Low res only")):
            return False
        fraction = step / max(total_steps, 1)
        return self.unit.guidance_start <= fraction <= self.unit.guidance_end

    def hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (height, width, device, dtype)
        if key not in self.hints:
            fitted = fit_map(self.control_map, height, width, self.unit.resize_mode)
            self.hints[key] = torch.from_numpy(np.ascontiguousarray(fitted)).permute(2, 0, 1)[None].to(device, dtype)
        return self.hints[key]

    def residuals(self, call: Any, hires: bool) -> dict:
        if not self.wants(call.step, call.total_steps, call.pass_name, hires):
            return {}
        net = self.net
        param = next(net.parameters())
        if param.device != call.sample.device or param.dtype != call.sample.dtype:
            net.to(call.sample.device, call.sample.dtype)
        api.optimize_for_inference(net)  # packed convs on the CPU, as the UNet has
        # "ControlNet is more important" leaves the unconditional rows alone: don't compute them at all.
        rows = ~call.uncond if self.unit.control_mode == "ControlNet is more important" else None
        if rows is not None and bool(rows.all()):
            rows = None
        if rows is not None and not bool(rows.any()):
            return {}
        outputs = self._run(net, call, rows)
        return self._scaled(outputs, call.uncond.shape[0], rows)

    def _run(self, net: Any, call: Any, rows: Optional[torch.Tensor]) -> list[torch.Tensor]:
        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if rows is None else x[rows]

        factor = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)
        latents = pick(call.latents)
        _, _, h, w = latents.shape
        hint = self.hint(h * factor, w * factor, call.sample.device, call.sample.dtype)
        extra = {}
        if call.added_cond_kwargs:
            extra["added_cond_kwargs"] = {k: pick(v) for k, v in call.added_cond_kwargs.items()}
        with torch.no_grad():
            down, mid = net(latents, call.timestep, encoder_hidden_states=pick(call.context),
                            controlnet_cond=hint.expand(latents.shape[0], -1, -1, -1), conditioning_scale=1.0,
                            return_dict=False, **extra)
        return [*down, mid]

    def _scaled(self, outputs: list[torch.Tensor], batch: int, rows: Optional[torch.Tensor]) -> dict:
        weight, mode = self.unit.weight, self.unit.control_mode
        scales = [weight] * len(outputs) if mode == "Balanced" else [weight * s for s in SOFT_SCALES[:len(outputs)]]
        scaled = [o * s for o, s in zip(outputs, scales)]
        if rows is not None:  # zeros for the rows left out
            full = [o.new_zeros((batch, *o.shape[1:])) for o in scaled]
            for target, part in zip(full, scaled):
                target[rows] = part
            scaled = full
        return {"down_block_additional_residuals": tuple(scaled[:-1]), "mid_block_additional_residual": scaled[-1]}


def unit_input(unit: ControlUnit, p: Any) -> tuple[Optional[Image.Image], Optional[Image.Image]]:
    """The unit's own image, else (in img2img) the img2img image and its inpaint mask."""
    init_images = list(getattr(p, "init_images", None) or [])
    if unit.image is not None and not unit.use_img2img_image:
        return unit.image, unit.mask
    if init_images:
        return init_images[0], unit.mask if unit.mask is not None else getattr(p, "image_mask", None)
    return None, None


def activate(units: list[ControlUnit], p: Any, library: ControlNetLibrary) -> list[ActiveUnit]:
    """Load and preprocess every enabled unit that has a model; errors name the unit."""
    active = []
    model_family = p.sd_model.family if getattr(p, "sd_model", None) is not None else None
    for index, unit in enumerate(units):
        if not unit.enabled:
            continue
        try:
            active.extend(_activate_one(index, unit, p, library, model_family))
        except (ControlNetError, ValueError) as e:
            raise ControlNetError(f"ControlNet unit {index}: {e}") from None
    return active


def _activate_one(index: int, unit: ControlUnit, p: Any, library: ControlNetLibrary,
                  model_family: Optional[str]) -> list[ActiveUnit]:
    find_preprocessor(unit.module)  # an unknown name is an error even without a model
    file = library.find(unit.model)
    if file is None:
        return []  # a preprocessor alone changes nothing in the image
    image, mask = unit_input(unit, p)
    if image is None:
        raise ControlNetError("no input image (give one, or use it in img2img)")
    net, family = library.load(file)
    if model_family is not None:
        check_fits(file.name, family, model_family)
    unit.model = file.title
    image, mask = _only_masked(p, image, mask)
    control_map = detect(unit, image, mask, (int(p.height), int(p.width)))
    return [ActiveUnit(index, unit, net, control_map)]


def _only_masked(p: Any, image: Image.Image, mask: Optional[Image.Image]):
    """Inpaint "only masked" generates a box of the img2img picture: a control image of the picture's size is
    cut to the same box (as sd-webui-controlnet does), so the control lines up with what is generated."""
    init_images = list(getattr(p, "init_images", None) or [])
    if not init_images or image.size != init_images[0].size:
        return image, mask
    box = api.inpaint_crop_box(p, init_images[0])
    if box is None:
        return image, mask
    return image.crop(box), (mask.crop(box) if mask is not None and mask.size == image.size else mask)


def detected_maps(active: list[ActiveUnit], height: int, width: int) -> list[Image.Image]:
    """What sd-webui-controlnet hands back after the images: each unit's preprocessed map, fitted to the image
    size as the UNet reads it, for the units that have a preprocessor and keep `save_detected_map`."""
    return [map_to_image(fit_map(a.control_map, height, width, a.unit.resize_mode)) for a in active
            if a.unit.save_detected_map and find_preprocessor(a.unit.module).name != "none"]


def infotext_params(active: list[ActiveUnit]) -> dict[str, str]:
    return {f"ControlNet {a.index}": infotext_entry(_effective(a.unit)) for a in active}


def _effective(unit: ControlUnit) -> ControlUnit:
    """The unit as it ran: sliders left at -1 show the preprocessor's defaults."""
    preprocessor = find_preprocessor(unit.module)
    a, b = preprocessor.defaults()
    shown = ControlUnit(**{**unit.__dict__})
    shown.module = preprocessor.name
    shown.processor_res = unit.processor_res if unit.processor_res > 0 else 512
    shown.threshold_a = unit.threshold_a if unit.threshold_a >= 0 else a
    shown.threshold_b = unit.threshold_b if unit.threshold_b >= 0 else b
    return shown
