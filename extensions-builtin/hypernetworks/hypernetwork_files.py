"""A1111 hypernetworks (`models/hypernetworks/*.pt`), read safely and rebuilt as small torch modules.

The file is a dict: for each context width it applies to (320, 640, 768, 1280 for SD1), a pair of state dicts
(the key module and the value module), plus `layer_structure` (e.g. [1, 2, 1]: the widths of its linear
layers, as multiples of the context width), `activation_func`, `is_layer_norm`, `use_dropout` /
`dropout_structure`, `last_layer_dropout`, `activate_output`, `name`, `step`, `sd_checkpoint`... Each module is
`x + linear(x) * strength`, where `linear` is A1111's Sequential (Linear, activation, LayerNorm, Dropout per
layer) so the state dict's indices match. Files are loaded with weights_only=True; a pickle holding anything
but tensors and plain values is refused.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from modules import extension_api as api

ACTIVATIONS: dict[str, type] = {
    "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
}
ACTIVATIONS.update({name.lower(): cls for name, cls in inspect.getmembers(torch.nn.modules.activation)
                    if inspect.isclass(cls) and cls.__module__ == "torch.nn.modules.activation"})
_OLD_NAMES = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
              "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}


class HypernetworkError(ValueError):
    pass


class HypernetworkModule(torch.nn.Module):
    def __init__(self, dim: int, state_dict: dict, layer_structure: list, activation_func: Optional[str],
                 add_layer_norm: bool, activate_output: bool, dropout_structure: list):
        super().__init__()
        if layer_structure[0] != 1 or layer_structure[-1] != 1:
            raise HypernetworkError("layer_structure must start and end with 1")
        layers: list[torch.nn.Module] = []
        for i in range(len(layer_structure) - 1):
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            last = i >= len(layer_structure) - 2
            if activation_func not in (None, "linear") and not (last and not activate_output):
                if activation_func not in ACTIVATIONS:
                    raise HypernetworkError(f"unsupported activation function '{activation_func}'")
                layers.append(ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout_structure[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=float(dropout_structure[i + 1])))
        self.linear = torch.nn.Sequential(*layers)
        state = {_OLD_NAMES.get(k, k): v for k, v in state_dict.items()}
        try:
            self.load_state_dict(state)
        except RuntimeError as e:
            raise HypernetworkError(f"weights don't fit the layer structure ({str(e).splitlines()[0]})") from None
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * strength


def dropout_structure(layer_structure: list, use_dropout: bool, last_layer_dropout: bool) -> list:
    """A1111's parse_dropout_structure (dropout changes no result at inference, but shifts layer indices)."""
    if not use_dropout:
        return [0] * len(layer_structure)
    values = [0] + [0.3] * (len(layer_structure) - 3)
    values.append(0.3 if last_layer_dropout else 0)
    values.append(0)
    return values


@dataclass
class Hypernetwork:
    name: str
    path: Path
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = field(default_factory=dict)
    step: Optional[int] = None
    sd_checkpoint: Optional[str] = None
    sd_checkpoint_name: Optional[str] = None

    def to(self, device: torch.device) -> "Hypernetwork":
        for pair in self.layers.values():
            for module in pair:
                module.to(device)
        return self


def read_hypernetwork(path: Path) -> Hypernetwork:
    data: Any = api.load_pickle(path)  # UnsafeFileError for a pickle that needs code
    if not isinstance(data, dict):
        raise HypernetworkError(f"{path.name} is not a hypernetwork (no dict of layers)")
    layer_structure = data.get("layer_structure") or [1, 2, 1]
    use_dropout = data.get("use_dropout", False)
    dropout = data.get("dropout_structure")
    if dropout is None or not isinstance(dropout, (list, tuple)) or len(dropout) != len(layer_structure):
        dropout = dropout_structure(layer_structure, bool(use_dropout), bool(data.get("last_layer_dropout", False)))
    options = dict(layer_structure=[float(x) for x in layer_structure], activation_func=data.get("activation_func"),
                   add_layer_norm=bool(data.get("is_layer_norm", False)),
                   activate_output=bool(data.get("activate_output", True)), dropout_structure=list(dropout))
    hypernetwork = Hypernetwork(path.stem, path, step=data.get("step") if isinstance(data.get("step"), int) else None,
                                sd_checkpoint=_text(data.get("sd_checkpoint")),
                                sd_checkpoint_name=_text(data.get("sd_checkpoint_name")))
    for size, pair in data.items():
        if not isinstance(size, int) or isinstance(size, bool):
            continue
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(s, dict) for s in pair):
            raise HypernetworkError(f"{path.name}: layer {size} must be a pair of state dicts")
        try:
            hypernetwork.layers[size] = (HypernetworkModule(size, pair[0], **options),
                                         HypernetworkModule(size, pair[1], **options))
        except HypernetworkError as e:
            raise HypernetworkError(f"{path.name}, layer {size}: {e}") from None
    if not hypernetwork.layers:
        raise HypernetworkError(f"{path.name} has no layers (expected keys such as 320, 640, 768, 1280)")
    return hypernetwork


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)
