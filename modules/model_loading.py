"""Load a single-file checkpoint (original LDM key layout) into diffusers/transformers modules, offline.

Keys are converted with diffusers' own single-file converters; configs come from `configs/<family>/`
or from a config file beside the checkpoint (`<name>.yaml` in LDM form, or `<name>.config.json`
with diffusers component configs, which is how tiny test models and custom shapes load).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from typing import TYPE_CHECKING

import torch

from modules.devices import DevicePolicy
from modules.errors import CheckpointError
from modules.model_family import ModelFamily, detect_model_family
from modules.paths import CONFIGS_DIR, TOKENIZER_DIR
from modules.safe_loading import read_state_dict

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer


@lru_cache(maxsize=1)
def _sfu():
    """diffusers' single-file converters. diffusers and transformers are imported on the first load, not at
    start: together they take seconds the UI shouldn't wait for."""
    import diffusers
    import transformers
    from diffusers.loaders import single_file_utils

    # Our loader casts and places modules on purpose; the libraries' advice about it is noise in our logs.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    return single_file_utils

OPENCLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sd2-v": "cond_stage_model.model.",
                   "sdxl": "conditioner.embedders.1.model."}


@dataclass
class LoadedModel:
    family: ModelFamily
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]  # CLIP-L first for SD1/SDXL; OpenCLIP second for SDXL
    tokenizer: CLIPTokenizer
    scheduler_config: dict
    policy: DevicePolicy
    path: Optional[Path] = None
    vae_path: Optional[Path] = None  # None = the checkpoint's own VAE
    vae_file: Optional[Any] = None  # its ModelFile, for infotext name and hash
    # The checkpoint's own VAE tensors while another VAE is swapped in (references, not copies).
    base_vae_state: dict = field(default_factory=dict, repr=False)
    offloader: Optional[Any] = field(default=None, repr=False)  # modules/offload.py, under --medvram/--lowvram
    previewer: Optional[Any] = field(default=None, repr=False)  # latents → live-preview image (latent_preview)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@lru_cache(maxsize=1)
def load_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def _shipped_config(family: str, component: str) -> dict:
    folder = CONFIGS_DIR / family / component
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((folder / name).read_text(encoding="utf-8"))


def sibling_config(path: Path, checkpoint: dict) -> dict:
    """Component configs from a file beside the checkpoint: `<stem>.config.json` or an LDM `<stem>.yaml`."""
    json_file = path.with_name(path.stem + ".config.json")
    if json_file.exists():
        return json.loads(json_file.read_text(encoding="utf-8"))
    for ext in (".yaml", ".yml"):
        yaml_file = path.with_name(path.stem + ext)
        if yaml_file.exists():
            import yaml

            original = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
            params = original.get("model", {}).get("params", {})
            found: dict[str, Any] = {"v_prediction": params.get("parameterization") == "v"}
            try:
                found["unet"] = _sfu().create_unet_diffusers_config_from_ldm(original, checkpoint)
                found["vae"] = _sfu().create_vae_diffusers_config_from_ldm(original, checkpoint)
            except (KeyError, TypeError) as e:
                raise CheckpointError(f"{yaml_file.name}: not an LDM model config ({e})") from None
            return found
    return {}


def _build(cls, config: dict, state_dict: dict, name: str) -> torch.nn.Module:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        if cls in (CLIPTextModel, CLIPTextModelWithProjection):
            config = {k: v for k, v in config.items() if not k.startswith("_")}
            module = cls(CLIPTextConfig(**config))
        else:
            module = cls.from_config({k: v for k, v in config.items() if k != "_class_name"})
    expected = set(module.state_dict().keys())
    if not any(k.startswith("text_model.") for k in expected):  # transformers ≥5.6 flattened CLIPTextModel
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    missing = sorted(expected - state_dict.keys())
    if missing:
        raise CheckpointError(f"{name}: {len(missing)} weights are missing from the checkpoint, "
                              f"e.g. {', '.join(missing[:3])} (wrong family or a truncated file)")
    try:
        module.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: weights don't fit the model config ({str(e).splitlines()[-1][:200]})") from None
    return module.eval().requires_grad_(False)


def _text_encoder_states(family: ModelFamily, sd: dict, text_models: list) -> list[dict]:
    sfu = _sfu()
    if family.name == "sd1":
        return [sfu.convert_ldm_clip_checkpoint(sd)]
    if family.name in ("sd2", "sd2-v"):
        return [sfu.convert_open_clip_checkpoint(text_models[0], sd, prefix=OPENCLIP_PREFIX[family.name])]
    clip_l = sfu.convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith("conditioner.embedders.0.")})
    clip_g = sfu.convert_open_clip_checkpoint(text_models[1], sd, prefix=OPENCLIP_PREFIX["sdxl"])
    return [clip_l, clip_g]


def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """SD2 eps and v checkpoints share keys; as A1111 does, run the UNet once at t=999 and look.

    With almost no signal left, an eps model predicts roughly its input; a v model predicts
    something far below it.
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
    return (out[:, :4] - x[:, :4]).float().mean().item() < -1


def load_checkpoint(path: Path, policy: DevicePolicy) -> LoadedModel:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sfu = _sfu()
    path = Path(path)
    sd = read_state_dict(path, policy.dtype)
    configs = sibling_config(path, sd)
    family = detect_model_family(set(sd), {k: tuple(v.shape) for k, v in sd.items() if k.endswith("input_blocks.0.0.weight")})
    if "family" in configs:
        family = ModelFamily(configs["family"], family.inpainting)
    elif configs.get("v_prediction") and family.name == "sd2":
        family = ModelFamily("sd2-v", family.inpainting)

    def config_for(component: str) -> dict:
        cfg = dict(configs.get(component) or _shipped_config(family.name, component))
        if component == "unet" and family.inpainting:
            cfg["in_channels"] = 9
        return cfg

    text_classes = [CLIPTextModel] if family.name != "sdxl" else [CLIPTextModel, CLIPTextModelWithProjection]
    components = ["text_encoder"] if family.name != "sdxl" else ["text_encoder", "text_encoder_2"]
    with init_empty_weights():  # the OpenCLIP converter reads sizes from a model instance
        shells = [cls(CLIPTextConfig(**{k: v for k, v in config_for(c).items() if not k.startswith("_")}))
                  for cls, c in zip(text_classes, components)]
    try:
        unet_cfg, vae_cfg = config_for("unet"), config_for("vae")
        unet_sd = sfu.convert_ldm_unet_checkpoint(sd, unet_cfg)
        vae_sd = sfu.convert_ldm_vae_checkpoint(sd, vae_cfg)
        text_sds = _text_encoder_states(family, sd, shells)
    except (KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path.name}: cannot convert {family.label} weights ({type(e).__name__}: {e})") from None
    del sd

    unet = _build(UNet2DConditionModel, unet_cfg, unet_sd, "unet")
    vae = _build(AutoencoderKL, vae_cfg, vae_sd, "vae")
    encoders = [_build(cls, config_for(c), s, c) for cls, c, s in zip(text_classes, components, text_sds)]
    del unet_sd, text_sds

    if family.name == "sd2" and "family" not in configs and "v_prediction" not in configs:
        if probe_v_prediction(unet.float()):
            family = ModelFamily("sd2-v", family.inpainting)

    home = policy.weights_device  # the CPU under --medvram/--lowvram: offload.py brings parts over on use
    unet.to(device=home, dtype=policy.dtype)
    if policy.channels_last:
        unet.to(memory_format=torch.channels_last)
    vae.to(device=home, dtype=policy.vae_dtype)
    for encoder in encoders:
        encoder.to(device=home, dtype=policy.dtype)
    scheduler_config = _shipped_config(family.name, "scheduler")
    return LoadedModel(family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizer=load_tokenizer(),
                       scheduler_config=scheduler_config, policy=policy, path=path)


def read_vae_state_dict(path: Path, vae_config: dict) -> dict[str, torch.Tensor]:
    """A standalone VAE file, in LDM layout (A1111's usual) or already in diffusers layout."""
    sd = read_state_dict(Path(path))
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
        return sd
    converted = _sfu().convert_ldm_vae_checkpoint(sd, vae_config)
    if not converted:
        raise CheckpointError(f"{Path(path).name}: not a VAE (no encoder/decoder weights found)")
    return converted
