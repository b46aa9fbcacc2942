"""UNet residual providers (what ControlNet uses): called for every UNet call, summed, told which rows are
unconditional."""
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from modules.processing import generate
from modules.request import GenerationRequest
from modules.sampling import Hooks


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red fox", negative_prompt="blurry", seed=7, steps=3, width=64, height=64,
                cfg_scale=5.0, sampler_name="Euler")
    return GenerationRequest(**{**base, **kw}).validate()


@pytest.fixture(scope="module")
def controlnet(sd1_model):
    """A ControlNet built from the tiny UNet, its zero convolutions given random weights so it does something."""
    net = ControlNetModel.from_unet(sd1_model.unet).to(sd1_model.unet.dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            block.weight.normal_(0, 0.5)
    return net


def residuals(net, call, scale: float) -> dict:
    b, _, h, w = call.latents.shape
    hint = torch.linspace(0, 1, 3 * h * 8 * w * 8).reshape(1, 3, h * 8, w * 8).expand(b, -1, -1, -1)
    down, mid = net(call.latents, call.timestep, encoder_hidden_states=call.context,
                    controlnet_cond=hint.to(call.sample.dtype), conditioning_scale=scale, return_dict=False)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def run(model, providers, seen=None, **kw) -> np.ndarray:
    hooks = Hooks()
    hooks.add("cfg_denoiser", lambda s: s.residual_providers.extend(providers))
    result = generate(request(**kw), model, hooks=hooks)
    return np.asarray(result.images[0], dtype=np.int16)


def test_zero_residuals_change_nothing_and_real_ones_do(sd1_model, controlnet):
    plain = run(sd1_model, [])
    assert np.array_equal(run(sd1_model, [lambda call: residuals(controlnet, call, 0.0)]), plain)
    assert np.abs(run(sd1_model, [lambda call: residuals(controlnet, call, 1.0)]) - plain).mean() > 1


def test_providers_are_summed(sd1_model, controlnet):
    one = run(sd1_model, [lambda call: residuals(controlnet, call, 1.0)])
    two = run(sd1_model, [lambda call: residuals(controlnet, call, 0.5)] * 2)
    assert np.abs(one - two).max() <= 2


def test_provider_sees_unconditional_rows_and_images(sd1_model):
    calls = []

    def record(call):
        calls.append((call.uncond.tolist(), call.rows.tolist(), call.step, call.pass_name, call.context.shape[0]))
        return {}

    run(sd1_model, [record], batch_size=2)
    assert calls[0] == ([True, True, False, False], [0, 1, 0, 1], 0, "first", 4)
    assert [c[2] for c in calls] == [0, 1, 2]
    calls.clear()
    run(sd1_model, [record], cfg_scale=1.0)  # no unconditional half at CFG 1
    assert calls[0][:2] == ([False], [0])
