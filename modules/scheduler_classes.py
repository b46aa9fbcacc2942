"""The diffusers scheduler classes behind A1111's sampler names (modules/samplers.py names them), with the small
subclasses that make diffusers 0.42 run a sampler as A1111 (k-diffusion) does. Imported on first use, not at start:
diffusers' scheduler modules pull in scipy and torch._dynamo, seconds the UI shouldn't wait for."""
from __future__ import annotations

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler,
                       KDPM2DiscreteScheduler, LCMScheduler, LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)

__all__ = ["DDIMScheduler", "DPMSolverSDEScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
           "LMSDiscreteScheduler", "UniPCMultistepScheduler", "EulerAncestralA1111", "KDPM2A1111",
           "KDPM2AncestralA1111", "DPMSolver2SAncestralA1111", "DPMSolverMultistepA1111", "DPMSolver3MA1111",
           "LCMA1111", "PLMSA1111"]


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
