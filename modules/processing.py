"""txt2img, img2img, inpaint and hires fix: turns a GenerationRequest into images with one denoise loop.

Per batch: seeds → noise → (init latents, masks) → denoise → (hires pass) → decode → overlay → hand each
finished image to `on_image` at once, so nothing finished is lost if the job is interrupted later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from PIL import Image

from modules import embedding_hooks, image_ops, noise, samplers, upscaling, vae_codec
from modules.extra_networks import ExtraNetworkContext, network_key, parse_extra_networks
from modules.latent_preview import cheap_preview
from modules.model_loading import LoadedModel
from modules.progress import GenerationControl, Interrupted, Skipped
from modules.prompt_conditioning import (SCHEDULE_KEY, BatchPrompts, PromptEncoding, StepConditioning,
                                         conditioning_cache, with_prompt_schedule)
from modules.prompts import PromptEnvironment, prepare_prompts
from modules.request import GenerationRequest
from modules.sampling import DenoiseState, Hooks, denoise
from modules.text_encoding import PromptEncoder

if TYPE_CHECKING:
    from modules.inpainting import InpaintJob, InpaintSetup

log = logging.getLogger(__name__)

LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


@dataclass
class FinishedImage:
    image: Image.Image
    index: int  # position in the whole job
    seed: int
    subseed: int
    prompt: str
    negative_prompt: str
    extra_params: dict[str, object] = field(default_factory=dict)  # for its infotext ("Emphasis", ...)


@dataclass
class SamplingStart:
    """A sampling pass about to start, for `on_sampling` (A1111's process_before_every_sampling): `x` the
    latents the pass starts from (txt2img's first pass: the noise; img2img and hires: the init latents),
    `noise` its noise. Changing them in place changes the pass."""

    pass_name: str  # "first" or "hires"
    x: torch.Tensor
    noise: torch.Tensor
    cond: BatchPrompts
    uncond: BatchPrompts


@dataclass
class GenerationResult:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user (NaN fallback, ...)
    extra_params: dict[str, object] = field(default_factory=dict)  # infotext additions from processing
    interrupted: bool = False


def hires_size(request: GenerationRequest) -> tuple[int, int]:
    """Target (w, h) of the hires pass: resize-to wins over scale; one side 0 keeps the aspect ratio."""
    w, h = request.width, request.height
    rx, ry = request.hr_resize_x, request.hr_resize_y
    if rx == 0 and ry == 0:
        tw, th = int(w * request.hr_scale), int(h * request.hr_scale)
    elif rx == 0:
        tw, th = ry * w // h, ry
    elif ry == 0:
        tw, th = rx, rx * h // w
    else:
        tw, th = rx, ry
    return tw // 8 * 8, th // 8 * 8


class Generation:
    """One request's run over one loaded model."""

    def __init__(self, request: GenerationRequest, model: LoadedModel, control: GenerationControl,
                 hooks: Optional[Hooks] = None, on_image: Optional[Callable[[FinishedImage], None]] = None,
                 prompt_env: Optional[PromptEnvironment] = None,
                 on_sampling: Optional[Callable[[SamplingStart], None]] = None):
        self.request = request.validate()
        self.on_sampling = on_sampling
        self.model = model
        self.control = control
        self.hooks = with_prompt_schedule(hooks or Hooks())  # each step's cond/uncond is set before other hooks
        self.on_image = on_image
        self.sampler, self.schedule = samplers.resolve_sampler(request.sampler_name, request.scheduler)
        if request.enable_hr and not request.is_img2img and request.hr_upscaler not in LATENT_UPSCALE_MODES:
            upscaling.get(request.hr_upscaler, "hr_upscaler")  # raises for an unknown name
        self.prompt_env = prompt_env or PromptEnvironment()
        self.prompt_options = self.prompt_env.options.with_overrides(request.override_settings)
        # Textual-inversion embeddings: the environment's own, else what extensions provide for this model.
        embeddings = self.prompt_env.embeddings or embedding_hooks.lookup_for(model)
        self.encoder = PromptEncoder(model, embeddings)
        self.result = GenerationResult()
        self.networks = ExtraNetworkContext(model, request, self.result.notes, self.result.extra_params)

    # -- public -------------------------------------------------------------------------------
    def run(self) -> GenerationResult:
        req = self.request
        total = req.batch_size * req.n_iter
        self.result.seeds = noise.seeds_for(req.seed, total)
        self.result.subseeds = noise.seeds_for(req.subseed, total)
        self.result.prompts, self.result.negative_prompts = prepare_prompts(
            req.prompt, req.negative_prompt, req.styles, self.result.seeds, self.prompt_env, self.prompt_options,
            self.result.notes)
        self.control.total = self._steps_per_batch() * req.n_iter
        try:
            for batch in range(req.n_iter):
                start = batch * req.batch_size
                try:
                    self._run_batch(start, start + req.batch_size)
                except Skipped:
                    continue
                except Interrupted:
                    self.result.interrupted = True
                    break
        finally:
            self.prompt_env.extra_networks.deactivate(self.networks)
        return self.result

    # -- batches ------------------------------------------------------------------------------
    def _steps_per_batch(self) -> int:
        req = self.request
        if req.is_img2img:
            return _img2img_steps(req.steps, req.denoising_strength)
        steps = req.steps
        if req.enable_hr:
            steps += _img2img_steps(req.hr_second_pass_steps or req.steps, req.denoising_strength)
        return steps

    def _run_batch(self, start: int, end: int) -> None:
        req = self.request
        seeds, subseeds = self.result.seeds[start:end], self.result.subseeds[start:end]
        cond, uncond = self._conditioning(start, end)
        spec = noise.NoiseSpec(seeds, subseeds, req.subseed_strength, (req.seed_resize_from_w, req.seed_resize_from_h))
        if req.is_img2img:
            pixels, inpaint = self._img2img(spec, cond, uncond, start, end)
        else:
            latents = self._txt2img(spec, cond, uncond)
            pixels = vae_codec.decode(self.model, latents, self.result.notes)
            inpaint = None
        for offset, image in enumerate(image_ops.tensor_to_pil(pixels)):
            if inpaint is not None:
                image = inpaint.finish(image, start + offset)
            self._deliver(image, start + offset)

    def _deliver(self, image: Image.Image, index: int) -> None:
        self.result.images.append(image)
        finished = FinishedImage(image, index, self.result.seeds[index], self.result.subseeds[index],
                                 self.result.prompts[index], self.result.negative_prompts[index],
                                 dict(self.result.extra_params))
        if self.on_image is not None:
            self.on_image(finished)

    def _conditioning(self, start: int, end: int) -> tuple[BatchPrompts, BatchPrompts]:
        """The batch's prompts, ready to encode for each pass. Extra-network tags leave the prompts here and
        their handlers are activated first (they may change the text encoder); as in A1111, the batch's
        first prompt decides which networks are active."""
        parsed = [parse_extra_networks(prompt) for prompt in self.result.prompts[start:end]]
        prompts, networks = [text for text, _ in parsed], parsed[0][1]
        self.prompt_env.extra_networks.activate(self.networks, networks)
        settings = self.prompt_options.encode_settings(self.request.clip_skip)
        negatives = self.result.negative_prompts[start:end]
        embedding_hooks.note_used_embeddings(self.encoder, prompts, negatives, settings, self.result.extra_params)
        encoding = PromptEncoding(self.encoder, settings, conditioning_cache(self.model), network_key(networks),
                                  self.result.notes, self.result.extra_params)
        return BatchPrompts(encoding, prompts), BatchPrompts(encoding, negatives, True)

    def _step_conditioning(self, cond: BatchPrompts, uncond: BatchPrompts, pass_name: str) -> StepConditioning:
        """Schedules count sampler calls over the whole pass, img2img's skipped steps included (as A1111)."""
        req = self.request
        steps = len(self._schedulers(1, req.steps)[0].timesteps)
        hires_steps = None
        if pass_name == "hires":
            hires_steps = len(self._schedulers(1, req.hr_second_pass_steps or req.steps)[0].timesteps)
        return StepConditioning(cond.for_pass(steps, hires_steps), uncond.for_pass(steps, hires_steps))

    # -- passes -------------------------------------------------------------------------------
    def _schedulers(self, count: int, steps: int) -> list:
        schedulers = []
        for _ in range(count):
            scheduler = samplers.make_scheduler(self.sampler.name, self.schedule, self.model.scheduler_config)
            scheduler.set_timesteps(steps, device=self.model.policy.device)
            schedulers.append(scheduler)
        return schedulers

    def _latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        f = self.model.vae_scale_factor
        return self.model.latent_channels, height // f, width // f

    def _txt2img(self, spec: noise.NoiseSpec, cond: BatchPrompts, uncond: BatchPrompts) -> torch.Tensor:
        req = self.request
        device = self.model.policy.device
        x, generators = noise.initial_noise(spec, self._latent_shape(req.width, req.height),
                                            self.model.vae_scale_factor, device)
        schedulers = self._schedulers(len(spec.seeds), req.steps)
        if self.on_sampling is not None:
            self.on_sampling(SamplingStart("first", x, x, cond, uncond))
        state = self._state(x * schedulers[0].init_noise_sigma, cond, uncond, req.width, req.height)
        latents = denoise(self.model.unet, schedulers, schedulers[0].timesteps, state, generators, self.hooks,
                          self.control, self._preview)
        if req.enable_hr:
            latents = self._hires(latents, spec, cond, uncond)
        return latents

    def _hires(self, latents: torch.Tensor, spec: noise.NoiseSpec, cond: BatchPrompts,
               uncond: BatchPrompts) -> torch.Tensor:
        req = self.request
        width, height = hires_size(req)
        f = self.model.vae_scale_factor
        if req.hr_upscaler in LATENT_UPSCALE_MODES:
            mode, antialias = LATENT_UPSCALE_MODES[req.hr_upscaler]
            upscaled = F.interpolate(latents, size=(height // f, width // f), mode=mode, antialias=antialias)
        else:
            images = image_ops.tensor_to_pil(vae_codec.decode(self.model, latents, self.result.notes))
            upscaler = upscaling.get(req.hr_upscaler, "hr_upscaler")
            if upscaler.name == "None":  # hires still needs the new size
                upscaler = upscaling.get("Lanczos")
            images = [upscaler.run(im, width, height) for im in images]
            upscaled = vae_codec.encode(self.model, image_ops.pil_to_tensor(images), self.result.notes)
        steps = req.hr_second_pass_steps or req.steps
        hires_spec = noise.NoiseSpec(spec.seeds, spec.subseeds, spec.subseed_strength)
        return self._img2img_pass(upscaled, hires_spec, cond, uncond, steps, width, height, pass_name="hires")

    def _img2img_pass(self, init_latents: torch.Tensor, spec: noise.NoiseSpec, cond: BatchPrompts,
                      uncond: BatchPrompts, steps: int, width: int, height: int, pass_name: str = "first",
                      setup: Optional["InpaintSetup"] = None) -> torch.Tensor:
        device = self.model.policy.device
        x, generators = noise.initial_noise(spec, self._latent_shape(width, height), self.model.vae_scale_factor,
                                            device)
        schedulers = self._schedulers(len(spec.seeds), steps)
        run = _img2img_steps(steps, self.request.denoising_strength)
        begin = (steps - run) * schedulers[0].order
        timesteps = schedulers[0].timesteps[begin:]
        for scheduler in schedulers:
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(begin)
        hooks = self.hooks
        if setup is not None:
            init_latents = setup.init(init_latents, x)
        if self.on_sampling is not None:
            self.on_sampling(SamplingStart(pass_name, init_latents, x, cond, uncond))
        latents = schedulers[0].add_noise(init_latents, x, timesteps[:1].repeat(init_latents.shape[0]))
        state = self._state(latents, cond, uncond, width, height, pass_name)
        if setup is not None:
            hooks = self.hooks.copy()  # the mask hook belongs to this batch only
            setup.attach(state, x, schedulers, timesteps, hooks)
        return denoise(self.model.unet, schedulers, timesteps, state, generators, hooks, self.control,
                       self._preview)

    def _img2img(self, spec: noise.NoiseSpec, cond: BatchPrompts, uncond: BatchPrompts, start: int,
                 end: int) -> tuple[torch.Tensor, Optional["InpaintJob"]]:
        from modules.inpainting import InpaintJob

        req = self.request
        sources = [req.init_images[i % len(req.init_images)] for i in range(start, end)]
        job = InpaintJob.prepare(req, sources) if req.mask is not None else None
        images = job.model_inputs if job else [image_ops.resize_image(req.resize_mode, image_ops.to_rgb(im),
                                                                       req.width, req.height) for im in sources]
        init_latents = vae_codec.encode(self.model, image_ops.pil_to_tensor(images).to(self.model.policy.device),
                                        self.result.notes)
        setup = job.setup_for(self.model, init_latents) if job else None
        latents = self._img2img_pass(init_latents, spec, cond, uncond, req.steps, req.width, req.height, setup=setup)
        return vae_codec.decode(self.model, latents, self.result.notes), job

    def _state(self, latents: torch.Tensor, cond: BatchPrompts, uncond: BatchPrompts, width: int, height: int,
               pass_name: str = "first") -> DenoiseState:
        schedule = self._step_conditioning(cond, uncond, pass_name)
        first_cond, first_uncond = schedule.at(0)
        state = DenoiseState(latents=latents, cond=first_cond, uncond=first_uncond, cfg_scale=self.request.cfg_scale,
                             pass_name=pass_name)
        state.extra[SCHEDULE_KEY] = schedule  # the `conditioning` hook switches prompts by step from here
        if self.model.family.is_sdxl:
            # A1111 passes the generation size as both original and target size, with no crop.
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32,
                               device=self.model.policy.device)
            state.added_cond = lambda batch: {"time_ids": ids.repeat(batch, 1)}
        if self.model.unet.config.in_channels == 9:  # an inpainting model outside inpaint (its setup replaces this)
            state.image_conditioning = self._whole_image_conditioning(latents.shape[0], width, height)
        return state

    def _whole_image_conditioning(self, batch: int, width: int, height: int) -> torch.Tensor:
        """As A1111 does for inpainting models in txt2img and plain img2img: everything masked, so the mask
        channel is all ones and the masked image is a uniform mid-grey (0 in [-1, 1])."""
        grey = torch.zeros(batch, 3, height, width, device=self.model.policy.device)
        latents = vae_codec.encode(self.model, grey)
        return torch.cat([torch.ones_like(latents[:, :1]), latents], dim=1)

    def _preview(self, latents: torch.Tensor) -> Image.Image:
        if self.model.previewer is not None:  # the engine's choice (show_progress_type)
            return self.model.previewer(latents[0])
        return cheap_preview(latents[0], sdxl=self.model.family.is_sdxl)


def _img2img_steps(steps: int, strength: float) -> int:
    """A1111 (k-diffusion): t_enc = int(min(strength, 0.999) * steps), then t_enc + 1 steps from the end."""
    return min(int(min(strength, 0.999) * steps) + 1, steps)


def generate(request: GenerationRequest, model: LoadedModel, control: Optional[GenerationControl] = None,
             hooks: Optional[Hooks] = None, on_image: Optional[Callable[[FinishedImage], None]] = None,
             prompt_env: Optional[PromptEnvironment] = None,
             on_sampling: Optional[Callable[[SamplingStart], None]] = None) -> GenerationResult:
    """Run a request on a loaded model. Raises ValidationError for bad input before any work is done.
    `prompt_env` brings prompt settings, styles, wildcards and extra networks (defaults without it);
    `on_sampling` is told before each sampling pass starts (scripts' process_before_every_sampling)."""
    return Generation(request, model, control or GenerationControl(), hooks, on_image, prompt_env,
                      on_sampling).run()


def __getattr__(name: str):  # A1111's names for extensions (StableDiffusionProcessing, process_images, ...)
    if not name.startswith("__"):
        from modules.compat import processing as a1111
        if name in a1111.__all__:
            return getattr(a1111, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
