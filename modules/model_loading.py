"""Load a single-file checkpoint (original LDM key layout) into diffusers/transformers modules, offline.

Keys are converted with diffusers' own single-file converters; configs come from `configs/<family>/`
or from a config file beside the checkpoint (`<name>.yaml` in LDM form, or `<name>.config.json`
with diffusers component configs, which is how tiny test models and custom shapes load).
"""
from __future__ import annotations

import json
import pickle
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import diffusers
import torch
import transformers
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules.devices import DevicePolicy
from modules.errors import CheckpointError, UnsafeFileError
from modules.model_family import ModelFamily, detect_model_family
from modules.paths import CONFIGS_DIR, TOKENIZER_DIR

# Our loader casts and places modules on purpose; the libraries' advice about it is noise in our logs.
diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
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

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def validate_safetensors_header(path: Path) -> dict:
    """Check the header before anything maps the file: a huge, lying or truncated header is an error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name}: file is too short to be safetensors ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise CheckpointError(f"{path.name}: safetensors header claims {header_len} bytes; the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as e:
            raise CheckpointError(f"{path.name}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: safetensors header is not a JSON object")
    data_size = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            expected = count * SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: tensor '{name}' has a malformed header entry") from None
        if not 0 <= start <= end <= data_size:
            raise CheckpointError(f"{path.name}: tensor '{name}' lies outside the file (truncated or corrupt)")
        if expected and end - start != expected:
            raise CheckpointError(f"{path.name}: tensor '{name}' size disagrees with its shape (corrupt file)")
    return header


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
SKIPPED_PREFIXES = ("model_ema.",)  # EMA copies are never used for inference; don't even read them


def read_safetensors(path: Path, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Read each tensor into its own buffer and cast it to `dtype` there.

    safetensors' own loader maps the file lazily and a dtype change then allocates a second full copy;
    reading tensor by tensor and converting fp16↔bf16 in place halves the memory traffic, and skipping
    EMA keys never reads them at all.
    """
    header = validate_safetensors_header(path)
    base = 8 + struct.unpack("<Q", path.open("rb").read(8))[0]
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
            if name == "__metadata__" or name.startswith(SKIPPED_PREFIXES):
                continue
            stored = SAFETENSORS_DTYPES.get(info["dtype"])
            if stored is None:
                raise CheckpointError(f"{path.name}: tensor '{name}' has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=stored)
            raw = tensor.reshape(-1).view(torch.uint8).numpy()
            f.seek(base + start)
            if f.readinto(memoryview(raw)) != end - start:
                raise CheckpointError(f"{path.name}: tensor '{name}' is cut short (truncated file)")
            tensors[name] = _cast(tensor, dtype)
    return tensors


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point():
        return tensor
    if tensor.element_size() == dtype.itemsize:  # fp16 <-> bf16: same size, convert where it lies
        converted = tensor.view(dtype)
        converted.copy_(tensor)
        return converted
    return tensor.to(dtype)


def read_state_dict(path: Path, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a pickle loaded with weights_only=True (anything else refused).

    Floating-point tensors are cast to `dtype` when given.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            return read_safetensors(path, dtype)
        except OSError as e:
            raise CheckpointError(f"{path.name}: cannot read safetensors file ({e})") from None
    try:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy non-zip pickle
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0][:300]
        raise UnsafeFileError(f"{path.name}: refused to load: the pickle needs more than plain tensors "
                              f"({reason}). Convert it to .safetensors with a trusted tool.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: cannot read checkpoint ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: the file holds no state dict")
    # Out of place: tensors in a pickle may share one storage, so converting one in place would change another.
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in data.items()
            if isinstance(v, torch.Tensor) and not k.startswith(SKIPPED_PREFIXES)}


@lru_cache(maxsize=1)
def load_tokenizer() -> CLIPTokenizer:
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
                found["unet"] = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint)
                found["vae"] = sfu.create_vae_diffusers_config_from_ldm(original, checkpoint)
            except (KeyError, TypeError) as e:
                raise CheckpointError(f"{yaml_file.name}: not an LDM model config ({e})") from None
            return found
    return {}


def _build(cls, config: dict, state_dict: dict, name: str) -> torch.nn.Module:
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

    unet.to(device=policy.device, dtype=policy.dtype)
    if policy.channels_last:
        unet.to(memory_format=torch.channels_last)
    vae.to(device=policy.device, dtype=policy.vae_dtype)
    for encoder in encoders:
        encoder.to(device=policy.device, dtype=policy.dtype)
    scheduler_config = _shipped_config(family.name, "scheduler")
    return LoadedModel(family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizer=load_tokenizer(),
                       scheduler_config=scheduler_config, policy=policy, path=path)


def read_vae_state_dict(path: Path, vae_config: dict) -> dict[str, torch.Tensor]:
    """A standalone VAE file, in LDM layout (A1111's usual) or already in diffusers layout."""
    sd = read_state_dict(Path(path))
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
        return sd
    converted = sfu.convert_ldm_vae_checkpoint(sd, vae_config)
    if not converted:
        raise CheckpointError(f"{Path(path).name}: not a VAE (no encoder/decoder weights found)")
    return converted
