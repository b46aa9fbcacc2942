"""Pixels ↔ latents through the VAE, with two fallbacks, each noted on the job:

- NaNs in a half-precision VAE (A1111's fallback): the call is retried in fp32.
- The device runs out of memory: the call is retried in tiles (diffusers' tiled VAE, one image at a time),
  which needs a fraction of the memory and gives nearly the same pixels (tiles are blended over an overlap).

Inputs go to the policy's device, not to wherever the VAE's weights are: under --medvram the weights rest in
RAM and an offload hook brings them over when the VAE is called.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from modules import devices
from modules.errors import GenerationError
from modules.model_loading import LoadedModel

log = logging.getLogger(__name__)

TILED_NOTE = "VAE ran out of GPU memory; {} in tiles instead"


def _scale(model: LoadedModel) -> tuple[float, float]:
    config = model.vae.config
    return config.scaling_factor, getattr(config, "shift_factor", None) or 0.0


def _dtype(model: LoadedModel) -> torch.dtype:
    return next(model.vae.parameters()).dtype


@torch.no_grad()
def encode(model: LoadedModel, pixels: torch.Tensor, notes: list[str] | None = None) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → scaled latents (the distribution's mean, as A1111's img2img uses)."""
    vae, device = model.vae, model.policy.device
    run = lambda dtype: vae.encode(pixels.to(device, dtype)).latent_dist.mean  # noqa: E731
    latents = _on_oom_tiled(model, lambda: run(_dtype(model)), notes, "encoded")
    if torch.isnan(latents).any() and _dtype(model) != torch.float32:
        latents = _in_fp32(model, lambda: run(torch.float32))
    scale, shift = _scale(model)
    return ((latents.float() - shift) * scale)


@torch.no_grad()
def decode(model: LoadedModel, latents: torch.Tensor, notes: list[str] | None = None) -> torch.Tensor:
    """Scaled latents → pixels in [-1, 1]. NaNs in a half-precision VAE are retried in fp32, and noted."""
    vae, device = model.vae, model.policy.device
    scale, shift = _scale(model)
    scaled = latents / scale + shift
    run = lambda dtype: vae.decode(scaled.to(device, dtype)).sample  # noqa: E731
    pixels = _on_oom_tiled(model, lambda: run(_dtype(model)), notes, "decoded")
    if torch.isnan(pixels).any():
        if _dtype(model) == torch.float32:
            raise GenerationError("the VAE produced NaNs even in fp32; the model or its VAE is broken")
        log.warning("VAE produced NaNs in %s; retrying in fp32", _dtype(model))
        pixels = _in_fp32(model, lambda: run(torch.float32))
        if notes is not None:
            notes.append("VAE produced NaNs in half precision; decoded in fp32 instead")
        if torch.isnan(pixels).any():
            raise GenerationError("the VAE produced NaNs even in fp32; the model or its VAE is broken")
    return pixels.float()


@torch.no_grad()
def decode_tiled(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → pixels, always in tiles (what the out-of-memory retry runs)."""
    scale, shift = _scale(model)
    with tiled(model):
        return model.vae.decode((latents / scale + shift).to(model.policy.device, _dtype(model))).sample.float()


@contextmanager
def tiled(model: LoadedModel) -> Iterator[None]:
    """diffusers' tiling and slicing for the duration. Tiles are half the VAE's own tile size (at least
    16 latents): the default (64 latents for SD) doesn't split a 512² image at all, which is where a small
    card runs out."""
    vae = model.vae
    saved = (vae.use_tiling, vae.use_slicing, vae.tile_latent_min_size, vae.tile_sample_min_size)
    latent_tile = max(16, saved[2] // 2)
    vae.use_tiling, vae.use_slicing = True, True
    vae.tile_latent_min_size, vae.tile_sample_min_size = latent_tile, latent_tile * model.vae_scale_factor
    try:
        yield
    finally:
        vae.use_tiling, vae.use_slicing, vae.tile_latent_min_size, vae.tile_sample_min_size = saved


def _on_oom_tiled(model: LoadedModel, run: Callable[[], torch.Tensor], notes: list[str] | None,
                  verb: str) -> torch.Tensor:
    try:
        return run()
    except torch.OutOfMemoryError as e:
        log.warning("VAE out of memory (%s); retrying in tiles", str(e).splitlines()[0][:200])
    devices.free_memory()  # out here: inside `except`, the traceback still holds the failed call's tensors
    with tiled(model):
        result = run()
    if notes is not None and TILED_NOTE.format(verb) not in notes:
        notes.append(TILED_NOTE.format(verb))
    return result


def _in_fp32(model: LoadedModel, run):
    vae = model.vae
    original = next(vae.parameters()).dtype
    vae.to(torch.float32)
    try:
        return run()
    finally:
        vae.to(original)
