"""A1111 sampler names and schedule types, mapped onto diffusers schedulers: a sampler is a scheduler class plus config
overrides, a schedule type adds a few more. A1111 facts (names, aliases, defaults, order) are from its v1.10
sd_samplers_kdiffusion/_timesteps/_lcm.py and sd_schedulers.py. Where diffusers 0.42 runs a sampler differently from
A1111 (k-diffusion), a small subclass below makes it match; what is still approximate says so where it is defined."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler,
                       KDPM2DiscreteScheduler, LCMScheduler, LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from modules.errors import ValidationError


class EulerAncestralA1111(EulerAncestralDiscreteScheduler):
    """Euler a on any schedule: diffusers' class only spaces sigmas uniformly, so borrow the sigmas and timesteps that
    EulerDiscreteScheduler builds from the same config (use_karras_sigmas etc.); the ancestral step reads only those."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        euler = EulerDiscreteScheduler.from_config(self.config)
        euler.set_timesteps(num_inference_steps, device)
        self.sigmas, self.timesteps = euler.sigmas, euler.timesteps


class _DiscardPenultimate:
    """A1111's discard_next_to_last_sigma (DPM2, DPM2 a, DPM++ 3M SDE): plan n+1 sigmas, drop the last non-zero one."""

    discard = 1

    def _convert_to_karras(self, in_sigmas, num_inference_steps):
        return super()._convert_to_karras(in_sigmas, num_inference_steps + 1)[:-1]

    def _convert_to_exponential(self, in_sigmas, num_inference_steps):
        return super()._convert_to_exponential(in_sigmas, num_inference_steps + 1)[:-1]

    def _convert_to_beta(self, in_sigmas, num_inference_steps, *args, **kwargs):
        return super()._convert_to_beta(in_sigmas, num_inference_steps + 1, *args, **kwargs)[:-1]


class _KDPM2Timesteps:
    """diffusers' KDPM2 classes round the Karras timesteps; k-diffusion gives the UNet the fractional t of each sigma.
    Their lists interleave [t0, t_mid1, t1, t_mid2, t2, ...] and [s0, s1, s1, s2, s2, ...]: the even entries pair up."""

    def set_timesteps(self, num_inference_steps: int, *args, **kw) -> None:
        super().set_timesteps(num_inference_steps, *args, **kw)
        t = self._sigma_to_t(self.sigmas[::2][:num_inference_steps].numpy(), self.log_sigmas.cpu().numpy())
        self.timesteps[::2] = torch.from_numpy(t).to(self.timesteps)


class KDPM2A1111(_DiscardPenultimate, _KDPM2Timesteps, KDPM2DiscreteScheduler):
    """DPM2 as A1111 runs it."""


class KDPM2AncestralA1111(_DiscardPenultimate, _KDPM2Timesteps, KDPM2AncestralDiscreteScheduler):
    """DPM2 a as A1111 runs it."""


class DPMSolver2SAncestralA1111(_KDPM2Timesteps, KDPM2AncestralDiscreteScheduler):
    """DPM++ 2S a. DPM2 a takes the same steps (to the log-midpoint of sigma and sigma_down, then to sigma_down plus
    fresh noise of size sigma_up) and the same first stage; only its second stage differs: DPM2 a moves by
    (x_mid - x0_mid) / sigma_mid, DPM-Solver++(2S) by (x - x0_mid) / sigma. Swap that term after diffusers' step."""

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        second = not self.state_in_first_order
        if second:
            i, x = self.step_index - 1, self.sample
            sigma, sigma_mid, sigma_down = self.sigmas[i], self.sigmas_interpol[i], self.sigmas_down[i]
        out = super().step(model_output, timestep, sample, generator=generator)
        if second:
            x0 = out.pred_original_sample
            out.prev_sample += (sigma_down - sigma) * ((x - x0) / sigma - (sample - x0) / sigma_mid)
        return out if return_dict else (out.prev_sample, out.pred_original_sample)


class DPMSolverMultistepA1111(DPMSolverMultistepScheduler):
    """DPM++ 2M / 2M SDE / 3M SDE as k-diffusion runs them. Four fixes over diffusers 0.42:
    - 'linspace' there means linspace(0, 999, n+1)[1:]; A1111's Uniform is sigmas at t = linspace(999, 0, n), then 0;
    - the UNet gets the fractional t of each sigma, as in k-diffusion (diffusers rounds or truncates it to an int);
    - k-diffusion starts from sigma_max * noise in its space, i.e. noise * sigma_max / sqrt(sigma_max^2 + 1) here, not 1;
    - the 3rd-order SDE update weights D2 by (...) - 0.5 where the exponential integrator (and k-diffusion) has + 0.5."""

    discard = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **kw) -> None:
        c = self.config
        log_sigmas = np.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).numpy() ** 0.5)
        if num_inference_steps and c.timestep_spacing == "linspace" and not (
                c.use_karras_sigmas or c.use_exponential_sigmas or c.use_beta_sigmas):
            t = np.linspace(c.num_train_timesteps - 1, 0, num_inference_steps + self.discard)[:num_inference_steps]
            super().set_timesteps(timesteps=t.round().astype(int).tolist(), device=device)
            # k-diffusion interpolates log sigma between integer timesteps
            self.sigmas[:-1] = torch.from_numpy(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)))
        else:
            super().set_timesteps(num_inference_steps, device, **kw)
        self.timesteps = torch.from_numpy(self._sigma_to_t(self.sigmas[:-1].numpy(), log_sigmas)).float().to(device)
        self.init_noise_sigma = float(self.sigmas[0] / (self.sigmas[0] ** 2 + 1) ** 0.5)

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kw):
        x_t = super().multistep_dpm_solver_third_order_update(model_output_list, *args, sample=sample, noise=noise, **kw)
        if self.config.algorithm_type != "sde-dpmsolver++":
            return x_t
        alpha_sigma = [self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index + k]) for k in (1, 0, -1, -2)]
        lam = [torch.log(a) - torch.log(s) for a, s in alpha_sigma]
        h = lam[0] - lam[1]
        r0, r1 = (lam[1] - lam[2]) / h, (lam[2] - lam[3]) / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        return x_t + alpha_sigma[0][0] * d2  # + 0.5 - (-0.5): one whole alpha_t * D2 was missing


class DPMSolver3MA1111(_DiscardPenultimate, DPMSolverMultistepA1111):
    """DPM++ 3M SDE as A1111 runs it (with its discarded penultimate sigma)."""


class LCMA1111(LCMScheduler):
    """A1111 spreads LCM's n steps evenly over the 50-step LCM grid t = 19 + 20 i, i = linspace(49, 0, n), giving the UNet
    the nearest grid step; diffusers takes every (50 // n)-th grid step instead, so it never reaches t = 19. Still
    differs: A1111 re-noises to the sigma between grid steps, we to the grid step's own sigma."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None, **kw) -> None:
        if num_inference_steps is None:  # custom timesteps from a caller: leave them alone
            return super().set_timesteps(device=device, **kw)
        k = self.config.num_train_timesteps // self.config.original_inference_steps
        i = np.unique(np.linspace(self.config.original_inference_steps - 1, 0, num_inference_steps).round())[::-1]
        super().set_timesteps(device=device, timesteps=(i * k + k - 1).astype(int).tolist(), **kw)


class PLMSA1111(PNDMScheduler):
    """ldm's PLMS (a pseudo-improved-Euler first step, then Adams-Bashforth) is PNDM without its Runge-Kutta steps, but
    for v-models diffusers mixes the v outputs of several steps and turns the mix into eps at the current one; A1111
    turns each v into eps at its own (x_t, t) first, then mixes. So convert in step() and step like ldm."""

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        if self.config.prediction_type == "v_prediction":
            a_t = self.alphas_cumprod[int(timestep)]
            model_output = a_t**0.5 * model_output + (1 - a_t) ** 0.5 * sample
        return super().step(model_output, timestep, sample, return_dict)

    def _get_prev_sample(self, sample, timestep, prev_timestep, eps):
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        x0 = (sample - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


# A1111's schedule types that diffusers can follow: (A1111 name, label, aliases, default_rho, need_inner_model,
# diffusers overrides). 'linspace' in the k-diffusion-style classes is A1111's Uniform exactly: sigmas at
# t = linspace(999, 0, n), then 0. Karras/Exponential/Beta keep it because diffusers takes their sigma range from the
# grid's ends, which linspace puts at t = 999 and t = 0, the model's full range as in A1111. Left out, as diffusers has
# no equivalent: Polyexponential, KL Optimal, Align Your Steps, DDIM (more than n steps when n doesn't divide 1000).
_SCHEDULES = [
    ("automatic", "Automatic", None, -1, False, {}),
    ("uniform", "Uniform", None, -1, True, {"timestep_spacing": "linspace"}),
    ("karras", "Karras", None, 7.0, False, {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
    ("exponential", "Exponential", None, -1, False, {"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
    # A1111: t = linspace(999, 0, n + 1)[:-1], fractional; 'trailing' is 999 - round(1000 k / n): within a timestep.
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1, True, {"timestep_spacing": "trailing"}),
    # A1111: t = 999 - floor(1000 k / n); 'trailing' rounds instead: equal whenever n divides 1000, else within one.
    ("simple", "Simple", None, -1, True, {"timestep_spacing": "trailing"}),
    # A1111's Normal is linspace(sigma_to_t(sigma_max), sigma_to_t(sigma_min), n) = Uniform for these models.
    ("normal", "Normal", None, -1, True, {"timestep_spacing": "linspace"}),
    # Same formula as A1111 with its default beta_dist_alpha = beta_dist_beta = 0.6.
    ("beta", "Beta", None, -1, True, {"timestep_spacing": "linspace", "use_beta_sigmas": True}),
]
SCHEDULE_TYPES: list[str] = [s[1] for s in _SCHEDULES]
_SCHEDULE_OVERRIDES = {s[1]: s[5] for s in _SCHEDULES}


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers class that runs it and how to configure it."""

    name: str
    aliases: tuple[str, ...]
    scheduler_class: type
    overrides: dict = field(hash=False)
    default_schedule: str  # what "Automatic" means for this sampler in A1111
    allowed_schedules: tuple[str, ...]


_ALL = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "Normal", "Beta")
# DPM2, DPM2 a and DPM++ 3M SDE drop their penultimate sigma through the Karras/Exponential/Beta hooks (and 3M's own
# Uniform grid); the other grids can't be cut in diffusers, so those schedule types are refused, not run differently.
_DISCARD = ("Automatic", "Karras", "Exponential", "Beta")
# k-diffusion's 2M/3M take a first-order last step because the last sigma is 0, and no other lower-order steps.
_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": False,
          "final_sigmas_type": "zero"}
_TIMESTEPS = ("Automatic",)

SAMPLERS: list[SamplerSpec] = [
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), DPMSolverMultistepA1111, _DPMPP, "Karras", _ALL),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), DPMSolverSDEScheduler, {}, "Karras", _ALL),
    # A1111 draws 2M/3M SDE noise from a Brownian tree, diffusers from the step's generator: same law, other numbers.
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), DPMSolverMultistepA1111,
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++"}, "Exponential", _ALL),
    SamplerSpec("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), DPMSolverMultistepA1111,
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, "Exponential", _ALL),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), DPMSolver2SAncestralA1111, {}, "Karras", _ALL),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), DPMSolver3MA1111,
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential",
                (*_DISCARD, "Uniform", "Normal")),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), EulerAncestralA1111, {}, "Uniform", _ALL),
    SamplerSpec("Euler", ("k_euler",), EulerDiscreteScheduler, {}, "Uniform", _ALL),
    SamplerSpec("LMS", ("k_lms",), LMSDiscreteScheduler, {}, "Uniform", _ALL),
    SamplerSpec("Heun", ("k_heun",), HeunDiscreteScheduler, {}, "Uniform", _ALL),
    SamplerSpec("DPM2", ("k_dpm_2",), KDPM2A1111, {}, "Karras", _DISCARD),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), KDPM2AncestralA1111, {}, "Karras", _DISCARD),
    # A1111's timestep samplers use timesteps range(0, 1000, 1000 // n) + 1, i.e. diffusers' 'leading' with offset 1
    # (A1111 runs extra steps when n doesn't divide 1000, e.g. 31 for 30), and end at alphas_cumprod[0].
    SamplerSpec("DDIM", ("ddim",), DDIMScheduler, {"timestep_spacing": "leading", "steps_offset": 1,
                "set_alpha_to_one": False, "clip_sample": False}, "Automatic", _TIMESTEPS),
    SamplerSpec("PLMS", ("plms",), PLMSA1111, {"skip_prk_steps": True, "timestep_spacing": "leading",
                "steps_offset": 1, "set_alpha_to_one": False}, "Automatic", _TIMESTEPS),
    # A1111's defaults: bh1, order 3, lower order final, time-uniform t from 999 down to 0 where it stops (sigma_min).
    # diffusers rounds the intermediate timesteps to integers; A1111 keeps them fractional.
    SamplerSpec("UniPC", ("unipc",), UniPCMultistepScheduler, {"solver_order": 3, "solver_type": "bh1",
                "predict_x0": True, "lower_order_final": True, "timestep_spacing": "linspace",
                "final_sigmas_type": "sigma_min"}, "Automatic", _TIMESTEPS),
    # APPROXIMATE (see LCMA1111); A1111 also lets LCM take k-diffusion schedule types, which diffusers' LCM can't.
    SamplerSpec("LCM", ("k_lcm",), LCMA1111, {"original_inference_steps": 50, "timestep_scaling": 10.0}, "Automatic",
                _TIMESTEPS),
]
# A1111's timestep samplers never read the schedule type, so it is ignored for them rather than refused.
_IGNORE_SCHEDULE = {"DDIM", "PLMS", "UniPC"}
# The rest of A1111's sampler options, for /sdapi/v1/samplers (its dict[str, str] model turns True into "True").
_A1111_OPTIONS = {
    "DPM++ SDE": {"second_order": "True", "brownian_noise": "True"},
    "DPM++ 2M SDE": {"brownian_noise": "True"},
    "DPM++ 2M SDE Heun": {"brownian_noise": "True", "solver_type": "heun"},
    "DPM++ 2S a": {"uses_ensd": "True", "second_order": "True"},
    "DPM++ 3M SDE": {"discard_next_to_last_sigma": "True", "brownian_noise": "True"},
    "Euler a": {"uses_ensd": "True"},
    "Heun": {"second_order": "True"},
    "DPM2": {"discard_next_to_last_sigma": "True", "second_order": "True"},
    "DPM2 a": {"discard_next_to_last_sigma": "True", "uses_ensd": "True", "second_order": "True"},
}
# What a family's base config says about the model; everything else there is sampler policy, which we set.
_MODEL_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
               "rescale_betas_zero_snr")

_BY_KEY = {key.lower(): spec for spec in SAMPLERS for key in (spec.name, *spec.aliases)}
# Legacy combined names: "DPM++ 2M Karras", "Euler a Exponential", and pre-1.9 aliases such as k_dpmpp_2m_ka.
_SUFFIXES = [(" " + key.lower(), label) for name, label, aliases, *_ in _SCHEDULES
             for key in (label, name, *(aliases or ()))] + [("_ka", "Karras"), ("_exp", "Exponential")]


def _schedule_label(schedule: str | None) -> str:
    key = (schedule or "Automatic").strip().lower()
    for name, label, aliases, *_ in _SCHEDULES:
        if key in (name, label.lower(), *(a.lower() for a in aliases or ())):
            return label
    raise ValidationError("scheduler", f"unknown or unsupported schedule type {schedule!r}; "
                                       f"valid: {', '.join(SCHEDULE_TYPES)}")


def resolve_sampler(name: str, schedule: str = "Automatic") -> tuple[SamplerSpec, str]:
    """Canonical sampler and the concrete schedule type for an A1111 sampler name (or alias, or legacy combined name
    such as "DPM++ 2M Karras", whose suffix wins over `schedule` as in A1111). "Automatic" becomes the sampler's default."""
    label = _schedule_label(schedule)
    key = (name or "").strip().lower()
    spec = _BY_KEY.get(key)
    if spec is None:
        spec, label = next(((_BY_KEY[key[:-len(s)]], lab) for s, lab in _SUFFIXES
                            if key.endswith(s) and key[:-len(s)] in _BY_KEY), (None, label))
    if spec is None:
        raise ValidationError("sampler_name", f"unknown sampler {name!r}; valid: {', '.join(s.name for s in SAMPLERS)}")
    if label == "Automatic" or (label not in spec.allowed_schedules and spec.name in _IGNORE_SCHEDULE):
        return spec, spec.default_schedule
    if label not in spec.allowed_schedules:
        raise ValidationError("scheduler", f"schedule type {label!r} is not available for {spec.name}; "
                                           f"valid: {', '.join(spec.allowed_schedules)}")
    return spec, label


def make_scheduler(name: str, schedule: str, base_config: dict) -> SchedulerMixin:
    """A fresh scheduler for a sampler and schedule type, on the model described by a family's base scheduler config
    (its betas and prediction_type are kept). For DPM++ SDE, set `.noise_sampler_seed` to the seed before stepping."""
    spec, label = resolve_sampler(name, schedule)
    config = {k: v for k, v in base_config.items() if k in _MODEL_KEYS}
    return spec.scheduler_class.from_config({**config, **spec.overrides, **_SCHEDULE_OVERRIDES[label]})


def sampler_list_for_api() -> list[dict]:
    """/sdapi/v1/samplers: [{name, aliases, options}] in A1111's order."""
    return [{"name": s.name, "aliases": list(s.aliases),
             "options": ({"scheduler": s.default_schedule.lower()} if s.default_schedule in ("Karras", "Exponential")
                         else {}) | _A1111_OPTIONS.get(s.name, {})} for s in SAMPLERS]


def scheduler_list_for_api() -> list[dict]:
    """/sdapi/v1/schedulers: [{name, label, aliases, default_rho, need_inner_model}] in A1111's order."""
    return [{"name": name, "label": label, "aliases": aliases, "default_rho": rho, "need_inner_model": inner}
            for name, label, aliases, rho, inner, _ in _SCHEDULES]


def infotext_names(name: str, schedule: str = "Automatic") -> tuple[str, str]:
    """(Sampler, Schedule type) as A1111 writes them: legacy combined names split, and "Automatic" shown as the
    sampler's own default when it has one (DPM++ 2M → Karras) but kept for the rest (Euler a → Automatic)."""
    spec, label = resolve_sampler(name, schedule)
    suffixed = (name or "").strip().lower() not in _BY_KEY  # "DPM++ 2M Karras" carried its schedule
    explicit = _schedule_label(schedule) != "Automatic" or suffixed
    if explicit and spec.name not in _IGNORE_SCHEDULE:
        return spec.name, label
    return spec.name, label if label in ("Karras", "Exponential") else "Automatic"
