"""The tiny-model exporter is proven by diffusers' own LDM -> diffusers importers."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.tiny_models import (
    build_tiny_components,
    config_path_for,
    export_ldm_state_dict,
    save_tiny_checkpoint,
    save_tiny_ckpt_pickle,
)

CASES = [
    ("sd1", False),
    ("sd1", True),
    ("sd2", False),
    ("sd2-v", False),
    ("sd2-v", True),
    ("sdxl", False),
    ("sdxl", True),
]


def _import_text_encoder(model, ldm: dict, family: str, name: str) -> dict:
    """Convert one text encoder back the way diffusers' single-file loader does."""
    if family == "sd1" or (family == "sdxl" and name == "text_encoder"):
        converted = convert_ldm_clip_checkpoint(ldm)
    elif family == "sdxl":
        converted = convert_open_clip_checkpoint(model, ldm, prefix="conditioner.embedders.1.model.")
    else:
        converted = convert_open_clip_checkpoint(model, ldm, prefix="cond_stage_model.model.")
    # The converters emit "text_model.…" keys; transformers >= 5.6 flattened CLIPTextModel
    # (no .text_model), so diffusers strips the prefix for it. We do the same.
    if not hasattr(model, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def _import_all(components: dict, ldm: dict, family: str) -> dict:
    unet, vae = components["unet"], components["vae"]
    out = {
        "unet": convert_ldm_unet_checkpoint(ldm, unet.config),
        "vae": convert_ldm_vae_checkpoint(ldm, vae.config),
    }
    for name in ("text_encoder", "text_encoder_2"):
        if name in components:
            out[name] = _import_text_encoder(components[name], ldm, family, name)
    return out


def _assert_same_state(converted: dict, expected: dict, what: str) -> None:
    assert sorted(converted) == sorted(expected), what
    for key, value in expected.items():
        assert converted[key].shape == value.shape, f"{what}: {key}"
        assert torch.equal(converted[key], value), f"{what}: {key}"


@pytest.mark.parametrize("family,inpainting", CASES)
def test_export_round_trips_through_diffusers_importers(family, inpainting):
    components = build_tiny_components(family, inpainting)
    ldm = export_ldm_state_dict(components, family)
    for name, converted in _import_all(components, ldm, family).items():
        _assert_same_state(converted, components[name].state_dict(), f"{family} {name}")


@pytest.mark.parametrize("family,inpainting", CASES)
def test_export_uses_real_ldm_layout(family, inpainting):
    ldm = export_ldm_state_dict(build_tiny_components(family, inpainting), family)
    assert ldm["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == (9 if inpainting else 4)
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in ldm  # level 0 downsampler
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in ldm  # after the attention
    if family == "sd1":
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in ldm
        assert ldm["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 32)
    elif family == "sdxl":
        assert "model.diffusion_model.label_emb.0.0.weight" in ldm
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in ldm
        assert ldm["conditioner.embedders.1.model.transformer.resblocks.4.attn.in_proj_weight"].shape == (96, 32)
        assert "conditioner.embedders.1.model.text_projection" in ldm
    else:
        assert "cond_stage_model.model.positional_embedding" in ldm
        assert ldm["cond_stage_model.model.text_projection"].shape == (32, 32)
    assert not any(k.startswith("cond_stage_model.transformer.embeddings") for k in ldm)


def test_build_is_deterministic():
    a = build_tiny_components("sdxl", seed=3)
    b = build_tiny_components("sdxl", seed=3)
    c = build_tiny_components("sdxl", seed=4)
    for name in a:
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), name


def _rebuild_from_files(weights: dict, config: dict) -> dict:
    """Rebuild components from the sibling JSON alone and load the file's weights."""
    unet = UNet2DConditionModel.from_config(config["unet"])
    vae = AutoencoderKL.from_config(config["vae"])
    models = {"unet": unet, "vae": vae}
    for name in ("text_encoder", "text_encoder_2"):
        if name in config:
            cls = CLIPTextModelWithProjection if config[name]["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
            models[name] = cls(CLIPTextConfig(**config[name]))
    for name, state in _import_all(models, weights, config["family"]).items():
        models[name].load_state_dict(state, strict=True)
    return {k: m.eval() for k, m in models.items()}


@pytest.mark.parametrize("family,inpainting", [("sd1", False), ("sd2-v", False), ("sdxl", True)])
def test_saved_checkpoint_and_config_rebuild_identical_models(tmp_path, family, inpainting):
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors", family, inpainting, seed=1)
    assert path == tmp_path / "tiny.safetensors" and path.is_file()
    config = json.loads(config_path_for(path).read_text())
    assert (tmp_path / "tiny.config.json").is_file()
    assert config["family"] == family and config["inpainting"] is inpainting
    assert config["unet"]["_class_name"] == "UNet2DConditionModel"
    assert not any(k.startswith("_") and k != "_class_name" for part in ("unet", "vae") for k in config[part])
    assert ("text_encoder_2" in config) == (family == "sdxl")

    original = build_tiny_components(family, inpainting, seed=1)
    rebuilt = _rebuild_from_files(load_file(path), config)
    assert list(rebuilt["unet"].config.attention_head_dim) == list(original["unet"].config.attention_head_dim)
    assert rebuilt["unet"].config.use_linear_projection == (family != "sd1")

    with torch.no_grad():
        ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 4])
        for name in ("text_encoder", "text_encoder_2"):
            if name in original:
                want, got = original[name](ids), rebuilt[name](ids)
                assert torch.equal(want[0], got[0]), name
        latents = torch.randn(1, 9 if inpainting else 4, 8, 8)
        hidden = torch.randn(1, 8, original["unet"].config.cross_attention_dim)
        extra = {}
        if family == "sdxl":
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}}
        want = original["unet"](latents, 10, hidden, **extra).sample
        got = rebuilt["unet"](latents, 10, hidden, **extra).sample
        assert want.shape == (1, 4, 8, 8) and torch.equal(want, got)
        image = torch.rand(1, 3, 32, 32) * 2 - 1
        want = original["vae"].decode(original["vae"].encode(image).latent_dist.mode()).sample
        got = rebuilt["vae"].decode(rebuilt["vae"].encode(image).latent_dist.mode()).sample
        assert want.shape == image.shape and torch.equal(want, got)


def test_half_precision_checkpoint(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "half.safetensors", "sd1", dtype=torch.float16)
    weights = load_file(path)
    assert all(v.dtype == torch.float16 for v in weights.values())


def test_pickle_checkpoint_matches_safetensors(tmp_path):
    st = load_file(save_tiny_checkpoint(tmp_path / "a.safetensors", "sd2"))
    path = save_tiny_ckpt_pickle(tmp_path / "a.ckpt", "sd2")
    assert path.is_file() and config_path_for(path).is_file()
    loaded = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert sorted(loaded) == sorted(st)
    assert all(torch.equal(loaded[k], st[k]) for k in st)
