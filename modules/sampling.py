"""The one denoise loop, with named hook points that features and extensions attach to.

Hook points, called in this order each step (each receives the DenoiseState and may change it):
  conditioning  choose `cond`/`uncond` for this step (prompt editing, alternation)
  before_step   change `latents` before the model sees them
  cfg_denoiser  change the UNet inputs: `model_input`, `unet_kwargs`, or add `residual_providers`
                (ControlNet): callables given each UNet call (a UNetCall) that return extra UNet keyword
                arguments such as `down_block_additional_residuals`; several providers' tensors are summed
  cfg_denoised  change `noise_pred` after classifier-free guidance is combined
  after_step    change `latents` after the scheduler step (inpaint masking)
The loop itself stays short: features hook in, they are not threaded through it.
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from modules.progress import GenerationControl
from modules.text_encoding import Conditioning

HOOK_POINTS = ("conditioning", "before_step", "cfg_denoiser", "cfg_denoised", "after_step")


class Hooks:
    """Callbacks per hook point. A request's hooks are a copy, so per-job hooks never leak."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[["DenoiseState"], None]]] = defaultdict(list)

    def add(self, point: str, callback: Callable[["DenoiseState"], None]) -> None:
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point '{point}'; valid: {', '.join(HOOK_POINTS)}")
        self._callbacks[point].append(callback)

    def run(self, point: str, state: "DenoiseState") -> None:
        for callback in self._callbacks.get(point, ()):
            callback(state)

    def copy(self) -> "Hooks":
        clone = Hooks()
        for point, callbacks in self._callbacks.items():
            clone._callbacks[point] = list(callbacks)
        return clone


@dataclass
class DenoiseState:
    """What the loop knows at one step; hooks read and replace its fields."""

    latents: torch.Tensor
    cond: Conditioning
    uncond: Conditioning
    cfg_scale: float
    step: int = 0  # index within this pass
    total_steps: int = 0  # steps in this pass
    timestep: Any = None
    pass_name: str = "first"  # "first" or "hires"
    model_input: Optional[torch.Tensor] = None
    unet_kwargs: dict = field(default_factory=dict)
    noise_pred: Optional[torch.Tensor] = None
    image_conditioning: Optional[torch.Tensor] = None  # inpainting models: mask + masked-image latents
    added_cond: Optional[Callable[[int], dict]] = None  # SDXL: batch size → added_cond_kwargs
    residual_providers: list = field(default_factory=list)  # fn(UNetCall) -> UNet kwargs; reset each step
    extra: dict = field(default_factory=dict)  # free room for extensions


@dataclass(frozen=True)
class UNetCall:
    """One UNet call as a residual provider sees it. Rows are not always one per image: with CFG the batch is
    the unconditional rows then the conditional ones, and AND prompts give an image several rows."""

    sample: torch.Tensor  # the UNet's input (inpainting models: latents + mask + masked-image channels)
    latents: torch.Tensor  # the 4 latent channels of `sample`
    timestep: Any
    context: torch.Tensor  # encoder_hidden_states, in the UNet's dtype
    added_cond_kwargs: Optional[dict]  # SDXL's text_embeds / time_ids; None for SD1/SD2
    rows: torch.Tensor  # rows[i]: the image (index in the batch) that row i belongs to
    uncond: torch.Tensor  # bool per row: True where the row is the unconditional (negative prompt) one
    step: int
    total_steps: int
    pass_name: str  # "first" or "hires"


def denoise(unet: torch.nn.Module, schedulers: list, timesteps: torch.Tensor, state: DenoiseState,
            generators: list[torch.Generator], hooks: Hooks, control: GenerationControl,
            preview: Optional[Callable[[torch.Tensor], object]] = None) -> torch.Tensor:
    """Run the scheduler over `timesteps`. One scheduler per image keeps batches equal to single runs."""
    dtype = next(unet.parameters()).dtype
    state.total_steps = len(timesteps)
    step_kwargs = [_noise_source(s, g) for s, g in zip(schedulers, generators)]
    for i, t in enumerate(timesteps):
        control.check()
        state.step, state.timestep = i, t
        hooks.run("conditioning", state)
        hooks.run("before_step", state)
        scaled = torch.cat([s.scale_model_input(state.latents[j:j + 1], t) for j, s in enumerate(schedulers)])
        if state.image_conditioning is not None:
            scaled = torch.cat([scaled, state.image_conditioning], dim=1)
        state.model_input, state.unet_kwargs, state.residual_providers = scaled, {}, []
        hooks.run("cfg_denoiser", state)
        state.noise_pred = _guided_prediction(unet, state, t, dtype)
        hooks.run("cfg_denoised", state)
        state.latents = torch.cat([
            scheduler.step(state.noise_pred[j:j + 1], t, state.latents[j:j + 1], return_dict=False,
                           **step_kwargs[j])[0]
            for j, scheduler in enumerate(schedulers)
        ])
        hooks.run("after_step", state)
        latents = state.latents
        control.report_step(preview=(lambda: preview(latents)) if preview else None)
    return state.latents


def _noise_source(scheduler, generator: torch.Generator) -> dict:
    """Feed a scheduler's own noise from the image's generator; Brownian-tree SDE schedulers take a seed."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generator}
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = generator.initial_seed()
    return {}


def _guided_prediction(unet: torch.nn.Module, state: DenoiseState, t: Any, dtype: torch.dtype) -> torch.Tensor:
    x = state.model_input
    batch = x.shape[0]
    cond, uncond = state.cond, state.uncond
    if cond.parts is None:  # one cond row per image
        if state.cfg_scale == 1.0:  # guidance is a no-op: skip the unconditional half
            return _unet(unet, x, t, cond, state, dtype, uncond_rows=0)
        rows = None
    else:  # composable prompts (AND): each image has several cond rows, each with a weight
        rows = torch.tensor([image for image, parts in enumerate(cond.parts) for _ in parts], device=x.device)
    x_cond = x if rows is None else x[rows]
    if cond.context.shape[1] == uncond.context.shape[1]:
        both = Conditioning(torch.cat([uncond.context, cond.context]),
                            None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled]))
        own = torch.arange(batch, device=x.device)
        out = _unet(unet, torch.cat([x, x_cond]), t, both, state, dtype,
                    rows=torch.cat([own, own if rows is None else rows]), uncond_rows=batch)
        uncond_pred, cond_pred = out[:batch], out[batch:]
    else:  # prompts of different chunk counts run separately, as in A1111
        uncond_pred = _unet(unet, x, t, uncond, state, dtype, uncond_rows=batch)
        cond_pred = _unet(unet, x_cond, t, cond, state, dtype, rows=rows, uncond_rows=0)
    if rows is None:
        return uncond_pred + state.cfg_scale * (cond_pred - uncond_pred)
    # A1111's combine_denoised: uncond + Σ weight·cfg·(cond_k − uncond), over each image's parts.
    weights = torch.tensor([w for parts in cond.parts for _, w in parts], device=x.device, dtype=cond_pred.dtype)
    deltas = (cond_pred - uncond_pred[rows]) * weights.reshape(-1, *[1] * (cond_pred.dim() - 1))
    return uncond_pred + state.cfg_scale * torch.zeros_like(uncond_pred).index_add_(0, rows, deltas)


def _unet(unet: torch.nn.Module, x: torch.Tensor, t: Any, cond: Conditioning, state: DenoiseState,
          dtype: torch.dtype, rows: Optional[torch.Tensor] = None, uncond_rows: int = 0) -> torch.Tensor:
    """One UNet call. `rows[i]` is the image that row i of `x` belongs to, when x isn't one row per image;
    the first `uncond_rows` rows are unconditional."""
    kwargs = dict(state.unet_kwargs)
    if rows is not None:  # extension-provided tensors are per image: give each row its image's
        kwargs = {k: _take_rows(v, rows) for k, v in kwargs.items()}
    if state.added_cond is not None:
        added = state.added_cond(x.shape[0])
        added["text_embeds"] = cond.pooled.to(dtype)
        kwargs["added_cond_kwargs"] = added
    sample, context = x.to(dtype), cond.context.to(dtype)
    if state.residual_providers:
        rows = rows if rows is not None else torch.arange(x.shape[0], device=x.device)
        call = UNetCall(sample, sample[:, :4], t, context, kwargs.get("added_cond_kwargs"), rows,
                        torch.arange(x.shape[0], device=x.device) < uncond_rows, state.step, state.total_steps,
                        state.pass_name)
        for provider in state.residual_providers:
            _add_kwargs(kwargs, provider(call) or {})
    out = unet(sample, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
    return out.float()


def _add_kwargs(kwargs: dict, extra: dict) -> None:
    """Merge a provider's UNet kwargs: tensors (and lists of them) under the same name are summed."""
    for name, value in extra.items():
        if value is None:
            continue
        kwargs[name] = value if kwargs.get(name) is None else _sum(kwargs[name], value)


def _sum(a: Any, b: Any) -> Any:
    if isinstance(a, (list, tuple)):
        return type(a)(_sum(x, y) for x, y in zip(a, b, strict=True))
    return a + b


def _take_rows(value: Any, rows: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)]
    if isinstance(value, (list, tuple)):
        return type(value)(_take_rows(v, rows) for v in value)
    return value
