"""Inpaint: masks, "only masked" crops, masked-content modes, per-step latent masking and the final overlay.

9-channel inpainting models get the mask and masked-image latents as extra UNet input; other models
inpaint by putting the (re-noised) original back outside the mask after every step. Either way the
original pixels are pasted back outside the blurred mask at the end, as A1111 does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import image_ops, vae_codec
from modules.model_loading import LoadedModel
from modules.request import GenerationRequest
from modules.sampling import DenoiseState

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


@dataclass
class Crop:
    source: Image.Image  # the full original image
    mask: Image.Image  # blurred mask at the source's size
    box: Optional[tuple[int, int, int, int]]  # "only masked" region, None for the whole picture


@dataclass
class InpaintJob:
    request: GenerationRequest
    crops: list[Crop]
    model_inputs: list[Image.Image]  # images at the generation size, as the model sees them
    model_masks: list[Image.Image]  # masks at the generation size
    latent_mask: Optional[torch.Tensor] = field(default=None)  # [B, 1, h, w], 1 = repaint

    @classmethod
    def prepare(cls, req: GenerationRequest, sources: list[Image.Image]) -> "InpaintJob":
        crops, inputs, masks = [], [], []
        for source in sources:
            source = image_ops.to_rgb(source)
            invert = bool(req.inpainting_mask_invert)
            if req.inpaint_full_res:
                mask = image_ops.prepare_mask(req.mask, source.size, req.mask_blur, invert)
                box = _only_masked_box(req, mask)
                if box is not None:
                    image = source.crop(box).resize((req.width, req.height), image_ops.LANCZOS)
                    model_mask = mask.crop(box).resize((req.width, req.height), image_ops.LANCZOS)
                    crops.append(Crop(source, mask, box))
                    inputs.append(image)
                    masks.append(model_mask)
                    continue
            image = image_ops.resize_image(req.resize_mode, source, req.width, req.height)
            mask = image_ops.prepare_mask(req.mask, (req.width, req.height), req.mask_blur, invert)
            crops.append(Crop(image, mask, None))
            inputs.append(image)
            masks.append(mask)
        if req.inpainting_fill == FILL:
            inputs = [image_ops.fill_masked(im, m) for im, m in zip(inputs, masks)]
        return cls(req, crops, inputs, masks)

    def setup_for(self, model: LoadedModel, init_latents: torch.Tensor) -> "InpaintSetup":
        h, w = init_latents.shape[-2:]
        arrays = [np.asarray(m.resize((w, h), image_ops.LANCZOS), dtype=np.float32) / 255.0 for m in self.model_masks]
        latent_mask = torch.from_numpy(np.round(np.stack(arrays)))[:, None].to(init_latents.device)
        return InpaintSetup(self, model, init_latents, latent_mask)

    def finish(self, generated: Image.Image, index: int) -> Image.Image:
        crop = self.crops[index % len(self.crops)]
        if crop.box is None:
            return image_ops.overlay_original(generated, crop.source, crop.mask)
        x1, y1, x2, y2 = crop.box
        pasted = crop.source.copy()
        pasted.paste(generated.resize((x2 - x1, y2 - y1), image_ops.LANCZOS), (x1, y1))
        return image_ops.overlay_original(pasted, crop.source, crop.mask)


@dataclass
class InpaintSetup:
    job: InpaintJob
    model: LoadedModel
    init_latents: torch.Tensor
    latent_mask: torch.Tensor

    def init(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Masked content before noising: random noise or nothing inside the mask."""
        fill = self.job.request.inpainting_fill
        if fill == LATENT_NOISE:
            return latents * (1 - self.latent_mask) + x * self.latent_mask
        if fill == LATENT_NOTHING:
            return latents * (1 - self.latent_mask)
        return latents

    def attach(self, state: DenoiseState, x: torch.Tensor, schedulers: list, timesteps: torch.Tensor,
               hooks) -> None:
        if self.model.unet.config.in_channels == 9:
            state.image_conditioning = self._inpainting_model_input()
            return
        original, mask = self.init_latents, self.latent_mask

        def keep_unmasked(s: DenoiseState) -> None:
            if s.step + 1 < len(timesteps):
                t_next = timesteps[s.step + 1: s.step + 2].repeat(original.shape[0])
                background = schedulers[0].add_noise(original, x, t_next)
            else:
                background = original
            s.latents = background * (1 - mask) + s.latents * mask

        hooks.add("after_step", keep_unmasked)

    def _inpainting_model_input(self) -> torch.Tensor:
        binary = [np.round(np.asarray(m, dtype=np.float32) / 255.0) for m in self.job.model_masks]
        mask = torch.from_numpy(np.stack(binary))[:, None].to(self.init_latents.device)
        pixels = image_ops.pil_to_tensor(self.job.model_inputs).to(self.init_latents.device)
        masked = vae_codec.encode(self.model, pixels * (1 - mask))
        small = F.interpolate(mask, size=masked.shape[-2:])
        return torch.cat([small, masked], dim=1)


def only_masked_box(req: GenerationRequest, source: Image.Image) -> Optional[tuple[int, int, int, int]]:
    """The box of `source` that "only masked" inpainting generates (None: the whole picture is used), so that
    what must line up with it (a ControlNet's control image) can be cut the same way."""
    if req.mask is None or not req.inpaint_full_res:
        return None
    mask = image_ops.prepare_mask(req.mask, source.size, req.mask_blur, bool(req.inpainting_mask_invert))
    return _only_masked_box(req, mask)


def _only_masked_box(req: GenerationRequest, mask: Image.Image) -> Optional[tuple[int, int, int, int]]:
    box = image_ops.crop_region(mask, req.inpaint_full_res_padding)
    if box is None:
        return None
    return image_ops.expand_to_ratio(box, req.width, req.height, mask.width, mask.height)
