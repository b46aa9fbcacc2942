"""Pixels ↔ latents through the VAE, with A1111's NaN fallback: retry a failed decode in fp32."""
from __future__ import annotations

import logging

import torch

from modules.errors import GenerationError
from modules.model_loading import LoadedModel

log = logging.getLogger(__name__)


def _scale(model: LoadedModel) -> tuple[float, float]:
    config = model.vae.config
    return config.scaling_factor, getattr(config, "shift_factor", None) or 0.0


@torch.no_grad()
def encode(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → scaled latents (the distribution's mean, as A1111's img2img uses)."""
    vae = model.vae
    param = next(vae.parameters())
    latents = vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mean
    if torch.isnan(latents).any() and param.dtype != torch.float32:
        latents = _in_fp32(model, lambda: vae.encode(pixels.to(param.device, torch.float32)).latent_dist.mean)
    scale, shift = _scale(model)
    return ((latents.float() - shift) * scale)


@torch.no_grad()
def decode(model: LoadedModel, latents: torch.Tensor, notes: list[str] | None = None) -> torch.Tensor:
    """Scaled latents → pixels in [-1, 1]. NaNs in a half-precision VAE are retried in fp32, and noted."""
    vae = model.vae
    param = next(vae.parameters())
    scale, shift = _scale(model)
    scaled = latents / scale + shift
    pixels = vae.decode(scaled.to(param.device, param.dtype)).sample
    if torch.isnan(pixels).any():
        if param.dtype == torch.float32:
            raise GenerationError("the VAE produced NaNs even in fp32; the model or its VAE is broken")
        log.warning("VAE produced NaNs in %s; retrying in fp32", param.dtype)
        pixels = _in_fp32(model, lambda: vae.decode(scaled.to(param.device, torch.float32)).sample)
        if notes is not None:
            notes.append("VAE produced NaNs in half precision; decoded in fp32 instead")
        if torch.isnan(pixels).any():
            raise GenerationError("the VAE produced NaNs even in fp32; the model or its VAE is broken")
    return pixels.float()


def _in_fp32(model: LoadedModel, run):
    vae = model.vae
    original = next(vae.parameters()).dtype
    vae.to(torch.float32)
    try:
        return run()
    finally:
        vae.to(original)
