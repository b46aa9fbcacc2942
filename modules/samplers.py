"""A1111 sampler names and schedule types, mapped onto diffusers schedulers: a sampler is a scheduler class plus config
overrides, a schedule type adds a few more. A1111 facts (names, aliases, defaults, order) are from its v1.10
sd_samplers_kdiffusion/_timesteps/_lcm.py and sd_schedulers.py. Where diffusers 0.42 runs a sampler differently from
A1111 (k-diffusion), a small subclass in modules/scheduler_classes.py makes it match; what is still approximate says so
where it is defined. This module names classes and imports them only when a scheduler is made, so listing samplers
(the UI, /sdapi/v1/samplers) never waits for diffusers."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modules.errors import ValidationError

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


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
    scheduler_class: str  # a name in modules/scheduler_classes.py
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
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepA1111", _DPMPP, "Karras", _ALL),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", {}, "Karras", _ALL),
    # A1111 draws 2M/3M SDE noise from a Brownian tree, diffusers from the step's generator: same law, other numbers.
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepA1111",
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++"}, "Exponential", _ALL),
    SamplerSpec("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "DPMSolverMultistepA1111",
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, "Exponential", _ALL),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), "DPMSolver2SAncestralA1111", {}, "Karras", _ALL),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "DPMSolver3MA1111",
                {**_DPMPP, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "Exponential",
                (*_DISCARD, "Uniform", "Normal")),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralA1111", {}, "Uniform", _ALL),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler", {}, "Uniform", _ALL),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler", {}, "Uniform", _ALL),
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler", {}, "Uniform", _ALL),
    SamplerSpec("DPM2", ("k_dpm_2",), "KDPM2A1111", {}, "Karras", _DISCARD),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralA1111", {}, "Karras", _DISCARD),
    # A1111's timestep samplers use timesteps range(0, 1000, 1000 // n) + 1, i.e. diffusers' 'leading' with offset 1
    # (A1111 runs extra steps when n doesn't divide 1000, e.g. 31 for 30), and end at alphas_cumprod[0].
    SamplerSpec("DDIM", ("ddim",), "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1,
                "set_alpha_to_one": False, "clip_sample": False}, "Automatic", _TIMESTEPS),
    SamplerSpec("PLMS", ("plms",), "PLMSA1111", {"skip_prk_steps": True, "timestep_spacing": "leading",
                "steps_offset": 1, "set_alpha_to_one": False}, "Automatic", _TIMESTEPS),
    # A1111's defaults: bh1, order 3, lower order final, time-uniform t from 999 down to 0 where it stops (sigma_min).
    # diffusers rounds the intermediate timesteps to integers; A1111 keeps them fractional.
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1",
                "predict_x0": True, "lower_order_final": True, "timestep_spacing": "linspace",
                "final_sigmas_type": "sigma_min"}, "Automatic", _TIMESTEPS),
    # APPROXIMATE (see LCMA1111); A1111 also lets LCM take k-diffusion schedule types, which diffusers' LCM can't.
    SamplerSpec("LCM", ("k_lcm",), "LCMA1111", {"original_inference_steps": 50, "timestep_scaling": 10.0}, "Automatic",
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
    cls = getattr(importlib.import_module("modules.scheduler_classes"), spec.scheduler_class)
    return cls.from_config({**config, **spec.overrides, **_SCHEDULE_OVERRIDES[label]})


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
