"""The VAE's NaN fallback: a half-precision decode that overflows is retried in fp32, and the user is told."""
import dataclasses

import torch

from modules import vae_codec
from modules.model_loading import load_checkpoint


def test_nan_in_half_precision_is_retried_in_fp32_and_noted(tiny_ckpt, policy):
    model = load_checkpoint(tiny_ckpt["sd1"], dataclasses.replace(policy, vae_dtype=torch.float16))
    with torch.no_grad():  # push the first decoder layer past fp16's range (65504); fp32 is unharmed
        model.vae.decoder.conv_in.weight.mul_(1e4)
        model.vae.decoder.conv_in.bias.add_(6e4)
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    raw = model.vae.decode((latents / model.vae.config.scaling_factor).half()).sample
    assert torch.isnan(raw).any()  # the failure is real
    notes = []
    pixels = vae_codec.decode(model, latents, notes)
    assert not torch.isnan(pixels).any()
    assert notes == ["VAE produced NaNs in half precision; decoded in fp32 instead"]
    assert next(model.vae.parameters()).dtype == torch.float16  # the VAE goes back to its precision


def test_encode_then_decode_keeps_the_shape(sd1_model):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = vae_codec.encode(sd1_model, pixels)
    assert latents.shape == (2, 4, 32, 32)
    assert vae_codec.decode(sd1_model, latents).shape == (2, 3, 64, 64)
