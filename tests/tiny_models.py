"""Tiny random-weight Stable Diffusion models, saved in the original LDM / A1111 layout.

Tests need real single-file checkpoints that the project's loading code can read, but no
real weights may be downloaded. So we build diffusers/transformers components with tiny
configs and export them with our own diffusers -> LDM key conversion (diffusers only ships
the LDM -> diffusers direction). tests/test_tiny_models.py proves the export by converting
it back with diffusers' own importers.

Key-name facts come from diffusers' loaders/single_file_utils.py and its
scripts/convert_diffusers_to_original_{stable_diffusion,sdxl}.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.ldm_names import ldm_unet_prefixes

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."  # followed by HF names: text_model.…
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

TEXT_HIDDEN = 32  # hidden size of every tiny text encoder
SDXL_TIME_EMBED_DIM = 8


# --------------------------------------------------------------------------- building


def _clip_config(hidden_act: str) -> CLIPTextConfig:
    # Real vocabulary size: the project's real tokenizer (configs/tokenizer) feeds these.
    # eos_token_id=2 keeps transformers' legacy argmax pooling, as in the shipped configs.
    return CLIPTextConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        hidden_act=hidden_act,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _tiny_unet(family: str, inpainting: bool) -> UNet2DConditionModel:
    kwargs: dict = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    if family in ("sd2", "sd2-v", "sdxl"):
        kwargs["use_linear_projection"] = True
    if family == "sd2-v":
        kwargs["upcast_attention"] = True  # as in the real SD2 768-v config
    if family == "sdxl":
        kwargs.update(
            cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            # 6 micro-conditioning numbers, each time-embedded, plus the pooled text embedding
            projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + TEXT_HIDDEN,
            transformer_layers_per_block=(1, 2),
        )
    return UNet2DConditionModel(**kwargs)


def _tiny_vae(family: str) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=2,  # like the real SD VAE: 2 resnets per encoder level, 3 per decoder
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    )


def build_tiny_components(family: str, inpainting: bool = False, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Build tiny random-weight components ("unet", "vae", "text_encoder"[, "text_encoder_2"]).

    Each component is seeded on its own, so e.g. an inpainting UNet doesn't change the
    text encoder's weights.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    builders = {
        "unet": lambda: _tiny_unet(family, inpainting),
        "vae": lambda: _tiny_vae(family),
        # CLIP-L style (quick_gelu) for sd1/sdxl, OpenCLIP style (gelu) for sd2.
        "text_encoder": lambda: CLIPTextModel(_clip_config("gelu" if family in ("sd2", "sd2-v") else "quick_gelu")),
    }
    if family == "sdxl":
        builders["text_encoder_2"] = lambda: CLIPTextModelWithProjection(_clip_config("gelu"))
    components = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        components[name] = build().eval()
    return components


# --------------------------------------------------------------------------- export


def _rename_by_prefix(state_dict: dict, prefix_map: dict[str, str], suffix_map: dict[str, dict[str, str]] | None = None) -> dict:
    """Rename keys by their module prefix; suffix_map renames the first name after a prefix.

    Prefixes end with "." so none is a prefix of another ("resnets.1." vs "resnets.10.").
    An unmapped key raises: a silent pass-through would write a file nobody can load.
    """
    out = {}
    for key, value in state_dict.items():
        for old, new in prefix_map.items():
            if key.startswith(old):
                rest = key[len(old):]
                for kind, names in (suffix_map or {}).items():
                    if kind in old:
                        head, _, tail = rest.partition(".")
                        rest = f"{names.get(head, head)}.{tail}"
                out[new + rest] = value
                break
        else:
            raise KeyError(f"no LDM name for {key!r}")
    return out


# diffusers ResnetBlock2D names -> LDM ResBlock names (UNet only; the VAE keeps norm1/conv1/...).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _unet_to_ldm(state_dict: dict, config) -> dict:
    m = ldm_unet_prefixes(config)
    return _rename_by_prefix(state_dict, m, {"resnets": _UNET_RESNET})


# diffusers Attention names -> LDM AttnBlock names in the VAE mid block.
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def _vae_to_ldm(state_dict: dict, config) -> dict:
    levels = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    m = {}
    for part in ("encoder", "decoder"):
        for name in ("conv_in.", "conv_out."):
            m[f"{part}.{name}"] = f"{part}.{name}"
        m[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        m[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        m[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        m[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    m["quant_conv."] = "quant_conv."
    m["post_quant_conv."] = "post_quant_conv."
    for b in range(levels):
        for j in range(lpb):
            m[f"encoder.down_blocks.{b}.resnets.{j}."] = f"encoder.down.{b}.block.{j}."
        m[f"encoder.down_blocks.{b}.downsamplers.0.conv."] = f"encoder.down.{b}.downsample.conv."
        # The LDM decoder counts its levels from the lowest resolution up: reversed.
        ldm_b = levels - 1 - b
        for j in range(lpb + 1):
            m[f"decoder.up_blocks.{b}.resnets.{j}."] = f"decoder.up.{ldm_b}.block.{j}."
        m[f"decoder.up_blocks.{b}.upsamplers.0.conv."] = f"decoder.up.{ldm_b}.upsample.conv."
    out = _rename_by_prefix(
        state_dict, m, {"resnets": {"conv_shortcut": "nin_shortcut"}, "attentions": _VAE_ATTN}
    )
    # "to_out.0.weight" became "proj_out.0.weight"; LDM has no Sequential there.
    out = {k.replace(".attn_1.proj_out.0.", ".attn_1.proj_out."): v for k, v in out.items()}
    # LDM's VAE attention uses 1x1 convs where diffusers uses Linear layers.
    for k, v in out.items():
        if ".mid.attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and v.ndim == 2:
            out[k] = v.reshape(*v.shape, 1, 1)
    return out


def _text_model_keys(model: torch.nn.Module) -> dict:
    """state_dict with HF's "text_model." prefix, which transformers >= 5.6 dropped from
    the flattened CLIPTextModel (CLIPTextModelWithProjection still has it)."""
    out = {}
    for k, v in model.state_dict().items():
        if not (k.startswith("text_model.") or k.startswith("text_projection.")):
            k = "text_model." + k
        out[k] = v
    return out


_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _openclip_to_ldm(model: torch.nn.Module) -> dict:
    sd = _text_model_keys(model)
    cfg = model.config
    out = {
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
    }
    sd.pop("text_model.embeddings.position_ids", None)  # HF-only buffer (older transformers)
    # OpenCLIP applies `x @ text_projection`, so it stores [hidden, proj], the transpose of
    # HF's Linear weight. SD2's CLIPTextModel has none, but real SD2 files carry one
    # (diffusers ignores it, yet reads its shape[0] as the hidden size): write an identity.
    proj = sd.pop("text_projection.weight", None)
    out["text_projection"] = proj.T if proj is not None else torch.eye(cfg.hidden_size, cfg.projection_dim)
    out["logit_scale"] = torch.tensor(math.log(1 / 0.07))  # present in real files, unused
    for n in range(cfg.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
        # OpenCLIP uses torch's MultiheadAttention: q, k, v packed into one in_proj.
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
        for old, new in _OPENCLIP_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
    if sd:
        raise KeyError(f"no OpenCLIP name for {sorted(sd)}")
    return out


def _prefixed(prefix: str, state_dict: dict) -> dict:
    return {prefix + k: v for k, v in state_dict.items()}


def export_ldm_state_dict(components: dict, family: str) -> dict[str, torch.Tensor]:
    """Convert diffusers/transformers components to one LDM (A1111) layout state dict."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    unet, vae = components["unet"], components["vae"]
    sd = _prefixed(UNET_PREFIX, _unet_to_ldm(unet.state_dict(), unet.config))
    sd.update(_prefixed(VAE_PREFIX, _vae_to_ldm(vae.state_dict(), vae.config)))
    if family == "sd1":
        sd.update(_prefixed(SD1_CLIP_PREFIX, _text_model_keys(components["text_encoder"])))
    elif family in ("sd2", "sd2-v"):
        sd.update(_prefixed(SD2_OPENCLIP_PREFIX, _openclip_to_ldm(components["text_encoder"])))
    else:
        sd.update(_prefixed(SDXL_CLIP_PREFIX, _text_model_keys(components["text_encoder"])))
        sd.update(_prefixed(SDXL_OPENCLIP_PREFIX, _openclip_to_ldm(components["text_encoder_2"])))
    # Own contiguous copies: safetensors rejects views / shared storage.
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


# --------------------------------------------------------------------------- saving


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _clean(config: dict) -> dict:
    # Private keys (_use_default_values, _name_or_path, ...) are bookkeeping, not architecture.
    return _jsonable({k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"})


def tiny_config_dict(components: dict, family: str, inpainting: bool) -> dict:
    """The sibling-JSON content: head counts etc. can't be inferred from tensor shapes."""
    out = {"family": family, "inpainting": inpainting}
    for name in ("unet", "vae"):
        model = components[name]
        out[name] = _clean({"_class_name": type(model).__name__, **dict(model.config)})
    for name in ("text_encoder", "text_encoder_2"):
        if name in components:
            model = components[name]
            cfg = model.config.to_dict()
            cfg["architectures"] = [type(model).__name__]  # tells CLIPTextModel from ...WithProjection
            out[name] = _clean(cfg)
    return out


def config_path_for(path: Path) -> Path:
    """`<path without suffix>.config.json`, the loader's sibling config file."""
    path = Path(path)
    return path.with_name(path.stem + ".config.json")


def _write(path: Path, family: str, inpainting: bool, seed: int, dtype: torch.dtype, writer) -> Path:
    path = Path(path)
    components = build_tiny_components(family, inpainting, seed)
    sd = export_ldm_state_dict(components, family)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(sd, path)
    config = tiny_config_dict(components, family, inpainting)
    config_path_for(path).write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def save_tiny_checkpoint(
    path: Path, family: str, inpainting: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a tiny LDM-layout .safetensors checkpoint plus its sibling .config.json."""
    return _write(path, family, inpainting, seed, dtype, lambda sd, p: save_file(sd, str(p), metadata={"format": "pt"}))


def save_tiny_ckpt_pickle(
    path: Path, family: str, inpainting: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the same checkpoint as a pickled .ckpt ({"state_dict": ...}) plus sibling config."""
    return _write(path, family, inpainting, seed, dtype, lambda sd, p: torch.save({"state_dict": sd}, p))


# --------------------------------------------------------------------------- ControlNet (extensions-builtin/controlnet)


def build_tiny_controlnet(family: str = "sd1", seed: int = 0, zero_conv_std: float = 0.5):
    """A ControlNet copied from the tiny UNet of `family`, its zero convolutions and its hint encoder given seeded
    random weights: a real ControlNet starts with zero convolutions and learns them (at zero it would change
    nothing), and learns a hint encoder that keeps the picture's shapes (a random default one washes them out)."""
    from diffusers import ControlNetModel

    unet = build_tiny_components(family)["unet"]
    net = ControlNetModel.from_unet(unet).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            block.weight.copy_(torch.randn(block.weight.shape, generator=generator) * zero_conv_std)
        # The hint encoder's default init (and zero last layer) washes any picture out to the same features.
        for conv in net.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                conv.bias.zero_()
    return net


def export_ldm_controlnet(net) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's state dict in lllyasviel's original layout (`control_model.` prefix,
    `input_hint_block`, `zero_convs`, `middle_block_out`), as the .pth/.safetensors files on the hub are."""
    config = dict(net.config)
    levels = len(config["block_out_channels"])
    prefixes = ldm_unet_prefixes({**config, "up_block_types": ["UpBlock2D"] * levels})
    prefixes = {k: v for k, v in prefixes.items() if not k.startswith(("up_blocks.", "conv_out.", "conv_norm_out."))}
    hint_blocks = len(net.controlnet_cond_embedding.blocks)
    prefixes["controlnet_cond_embedding.conv_in."] = "input_hint_block.0."
    for i in range(hint_blocks):
        prefixes[f"controlnet_cond_embedding.blocks.{i}."] = f"input_hint_block.{2 * (i + 1)}."
    prefixes["controlnet_cond_embedding.conv_out."] = f"input_hint_block.{2 * (hint_blocks + 1)}."
    for i in range(len(net.controlnet_down_blocks)):
        prefixes[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    prefixes["controlnet_mid_block."] = "middle_block_out.0."
    sd = _rename_by_prefix(net.state_dict(), prefixes, {"resnets": _UNET_RESNET})
    return {"control_model." + k: v.detach().clone().contiguous() for k, v in sd.items()}


def save_tiny_controlnet(path: Path, family: str = "sd1", seed: int = 0, pickle: bool = False,
                         zero_conv_std: float = 0.5) -> Path:
    """Write a tiny ControlNet in the original layout (.safetensors, or a .pth pickle of tensors) plus its
    sibling `<name>.config.json` ({"family", "controlnet": diffusers config}): shapes can't give head counts."""
    path = Path(path)
    net = build_tiny_controlnet(family, seed, zero_conv_std)
    sd = export_ldm_controlnet(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pickle:
        torch.save(sd, path)
    else:
        save_file(sd, str(path), metadata={"format": "pt"})
    config = {"family": family, "controlnet": _clean({"_class_name": "ControlNetModel", **dict(net.config)})}
    config_path_for(path).write_text(json.dumps(config, indent=2, sort_keys=True))
    return path
