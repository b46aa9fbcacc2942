"""ControlNet files in models/ControlNet: listing, A1111-style `name [hash]` titles, family detection from the
keys, and loading into diffusers' ControlNetModel offline, with a small cache.

Files are the original (lllyasviel) single-file layout (`control_model.input_blocks...`, `zero_convs`,
`input_hint_block`, `middle_block_out`; the `control_model.` prefix is optional) or diffusers' own names, as
`.safetensors` or a `.pth`/`.pt`/`.ckpt` pickle of tensors (read with weights_only). The architecture comes from
a sibling `<name>.config.json` when there is one, else from the config shipped for the detected family in
`configs/controlnet/<family>/config.json`; SDXL's transformer depth per level is read from the keys, because
the "mid"/"small" SDXL ControlNets differ from the full one only there.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from modules import extension_api as api

EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# The shipped configs sit beside the core's model configs; found through the API module's location because
# built-in extensions may be copied elsewhere (tests do) while configs/ stays in the repository.
CONFIGS_DIR = Path(api.__file__).resolve().parent.parent / "configs" / "controlnet"
ANNOTATORS = "annotators"  # subfolder of models/ControlNet with preprocessor weights, never a model


class ControlNetError(ValueError):
    """A ControlNet file that can't be used, with a reason an artist can act on."""


@dataclass(frozen=True)
class ControlNetFile:
    name: str  # file name without extension
    path: Path
    hash: str  # sd-webui-controlnet's: the old A1111 model hash (8 hex digits)

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"


def old_model_hash(path: Path) -> str:
    """The hash sd-webui-controlnet shows in `name [hash]`: sha256 of 64 KiB at offset 1 MiB, 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


class ControlNetLibrary:
    def __init__(self, keep_loaded: int = 2) -> None:
        self.keep_loaded = keep_loaded
        self._hashes: dict[tuple[Path, float], str] = {}
        self._loaded: "OrderedDict[tuple[Path, float], tuple[Any, str]]" = OrderedDict()
        self._lock = threading.Lock()

    def files(self) -> list[ControlNetFile]:
        folder = api.model_dir("ControlNet")
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.rglob("*"), key=lambda p: str(p).lower()):
            if path.suffix.lower() not in EXTENSIONS or not path.is_file() or ANNOTATORS in path.parts:
                continue
            key = (path, path.stat().st_mtime)
            if key not in self._hashes:
                self._hashes[key] = old_model_hash(path)
            found.append(ControlNetFile(path.stem, path, self._hashes[key]))
        return found

    def find(self, wanted: str) -> Optional[ControlNetFile]:
        """A file by `name [hash]`, name, or hash, case-insensitively (as API clients send them)."""
        text = str(wanted or "").strip()
        if not text or text.lower() == "none":
            return None
        match = re.fullmatch(r"(.*?)\s*\[([0-9a-fA-F]+)\]", text)
        name, digest = (match.group(1), match.group(2).lower()) if match else (text, None)
        files = self.files()
        for candidates in ([f for f in files if f.name.lower() == name.lower()],
                           [f for f in files if digest and f.hash == digest],
                           [f for f in files if f.hash == text.lower()]):
            if candidates:
                exact = [f for f in candidates if digest is None or f.hash == digest]
                return (exact or candidates)[0]
        raise ControlNetError(f"ControlNet model '{wanted}' not found in {api.model_dir('ControlNet')}")

    def load(self, file: ControlNetFile) -> tuple[Any, str]:
        """(ControlNetModel on the CPU in float32, family), cached by path and modification time."""
        key = (file.path, file.path.stat().st_mtime)
        with self._lock:
            if key not in self._loaded:
                for stale in [k for k in self._loaded if k[0] == file.path]:
                    del self._loaded[stale]
                self._loaded[key] = load_controlnet(file.path)
            self._loaded.move_to_end(key)
            while len(self._loaded) > max(1, self.keep_loaded):
                self._loaded.popitem(last=False)
            return self._loaded[key]


# -- reading and detecting ---------------------------------------------------------------------------------

def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("control_model.") for k in state_dict):
        return {k[len("control_model."):]: v for k, v in state_dict.items() if k.startswith("control_model.")}
    return state_dict


def _is_ldm(sd: dict) -> bool:
    return "time_embed.0.weight" in sd or "input_hint_block.0.weight" in sd


def detect_family(sd: dict[str, torch.Tensor]) -> str:
    """"sd1", "sd2" or "sdxl" from a ControlNet's keys (either layout), without the prefix."""
    if not (_is_ldm(sd) or "controlnet_cond_embedding.conv_in.weight" in sd):
        raise ControlNetError("not a ControlNet: no hint block (input_hint_block / controlnet_cond_embedding) "
                              "found; T2I-Adapters, control-LoRAs and IP-Adapters are not supported")
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in sd):
        return "sdxl"  # only SDXL's UNet has the pooled-text + size embedding
    widths = [v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")]
    if widths and widths[0] in (768, 1024):
        return "sd1" if widths[0] == 768 else "sd2"
    # Unusual widths (small or custom nets): SD2 uses linear projections into attention, SD1 1×1 convolutions.
    projections = [v for k, v in sd.items() if k.endswith("proj_in.weight")]
    return "sd2" if projections and projections[0].ndim == 2 else "sd1"


def _sibling_config(path: Path) -> Optional[dict]:
    for candidate in (path.with_name(path.stem + ".config.json"), path.with_suffix(".json")):
        if candidate.is_file():
            data = json.loads(candidate.read_text())
            return data if isinstance(data, dict) else None
    return None


def _sdxl_depths(sd: dict, config: dict) -> list[int]:
    """Transformer blocks per down level, read from the first attention of each level (the shipped value
    where the keys say nothing)."""
    per_level = config["layers_per_block"] + 1
    shipped = config["transformer_layers_per_block"]
    depths = []
    for level in range(len(config["block_out_channels"])):
        ldm = f"input_blocks.{1 + level * per_level}.1.transformer_blocks."
        diffusers = f"down_blocks.{level}.attentions.0.transformer_blocks."
        ids = {int(k.split(".")[4 if k.startswith("input_blocks") else 5])
               for k in sd if k.startswith((ldm, diffusers))}
        depths.append(max(ids) + 1 if ids else shipped[level])
    return depths


def controlnet_config(path: Path, sd: dict, family: str) -> tuple[dict, str]:
    """(diffusers config, family): the sibling config's, or the shipped one for the family."""
    sibling = _sibling_config(path)
    if sibling is not None:
        config = sibling.get("controlnet", sibling)
        return dict(config), str(sibling.get("family", family))
    shipped = CONFIGS_DIR / family / "config.json"
    config = json.loads(shipped.read_text())
    if family == "sdxl":
        config["transformer_layers_per_block"] = _sdxl_depths(sd, config)
    return config, family


def _convert(sd: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    converted = convert_controlnet_checkpoint(sd, config) if _is_ldm(sd) else dict(sd)
    # diffusers' converter leaves SDXL's size/pooled-text embedding behind; its names are fixed.
    for ldm, new in (("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")):
        for kind in ("weight", "bias"):
            if ldm + kind in sd and new + kind not in converted:
                converted[new + kind] = sd[ldm + kind]
    return {k: v for k, v in converted.items() if v is not None}


def load_controlnet(path: Path) -> tuple[Any, str]:
    from diffusers import ControlNetModel

    try:
        sd = _strip_prefix(api.load_tensors(path))
    except Exception as e:  # a refused pickle (api.UnsafeFileError) says why; so does a broken file
        raise ControlNetError(f"{path.name} can't be read: {e}") from None
    family = detect_family(sd)
    config, family = controlnet_config(path, sd, family)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    net = ControlNetModel.from_config(config)
    converted = _convert(sd, config)
    try:
        net.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        raise ControlNetError(f"{path.name} doesn't fit the {FAMILY_LABELS.get(family, family)} ControlNet layout "
                              f"({str(e).splitlines()[0]}...)") from None
    return net.eval().requires_grad_(False), family


def check_fits(name: str, family: str, model_family: str) -> None:
    """Refuse a ControlNet made for another model family than the loaded checkpoint's."""
    model_family = "sd2" if model_family.startswith("sd2") else model_family
    if family != model_family:
        raise ControlNetError(
            f"ControlNet '{name}' is made for {FAMILY_LABELS.get(family, family)} checkpoints, but the loaded "
            f"checkpoint is {FAMILY_LABELS.get(model_family, model_family)}: choose a "
            f"{FAMILY_LABELS.get(model_family, model_family)} ControlNet or another checkpoint")
