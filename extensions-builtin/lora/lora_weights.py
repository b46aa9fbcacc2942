"""LoRA files → weight deltas for the loaded model.

Key names, as real files spell them (kohya sd-scripts, A1111, LyCORIS, diffusers):
  lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   diffusers UNet names
  lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight              LDM UNet names
  lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight                      text encoder (SD1/SD2)
  lora_te1_… / lora_te2_…                                                                   SDXL's two encoders
  unet.down_blocks.1….to_q.lora_A.weight, text_encoder.text_model….lora_B.weight           diffusers/PEFT
Each module's weights: `lora_down`/`lora_up` (+ `lora_mid`, CP-decomposed LoCon), LoHa `hada_*`, LoKr `lokr_*`,
full `diff`/`diff_b`; `alpha` (scale = alpha / rank) or `scale`. The delta added to the weight is
up @ down × scale × multiplier, with the text-encoder multiplier for `lora_te*` modules and the UNet's for
the rest (A1111's networks.py rules).
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from modules.extension_api import ldm_unet_prefixes

# diffusers/PEFT key endings → kohya suffixes
_DOTTED_SUFFIXES = {
    "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight", "lora_linear_layer.up.weight": "lora_up.weight",
    "alpha": "alpha",
}
_DOTTED_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}
UNSUPPORTED = {"oft_blocks": "OFT", "oft_diag": "OFT", "on_input": "IA3", "a1.weight": "GLoRA",
               "w_norm": "norm", "dora_scale": "DoRA"}

# diffusers ResnetBlock2D names → LDM ResBlock names
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


@dataclass
class Target:
    component: str  # "unet", "text_encoder", "text_encoder_2"
    module_name: str  # diffusers/transformers module path
    module: torch.nn.Module

    @property
    def is_text_encoder(self) -> bool:
        return self.component.startswith("text_encoder")


@dataclass
class DeltaReport:
    matched: int = 0
    unmatched: list[str] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    wrong_shape: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ module names

def ldm_unet_name(name: str, prefixes: dict[str, str]) -> Optional[str]:
    """The LDM name of a diffusers UNet module ("down_blocks.0.resnets.0.conv1" → "input_blocks.1.0.in_layers.2")."""
    dotted = name + "."
    for old, new in prefixes.items():
        if dotted.startswith(old):
            rest = dotted[len(old):]
            if ".resnets." in old:
                head, _, tail = rest.partition(".")
                rest = f"{_RESNET_LDM.get(head, head)}.{tail}"
            return (new + rest).rstrip(".")
    return None


def _flat(name: str) -> str:
    return name.replace(".", "_")


class ModuleIndex:
    """Every patchable module (Linear, Conv2d) of a loaded model under each name LoRA files use for it."""

    def __init__(self, components: dict[str, torch.nn.Module]):
        self.targets: dict[str, Target] = {}
        unet = components["unet"]
        prefixes = ldm_unet_prefixes(unet.config)
        for name, module in _patchable(unet):
            target = Target("unet", name, module)
            self.targets["lora_unet_" + _flat(name)] = target
            ldm = ldm_unet_name(name, prefixes)
            if ldm is not None:
                self.targets.setdefault("lora_unet_" + _flat(ldm), target)
        for component, prefixes_te in (("text_encoder", ("lora_te_", "lora_te1_")), ("text_encoder_2", ("lora_te2_",))):
            encoder = components.get(component)
            if encoder is None:
                continue
            for name, module in _patchable(encoder):
                # transformers ≥ 5.6 dropped "text_model." from CLIPTextModel's names; files keep it.
                spelled = name if name.startswith(("text_model.", "text_projection")) else "text_model." + name
                for prefix in prefixes_te:
                    self.targets[prefix + _flat(spelled)] = Target(component, name, module)

    def get(self, key: str) -> Optional[Target]:
        return self.targets.get(key)


def _patchable(module: torch.nn.Module):
    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name, sub


_indexes: "weakref.WeakKeyDictionary[torch.nn.Module, ModuleIndex]" = weakref.WeakKeyDictionary()


def module_index(components: dict[str, torch.nn.Module]) -> ModuleIndex:
    """Built once per loaded UNet (the module names never change)."""
    unet = components["unet"]
    index = _indexes.get(unet)
    if index is None:
        index = _indexes[unet] = ModuleIndex(components)
    return index


# ------------------------------------------------------------------------------------------ file layout

def group_by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module key (kohya spelling): {suffix: tensor}}."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, suffix = _split_key(key)
        if module is not None:
            groups.setdefault(module, {})[suffix] = tensor
    return groups


def _split_key(key: str) -> tuple[Optional[str], str]:
    for prefix, kohya in _DOTTED_PREFIXES.items():
        if key.startswith(prefix):
            for ending, suffix in _DOTTED_SUFFIXES.items():
                if key.endswith("." + ending):
                    return kohya + _flat(key[len(prefix):-len(ending) - 1]), suffix
            return None, ""
    module, dot, suffix = key.partition(".")
    if not dot:
        return None, ""
    return module, suffix


# ------------------------------------------------------------------------------------------ deltas

def _scale(w: dict[str, torch.Tensor], dim: Optional[int]) -> float:
    if "scale" in w:
        return float(w["scale"])
    if "alpha" in w and dim:
        return float(w["alpha"]) / dim
    return 1.0


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _lora(w: dict[str, torch.Tensor], shape: torch.Size, dyn: Optional[int]) -> tuple[torch.Tensor, Optional[int]]:
    up, down = w["lora_up.weight"], w["lora_down.weight"]
    dim = down.shape[0]
    up2, down2 = up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)
    if "lora_mid.weight" in w:  # CP decomposition (LoCon with a mid conv)
        return torch.einsum("n m k l, i n, m j -> i j k l", w["lora_mid.weight"], up2, down2), dim
    if dyn is not None:
        up2, down2 = up2[:, :dyn], down2[:dyn]
    return up2 @ down2, dim


def _loha(w: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, Optional[int]]:
    w1a, w1b, w2a, w2b = w["hada_w1_a"], w["hada_w1_b"], w["hada_w2_a"], w["hada_w2_b"]
    if "hada_t1" in w:
        one = _cp(w["hada_t1"], w1a, w1b)
    else:
        one = w1a.reshape(w1a.shape[0], -1) @ w1b.reshape(w1b.shape[0], -1)
    if "hada_t2" in w:
        two = _cp(w["hada_t2"], w2a, w2b)
    else:
        two = w2a.reshape(w2a.shape[0], -1) @ w2b.reshape(w2b.shape[0], -1)
    return one.reshape(shape) * two.reshape(shape), w1b.shape[0]


def _lokr(w: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, Optional[int]]:
    dim = None
    if "lokr_w1" in w:
        w1 = w["lokr_w1"]
    else:
        w1, dim = w["lokr_w1_a"] @ w["lokr_w1_b"], w["lokr_w1_b"].shape[0]
    if "lokr_w2" in w:
        w2 = w["lokr_w2"]
    elif "lokr_t2" in w:
        w2, dim = _cp(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"]), w["lokr_w2_b"].shape[0]
    else:
        w2, dim = w["lokr_w2_a"] @ w["lokr_w2_b"], w["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(shape), dim


def module_delta(w: dict[str, torch.Tensor], weight: torch.Tensor,
                 dyn: Optional[int] = None) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(weight delta, bias delta or None) at multiplier 1, float32; None for a layout this doesn't know."""
    shape = weight.shape
    if "lora_up.weight" in w and "lora_down.weight" in w:
        delta, dim = _lora(w, shape, dyn)
    elif all(k in w for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        delta, dim = _loha(w, shape)
    elif ("lokr_w1" in w or "lokr_w1_a" in w) and ("lokr_w2" in w or "lokr_w2_a" in w):
        delta, dim = _lokr(w, shape)
    elif "diff" in w:
        delta, dim = w["diff"], None
    else:
        return None
    scale = _scale(w, dim)
    bias = w.get("diff_b")  # a full-rank file's bias difference
    return delta * scale, (bias * scale if bias is not None else None)


LazyDelta = Callable[[], torch.Tensor]


def lora_deltas(tensors: dict[str, torch.Tensor], index: ModuleIndex, te_multiplier: float, unet_multiplier: float,
                dyn: Optional[int] = None) -> tuple[dict[tuple[str, str], LazyDelta], DeltaReport]:
    """{(component, parameter name): function computing delta × multiplier} for one LoRA file, and what didn't
    fit. Shapes are checked here on the meta device (no arithmetic); the deltas are computed, on the weight's
    device in float32, only when the weight is patched."""
    report = DeltaReport()
    deltas: dict[tuple[str, str], LazyDelta] = {}
    for key, w in group_by_module(tensors).items():
        target = index.get(key)
        if target is None:
            report.unmatched.append(key)
            continue
        weight = target.module.weight
        try:
            shapes = {k: v.to("meta", torch.float32) if v.dim() else v.float() for k, v in w.items()}  # alpha stays
            found = module_delta(shapes, weight.to("meta"), dyn)
        except (RuntimeError, ValueError, IndexError) as e:  # shapes that don't multiply: another model's file
            report.wrong_shape.append(f"{key} ({str(e).splitlines()[0][:120]})")
            continue
        if found is None:
            kind = next((name for marker, name in UNSUPPORTED.items() if any(k.startswith(marker) for k in w)),
                        "unknown")
            report.unsupported[kind] = report.unsupported.get(kind, 0) + 1
            continue
        delta, bias = found
        if delta.numel() != weight.numel():
            report.wrong_shape.append(key)
            continue
        report.matched += 1
        multiplier = te_multiplier if target.is_text_encoder else unet_multiplier
        if multiplier == 0:
            continue
        deltas[(target.component, f"{target.module_name}.weight")] = _lazy(w, weight, dyn, multiplier, 0)
        module_bias = getattr(target.module, "bias", None)
        if bias is not None and module_bias is not None and bias.numel() == module_bias.numel():
            deltas[(target.component, f"{target.module_name}.bias")] = _lazy(w, weight, dyn, multiplier, 1)
    return deltas, report


def _lazy(w: dict[str, torch.Tensor], weight: torch.Tensor, dyn: Optional[int], multiplier: float,
          part: int) -> LazyDelta:
    def compute() -> torch.Tensor:
        on_device = {k: v.to(device=weight.device, dtype=torch.float32) for k, v in w.items()}
        return module_delta(on_device, weight, dyn)[part] * multiplier

    return compute


def add_deltas(total: dict, more: dict) -> None:
    """Several LoRAs on one weight: their deltas add up (still computed only when needed)."""
    for key, delta in more.items():
        if key in total:
            first = total[key]
            total[key] = lambda first=first, delta=delta: first() + delta()
        else:
            total[key] = delta


_TAG = re.compile(r"<lora:([^:>]+)(:[^>]*)?>")


def rename_tags(text: str, rename: Callable[[str], Optional[str]]) -> str:
    """Each `<lora:NAME:...>` with NAME replaced by rename(NAME) when that gives a name."""
    def replace(match: re.Match) -> str:
        new = rename(match.group(1))
        return match.group(0) if not new else f"<lora:{new}{match.group(2) or ''}>"

    return _TAG.sub(replace, text)
