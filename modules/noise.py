"""Seeds and initial noise, drawn per image as A1111 does, so image i of a batch equals its seed alone.

Noise comes from a CPU generator seeded with the image's seed (A1111's "CPU" RNG source), which
makes results the same on every device. The same generator keeps feeding the sampler's own noise
(ancestral and SDE samplers), one generator per image.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed: int) -> int:
    return random.randrange(MAX_SEED) if seed is None or int(seed) == -1 else int(seed)


def seeds_for(request_seed: int, count: int) -> list[int]:
    base = resolve_seed(request_seed)
    return [(base + i) % (MAX_SEED + 1) for i in range(count)]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noises (variation seeds)."""
    low_n = low / torch.norm(low, dim=1, keepdim=True)
    high_n = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


@dataclass
class NoiseSpec:
    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] = (0, 0)  # (w, h) in pixels; 0 = off


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def initial_noise(spec: NoiseSpec, shape: tuple[int, int, int], scale_factor: int,
                  device: torch.device) -> tuple[torch.Tensor, list[torch.Generator]]:
    """[batch, C, H, W] noise plus one generator per image for the sampler's later draws."""
    channels, height, width = shape
    rw, rh = spec.resize_from
    noise_shape = (channels, rh // scale_factor, rw // scale_factor) if rw > 0 and rh > 0 else shape
    images, generators = [], []
    for i, seed in enumerate(spec.seeds):
        generator = torch.Generator("cpu").manual_seed(seed)
        if noise_shape != shape:
            noise = _randn(seed, noise_shape)
        else:
            noise = torch.randn(shape, generator=generator)
        if spec.subseed_strength:
            subseed = spec.subseeds[i] if i < len(spec.subseeds) else 0
            noise = slerp(spec.subseed_strength, noise.unsqueeze(0), _randn(subseed, noise_shape).unsqueeze(0))[0]
        if noise_shape != shape:
            noise = _paste_centered(torch.randn(shape, generator=generator), noise)
        images.append(noise)
        generators.append(generator)
    return torch.stack(images).to(device), generators


def _paste_centered(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Centre `source` noise in `target` (cropping if larger): keeps a composition at a new size."""
    dx = (target.shape[2] - source.shape[2]) // 2
    dy = (target.shape[1] - source.shape[1]) // 2
    w = source.shape[2] if dx >= 0 else source.shape[2] + 2 * dx
    h = source.shape[1] if dy >= 0 else source.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    target[:, ty:ty + h, tx:tx + w] = source[:, sy:sy + h, sx:sx + w]
    return target
