"""The A1111 sampler registry: names resolve, every sampler x schedule type denoises, schedules match A1111's formulas."""
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from modules.errors import ValidationError
from modules.samplers import (SAMPLERS, SCHEDULE_TYPES, make_scheduler, resolve_sampler, sampler_list_for_api,
                              scheduler_list_for_api)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SD1 = json.loads((CONFIGS / "sd1/scheduler/scheduler_config.json").read_text())
SD2V = json.loads((CONFIGS / "sd2-v/scheduler/scheduler_config.json").read_text())
NAMES = [s.name for s in SAMPLERS]
# A1111's timestep samplers stop at alphas_cumprod[0] (a little noise left), not at sigma 0.
ENDS_AT_T0 = {"DDIM", "PLMS", "UniPC"}
DISCARDS_PENULTIMATE = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}


def by_name(name):
    return next(s for s in SAMPLERS if s.name == name)


# --- names -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SAMPLERS, ids=NAMES)
def test_every_name_and_alias_resolves_case_insensitively(spec):
    for key in (spec.name, spec.name.upper(), f"  {spec.name.lower()} ", *spec.aliases, *(a.upper() for a in spec.aliases)):
        assert resolve_sampler(key) == (spec, spec.default_schedule)


@pytest.mark.parametrize("alias,name", [
    ("k_euler_a", "Euler a"), ("k_euler_ancestral", "Euler a"), ("k_euler", "Euler"), ("k_lms", "LMS"),
    ("k_heun", "Heun"), ("k_dpm_2", "DPM2"), ("k_dpm_2_a", "DPM2 a"), ("k_dpmpp_2s_a", "DPM++ 2S a"),
    ("k_dpmpp_2m", "DPM++ 2M"), ("k_dpmpp_sde", "DPM++ SDE"), ("k_dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"), ("k_dpmpp_3m_sde", "DPM++ 3M SDE"), ("ddim", "DDIM"),
    ("plms", "PLMS"), ("unipc", "UniPC"), ("lcm", "LCM"), ("k_lcm", "LCM"), ("K_DPMPP_2M", "DPM++ 2M")])
def test_a1111_aliases(alias, name):
    assert resolve_sampler(alias)[0].name == name


def test_listing_order_and_automatic_defaults_follow_a1111():
    assert NAMES == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                     "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM"]
    automatic = {n: resolve_sampler(n, "Automatic")[1] for n in NAMES}
    assert automatic["DPM++ 2M"] == automatic["DPM++ SDE"] == automatic["DPM2"] == automatic["DPM++ 2S a"] == "Karras"
    assert automatic["DPM++ 2M SDE"] == automatic["DPM++ 3M SDE"] == "Exponential"
    assert automatic["Euler a"] == automatic["Euler"] == automatic["LMS"] == automatic["Heun"] == "Uniform"
    assert automatic["DDIM"] == automatic["UniPC"] == automatic["LCM"] == "Automatic"


@pytest.mark.parametrize("combined,name,schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"), ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("Euler a Exponential", "Euler a", "Exponential"), ("LMS Karras", "LMS", "Karras"),
    ("DPM2 a Karras", "DPM2 a", "Karras"), ("dpm++ 2m sde heun exponential", "DPM++ 2M SDE Heun", "Exponential"),
    ("DPM++ 2M SGMUniform", "DPM++ 2M", "SGM Uniform"), ("Euler beta", "Euler", "Beta"),
    ("k_dpmpp_2m_ka", "DPM++ 2M", "Karras"), ("k_dpmpp_3m_sde_exp", "DPM++ 3M SDE", "Exponential")])
def test_legacy_combined_names_split(combined, name, schedule):
    assert resolve_sampler(combined) == (by_name(name), schedule)
    assert resolve_sampler(combined, "Uniform")[1] == schedule  # the name's suffix wins, as in A1111


def test_schedule_names_are_case_insensitive_and_take_a1111_internal_names():
    assert resolve_sampler("Euler", "karras")[1] == "Karras"
    assert resolve_sampler("Euler", "sgm_uniform")[1] == resolve_sampler("Euler", "SGMUniform")[1] == "SGM Uniform"
    assert resolve_sampler("Euler", None)[1] == "Uniform"


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ValidationError) as e:
        resolve_sampler("Euler b")
    assert e.value.field == "sampler_name"
    assert "'Euler b'" in e.value.reason and all(n in e.value.reason for n in NAMES)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValidationError) as e:
        make_scheduler("Euler", "Polyexponential", SD1)
    assert e.value.field == "scheduler" and all(s in e.value.reason for s in SCHEDULE_TYPES)


def test_schedule_a_sampler_cannot_use():
    with pytest.raises(ValidationError) as e:  # A1111 would run it; diffusers' LCM can't
        resolve_sampler("LCM", "Karras")
    assert e.value.field == "scheduler" and "LCM" in e.value.reason
    with pytest.raises(ValidationError):
        resolve_sampler("DPM2", "SGM Uniform")
    # A1111's timestep samplers never read the schedule type: ignored, not refused
    assert resolve_sampler("DDIM", "Karras") == (by_name("DDIM"), "Automatic")
    assert resolve_sampler("UniPC Karras") == (by_name("UniPC"), "Automatic")


# --- denoising -----------------------------------------------------------------------------------------------------

def alpha_bar(scheduler, t):
    """alpha_bar at a possibly fractional timestep: log sigma interpolated between training steps, as k-diffusion does."""
    ac = scheduler.alphas_cumprod.double()
    log_sigma = 0.5 * torch.log((1 - ac) / ac)
    t = float(t)
    lo = min(math.floor(t), len(ac) - 1)
    w = t - lo
    sigma = torch.exp((1 - w) * log_sigma[lo] + w * log_sigma[min(lo + 1, len(ac) - 1)])
    return 1 / (1 + sigma**2)


def denoise(scheduler, x0, steps=10, seed=0):
    """A real denoise loop whose model is exact for data that is the single point x0. Returns (sample, first eps)."""
    prediction = scheduler.config.prediction_type
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "noise_sampler_seed"):  # DPM++ SDE's Brownian noise
        scheduler.noise_sampler_seed = seed
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = torch.randn(x0.shape, generator=generator) * scheduler.init_noise_sigma
    first_eps = None
    for t in scheduler.timesteps:
        x_t = scheduler.scale_model_input(x, t).double()
        ab = alpha_bar(scheduler, t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        first_eps = eps if first_eps is None else first_eps
        out = eps if prediction == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
        x = scheduler.step(out.float(), t, x, **step_kwargs).prev_sample
    return x.double(), first_eps


CASES = [(s.name, schedule) for s in SAMPLERS for schedule in s.allowed_schedules]


@pytest.mark.filterwarnings("ignore:Should have ta>=t0")  # torchsde, float32 sigma_min vs float64: harmless
@pytest.mark.parametrize("base", [SD1, SD2V], ids=["epsilon", "v_prediction"])
@pytest.mark.parametrize("name,schedule", CASES, ids=[f"{n}|{s}" for n, s in CASES])
def test_every_sampler_and_schedule_denoises_to_the_data_point(name, schedule, base):
    scheduler = make_scheduler(name, schedule, base)
    assert scheduler.config.prediction_type == base["prediction_type"]
    x0 = torch.linspace(-1.5, 1.5, 256, dtype=torch.float64).reshape(1, 4, 8, 8)
    x, first_eps = denoise(scheduler, x0)
    expected = x0
    if name in ENDS_AT_T0:  # the exact ODE path of a point mass keeps its noise estimate: x = a0 x0 + s0 eps
        ab0 = scheduler.alphas_cumprod[0].double()
        expected = ab0.sqrt() * x0 + (1 - ab0).sqrt() * first_eps
    torch.testing.assert_close(x, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(x, x0, atol=0.15, rtol=0)  # what's left for those is noise of sigma(t=0) = 0.03


def test_karras_gives_a_k_sampler_other_sigmas_than_uniform():
    for name in ("Euler", "DPM++ 2M"):
        uniform, karras = make_scheduler(name, "Uniform", SD1), make_scheduler(name, "Karras", SD1)
        uniform.set_timesteps(10)
        karras.set_timesteps(10)
        assert uniform.sigmas[0] == pytest.approx(karras.sigmas[0].item())  # same range, other spacing
        assert not torch.allclose(uniform.sigmas, karras.sigmas, rtol=1e-2)


# --- the same schedules as A1111 -----------------------------------------------------------------------------------

def a1111_sigmas(schedule, n, discard=False):
    """A1111's sigmas (sd_schedulers.py, k-diffusion) for the SD noise schedule, written out independently."""
    if discard:  # discard_next_to_last_sigma: plan n+1, drop the last non-zero sigma
        s = a1111_sigmas(schedule, n + 1)
        return torch.cat([s[:-2], s[-1:]])
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    sigmas = ((1 - ac) / ac).sqrt()
    smin, smax = sigmas[0].item(), sigmas[-1].item()
    at = lambda t: np.exp(np.interp(t, np.arange(1000), sigmas.log().numpy()))  # noqa: E731
    if schedule in ("Uniform", "Normal"):
        s = at(np.linspace(999, 0, n))
    elif schedule == "SGM Uniform":
        s = at(np.linspace(999, 0, n + 1)[:-1])
    elif schedule == "Simple":
        s = sigmas.numpy()[[999 - int(k * 1000 / n) for k in range(n)]]
    elif schedule == "Karras":
        ramp = np.linspace(0, 1, n)
        s = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    elif schedule == "Exponential":
        s = np.exp(np.linspace(math.log(smax), math.log(smin), n))
    elif schedule == "Beta":
        s = smin + scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6) * (smax - smin)
    return torch.cat([torch.as_tensor(s, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


K_CASES = [(n, s) for n, s in CASES if s != "Automatic"]


@pytest.mark.parametrize("steps", [10, 13])
@pytest.mark.parametrize("name,schedule", K_CASES, ids=[f"{n}|{s}" for n, s in K_CASES])
def test_k_samplers_walk_a1111s_sigmas(name, schedule, steps):
    scheduler = make_scheduler(name, schedule, SD1)
    scheduler.set_timesteps(steps)
    walked = torch.unique_consecutive(scheduler.sigmas.double())  # second-order classes repeat each sigma
    expected = a1111_sigmas(schedule, steps, discard=name in DISCARDS_PENULTIMATE)
    # SGM Uniform and Simple come from diffusers' integer 'trailing' grid: within a timestep of A1111's.
    rtol = 1e-2 if schedule in ("SGM Uniform", "Simple") else 1e-4
    torch.testing.assert_close(walked, expected, rtol=rtol, atol=1e-5)


def test_timestep_samplers_use_a1111s_timesteps():
    ddim, plms, unipc, lcm = (make_scheduler(n, "Automatic", SD1) for n in ("DDIM", "PLMS", "UniPC", "LCM"))
    for s in (ddim, plms, unipc):
        s.set_timesteps(10)
    a1111 = list(range(901, 0, -100))  # range(0, 1000, 1000 // 10) + 1, reversed
    assert ddim.timesteps.tolist() == a1111
    assert torch.unique_consecutive(plms.timesteps).tolist() == a1111
    np.testing.assert_allclose(unipc.timesteps.numpy(), np.linspace(999, 0, 11)[:-1], atol=0.5)
    assert unipc.sigmas[-1].item() == pytest.approx((1 / unipc.alphas_cumprod[0].item() - 1) ** 0.5)
    lcm.set_timesteps(4)  # the 50-step LCM grid t = 19 + 20 i at i = round(linspace(49, 0, 4))
    assert lcm.timesteps.tolist() == [999, 679, 339, 19]


def test_3m_sde_third_order_step_is_k_diffusions():
    """diffusers 0.42 has the wrong sign on the 0.5 in its D2 weight; ours must weigh the three outputs as k-diffusion."""
    scheduler = make_scheduler("DPM++ 3M SDE", "Exponential", SD1)
    scheduler.set_timesteps(10)
    scheduler._step_index = 5
    sig = scheduler.sigmas.double()[[6, 5, 4, 3]]  # sigma_next, sigma, and the two before
    lam = -sig.log()
    h = lam[0] - lam[1]
    r0, r1 = (lam[1] - lam[2]) / h, (lam[2] - lam[3]) / h
    phi2 = (-2 * h).expm1() / (2 * h) + 1
    phi3 = phi2 / (2 * h) - 0.5
    for m2, m1, m0 in torch.eye(3, dtype=torch.float64):
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
        want = (-(-2 * h).expm1() * m0 + phi2 * d1 - phi3 * d2) / (1 + sig[0] ** 2).sqrt()  # k-diffusion, as VP
        outputs = [torch.full((1,), float(v)) for v in (m2, m1, m0)]
        got = scheduler.multistep_dpm_solver_third_order_update(outputs, sample=torch.zeros(1), noise=torch.zeros(1))
        assert got.item() == pytest.approx(want.item(), abs=1e-5)


# --- config and API ------------------------------------------------------------------------------------------------

def test_make_scheduler_builds_fresh_instances_and_keeps_the_model_config():
    a, b = make_scheduler("DDIM", "Automatic", SD2V), make_scheduler("DDIM", "Automatic", SD2V)
    assert a is not b
    assert (a.config.prediction_type, a.config.beta_schedule, a.config.steps_offset) == ("v_prediction", "scaled_linear", 1)
    assert a.config.clip_sample is False and a.config.set_alpha_to_one is False
    # the base config's own sampler policy (e.g. karras sigmas on) never leaks into a schedule we didn't ask for
    euler = make_scheduler("Euler", "Uniform", {**SD1, "use_karras_sigmas": True, "timestep_spacing": "leading"})
    assert not euler.config.use_karras_sigmas and euler.config.timestep_spacing == "linspace"


def test_api_lists_have_a1111s_shapes():
    samplers = sampler_list_for_api()
    assert [s["name"] for s in samplers] == NAMES
    assert samplers[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert samplers[NAMES.index("DPM2")]["options"] == {
        "scheduler": "karras", "discard_next_to_last_sigma": "True", "second_order": "True"}
    assert all(set(s) == {"name", "aliases", "options"} and all(isinstance(v, str) for v in s["options"].values())
               for s in samplers)
    schedulers = scheduler_list_for_api()
    assert [s["label"] for s in schedulers] == SCHEDULE_TYPES
    assert schedulers[2] == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                             "need_inner_model": False}
    assert next(s for s in schedulers if s["name"] == "sgm_uniform")["aliases"] == ["SGMUniform"]


@pytest.mark.parametrize("name, schedule, expected", [
    ("DPM++ 2M", "Automatic", ("DPM++ 2M", "Karras")),
    ("Euler a", "Automatic", ("Euler a", "Automatic")),
    ("k_euler_a", "Automatic", ("Euler a", "Automatic")),
    ("DPM++ 2M Karras", "Automatic", ("DPM++ 2M", "Karras")),
    ("Euler", "Exponential", ("Euler", "Exponential")),
    ("DDIM", "Karras", ("DDIM", "Automatic")),
    ("DPM++ 2M SDE", "Automatic", ("DPM++ 2M SDE", "Exponential")),
])
def test_infotext_names_are_what_a1111_writes(name, schedule, expected):
    from modules.samplers import infotext_names

    assert infotext_names(name, schedule) == expected
